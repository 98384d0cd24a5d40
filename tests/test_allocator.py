"""allocator.keep_freed_memory: applies on glibc, is refused by the opt-out, and leaves results unchanged."""
import platform

import pytest
import torch

from greenprune.allocator import keep_freed_memory


def test_opt_out_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv("GREENPRUNE_MALLOC", "default")
    assert keep_freed_memory() is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_applies_on_glibc_and_large_temporaries_compute_the_same(monkeypatch):
    monkeypatch.delenv("GREENPRUNE_MALLOC", raising=False)
    x = torch.randn(256, 40000, generator=torch.Generator().manual_seed(0))  # 41 MB: above glibc's dynamic cap
    before = x.logsumexp(-1)
    assert keep_freed_memory() is True
    for _ in range(3):  # freed and reallocated from the kept heap
        assert torch.equal(x.logsumexp(-1), before)
