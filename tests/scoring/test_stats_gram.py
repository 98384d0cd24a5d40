"""The blocked Gram matrix equals the full product on fresh random inputs, whatever the split."""
import pytest
import torch

from greenprune.scoring.stats import gram


@pytest.mark.parametrize("t, c, parts", [(37, 64, 4), (5, 13, 4), (16, 3, 4), (64, 96, 1), (20, 50, 3)])
def test_gram_equals_the_full_product(t, c, parts):
    x = torch.randn(t, c, generator=torch.Generator().manual_seed(t * c))
    g = gram(x, parts)
    torch.testing.assert_close(g, x.T @ x, rtol=1e-5, atol=1e-5)
    assert torch.equal(g, g.T)
