"""LinearAttention (elu + 1 features) against the naive quadratic formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aft.baselines import LinearAttention


@pytest.mark.parametrize("causal", [True, False])
def test_matches_naive_quadratic_reference(causal: bool) -> None:
    torch.manual_seed(0)
    b, t, d, heads = 2, 11, 12, 3
    mixer = LinearAttention(d, heads=heads, causal=causal, chunk_size=4).double()
    x = torch.randn(b, t, d, dtype=torch.float64)

    q, k, v = (z.view(b, t, heads, d // heads).transpose(1, 2) for z in mixer.qkv(x).chunk(3, dim=-1))
    weights = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-2, -1)  # Katharopoulos et al. Eq. 4
    if causal:
        weights = weights.tril()
    heads_out = weights @ v / (weights.sum(-1, keepdim=True) + mixer.eps)
    expected = mixer.proj(heads_out.transpose(1, 2).reshape(b, t, d))

    torch.testing.assert_close(mixer(x), expected)
