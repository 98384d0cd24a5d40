"""Test setup for greenprune.kernels: the Triton kernels run under the Triton interpreter on the CPU.

When TRITON_INTERPRET must be set
  * greenprune's kernels are decorated lazily at their first launch (dispatch.LazyKernel, one variant per
    mode), so for them the variable only has to be set while a test runs: the autouse fixture does that.
  * Triton's own standard library (tl.sum, tl.max, tl.zeros, ...) is decorated when triton is first imported,
    interpreted or compiled according to TRITON_INTERPRET at that moment, for the whole process. So it must
    be set before anything imports triton (importing a transformers model class does). This module sets it
    at its top, before importing anything that imports triton; pytest loads it before any test module under
    tests/ whose name sorts after "kernels" (all tests/test_*.py). If a root tests/conftest.py, a plugin or a
    folder sorting earlier imports triton first, the interpreter tests fail, saying so. The fix then is a
    root tests/conftest.py that starts with:
        import os, torch
        if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = os.environ["GREENPRUNE_TRITON_INTERPRET_SET"] = "1"
  * It is set only where neither the environment nor the machine says otherwise: on a GPU machine the session
    runs the compiled kernels (tests marked `cuda`) and skips the interpreter tests, since one process cannot
    mix both modes (`TRITON_INTERPRET=1 pytest tests/kernels` runs the interpreter tests there).
  * After collection the variable is restored (unset, if this file or the root conftest above set it), so the
    core tests of a `pytest tests` run do not send their CPU calls through the slow interpreter; the fixture
    sets it again around each kernels test.

Inputs are random but reproducible: each test seeds its own generator from its node id (set
GREENPRUNE_TEST_SEED to offset every seed and draw fresh inputs). Test files are named test_kernels_*.py: the tests/ folders have no
__init__.py, so pytest imports test modules by basename, and these must not clash with the core tests' names.
"""
import os
import sys
import zlib

import torch  # torch alone does not import triton

_TRITON_WAS_IMPORTED = "triton" in sys.modules
_SET_BY_ROOT = os.environ.get("GREENPRUNE_TRITON_INTERPRET_SET") == "1"
_PREVIOUS = None if _SET_BY_ROOT else os.environ.get("TRITON_INTERPRET")
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
INTERPRET_SESSION = os.environ.get("TRITON_INTERPRET", "0") == "1"

import pytest  # noqa: E402


def _interpreter_problem():
    """None when Triton kernels can run interpreted in this process, else why not."""
    if not INTERPRET_SESSION:
        return "TRITON_INTERPRET is not 1 in this session (a GPU session runs the compiled kernels instead)"
    try:
        import triton.language as tl
    except Exception as exc:  # noqa: BLE001
        return f"triton does not import ({type(exc).__name__}: {exc})"
    if type(tl.sum).__name__ != "InterpretedFunction":
        return ("triton was imported before TRITON_INTERPRET=1 was set"
                + (" (before tests/kernels/conftest.py loaded)" if _TRITON_WAS_IMPORTED else "")
                + ": set it at the top of a root tests/conftest.py (see tests/kernels/conftest.py)")
    return None


def _cuda_problem():
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if INTERPRET_SESSION:
        return "TRITON_INTERPRET=1 session: the compiled kernels run only in a session without it"
    return None


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: runs the compiled Triton kernels on a CUDA GPU (skipped without)")
    config.addinivalue_line("markers", "interpreter: launches Triton kernels on CPU tensors (TRITON_INTERPRET=1)")
    config.addinivalue_line("markers", "falls_back: the test means a Triton launcher to run the torch reference "
                            "(any other test that causes one fails: its check would compare the reference to itself)")


def pytest_collection_finish(session):
    if _PREVIOUS is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _PREVIOUS


@pytest.fixture(autouse=True)
def _triton_mode(request, monkeypatch):
    """Compiled kernels for `cuda` tests, the interpreter for the rest; afterwards, a test during which a Triton
    launcher ran the torch reference instead of its kernel fails unless it is marked `falls_back`."""
    monkeypatch.delenv("GREENPRUNE_BACKEND", raising=False)  # tests choose backends explicitly
    if request.node.get_closest_marker("cuda"):
        problem = _cuda_problem()
        if problem:
            pytest.skip(problem)
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        if request.node.get_closest_marker("interpreter"):
            problem = _interpreter_problem()
            if problem and INTERPRET_SESSION:  # a mis-ordered session must not pass silently
                pytest.fail(problem, pytrace=False)
            if problem:
                pytest.skip(problem)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    from greenprune.kernels import fallback_counts

    before = fallback_counts()
    yield
    fell = fallback_counts(since=before)
    if fell and not request.node.get_closest_marker("falls_back"):
        # the result checked was the reference's, not the kernel's: the test would prove nothing
        pytest.fail(f"Triton launchers ran the torch reference instead of their kernels: {fell}", pytrace=False)


@pytest.fixture
def gen(request) -> torch.Generator:
    """Seeded from the node id, offset by GREENPRUNE_TEST_SEED when set: tests draw different inputs from each
    other under any one seed, and a failure repeats with the seed that gpu_check.sh logged."""
    seed = int(os.environ.get("GREENPRUNE_TEST_SEED") or 0)
    g = torch.Generator()
    g.manual_seed((seed + zlib.crc32(request.node.nodeid.encode())) % 2**63)
    return g
