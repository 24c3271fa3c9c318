"""MultiHeadAttention against a hand-written softmax(QKᵀ/√E)V."""

from __future__ import annotations

import math

import pytest
import torch

from aft.baselines import MultiHeadAttention


@pytest.mark.parametrize("causal", [True, False])
def test_matches_explicit_softmax_attention(causal: bool) -> None:
    torch.manual_seed(0)
    b, t, d, heads = 2, 7, 12, 3
    mixer = MultiHeadAttention(d, heads=heads, causal=causal).double()
    x = torch.randn(b, t, d, dtype=torch.float64)

    e = d // heads
    q, k, v = (z.view(b, t, heads, e).transpose(1, 2) for z in mixer.qkv(x).split(d, dim=-1))
    scores = q @ k.transpose(-2, -1) / math.sqrt(e)
    if causal:
        scores = scores.masked_fill(torch.ones(t, t).triu(1).bool(), -math.inf)
    heads_out = scores.softmax(-1) @ v
    expected = mixer.proj(heads_out.transpose(1, 2).reshape(b, t, d))

    torch.testing.assert_close(mixer(x), expected)


def test_parameter_count_is_that_of_timm_attention() -> None:
    d = 512
    assert sum(p.numel() for p in MultiHeadAttention(d).parameters()) == 4 * d * d + 4 * d == 1_050_624


def test_rejects_heads_not_dividing_dim() -> None:
    with pytest.raises(ValueError):
        MultiHeadAttention(10, heads=3)
