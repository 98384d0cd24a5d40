"""Test setup for greenprune.kernels: the Triton kernels run under the Triton interpreter on the CPU.

TRITON_INTERPRET, and when it must be set
  * greenprune's own kernels are decorated lazily at their first launch (dispatch.LazyKernel, one variant per
    mode), so for them the variable only has to be set while a test runs: the autouse fixture below does it.
  * Triton's standard library (tl.sum, tl.max, tl.zeros, ...) is decorated when triton is first imported, as
    interpreted or compiled functions according to TRITON_INTERPRET at that moment, for the whole process.
    So the variable must be set before anything imports triton (importing a transformers model class does).
    This module sets it at its top, before any import of triton. pytest loads it before importing any test
    module of tests/ whose name sorts after "kernels" (all tests/test_*.py files). If a root tests/conftest.py,
    a plugin or a folder sorting before tests/kernels imports triton first, the interpreter tests skip with that
    reason; the fix is a root tests/conftest.py whose first lines set it (see the report with these files).
  * The variable is set only when neither the environment nor the machine says otherwise: with a GPU, the
    session runs the compiled kernels (tests marked `cuda`) and skips the interpreter tests, since one process
    cannot mix the two modes (run `TRITON_INTERPRET=1 pytest tests/kernels` there for the interpreter tests).
  * After collection the previous value is restored, so the core tests of a `pytest tests` run do not send
    their CPU calls through the (slow) interpreter; the fixture sets it again for each interpreter test here.

Inputs are random but reproducible: each test seeds its own generator from its node id (set
GREENPRUNE_TEST_SEED to draw fresh inputs). Test files are named test_kernels_*.py: the tests/ folders have no
__init__.py, so pytest imports test modules by basename, and these must not clash with the core tests' names.
"""
import os
import sys
import zlib

_PREVIOUS = os.environ.get("TRITON_INTERPRET")
_TRITON_WAS_IMPORTED = "triton" in sys.modules
if _PREVIOUS is None:
    import torch  # torch does not import triton

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
INTERPRET_SESSION = os.environ.get("TRITON_INTERPRET", "0") == "1"

import pytest  # noqa: E402
import torch  # noqa: E402


def _interpreter_problem():
    """None when Triton kernels can run interpreted in this process, else why not."""
    if not INTERPRET_SESSION:
        return "a GPU session runs the compiled kernels; set TRITON_INTERPRET=1 to run the interpreter tests"
    try:
        import triton.language as tl
    except Exception as exc:  # noqa: BLE001
        return f"triton does not import ({type(exc).__name__}: {exc})"
    if type(tl.sum).__name__ != "InterpretedFunction":
        return ("triton was imported before TRITON_INTERPRET=1 was set"
                + (" (before tests/kernels/conftest.py loaded)" if _TRITON_WAS_IMPORTED else "")
                + ": set it at the top of a root tests/conftest.py or in the environment")
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


def pytest_collection_finish(session):
    if _PREVIOUS is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _PREVIOUS


@pytest.fixture(autouse=True)
def _triton_mode(request, monkeypatch):
    monkeypatch.delenv("GREENPRUNE_BACKEND", raising=False)  # tests choose backends explicitly
    if request.node.get_closest_marker("cuda"):
        problem = _cuda_problem()
        if problem:
            pytest.skip(problem)
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        return
    if request.node.get_closest_marker("interpreter"):
        problem = _interpreter_problem()
        if problem:
            pytest.skip(problem)
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def gen(request) -> torch.Generator:
    seed = os.environ.get("GREENPRUNE_TEST_SEED")
    g = torch.Generator()
    g.manual_seed(int(seed) if seed else zlib.crc32(request.node.nodeid.encode()))
    return g
