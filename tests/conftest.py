"""Shared fixtures: tiny random Llama models built in the test, and the real default model's tokenizer."""
import os
import tempfile

import torch  # torch alone does not import triton

# Triton's own library is interpreted or compiled according to TRITON_INTERPRET when triton is first
# imported, so it is set here, first. tests/kernels/conftest.py unsets it after collection so the core tests
# run the torch path, and sets it again around each kernels test (see there).
if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = os.environ["GREENPRUNE_TRITON_INTERPRET_SET"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Cached dense results of the tests' throwaway models go to a folder of this run, not the user's cache.
os.environ["GREENPRUNE_EVAL_CACHE"] = tempfile.mkdtemp(prefix="greenprune-test-eval-")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def default_dir():
    """The embedded default model (converted from GGUF once, then cached as safetensors)."""
    from greenprune.modelio.load import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def real_tokenizer(default_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_dir)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, real_tokenizer):
    """A tiny random Llama (real SmolLM2 tokenizer, GQA 6 heads / 2 KV heads) saved as a HF directory."""
    d = tmp_path_factory.mktemp("tiny") / "model"
    from helpers import tiny_model

    m = tiny_model(vocab_size=len(real_tokenizer), layers=4, hidden=64, ffn=96, heads=4, kv_heads=2)
    m.save_pretrained(d)
    real_tokenizer.save_pretrained(d)
    return d


def pytest_collection_finish(session):
    """Core tests run the torch path: the interpreter is for kernel tests only (their conftest sets it again
    around each kernels test). Without this, a run of core tests alone sent every op through the interpreter."""
    if os.environ.get("GREENPRUNE_TRITON_INTERPRET_SET") == "1":
        os.environ.pop("TRITON_INTERPRET", None)
