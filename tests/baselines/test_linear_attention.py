"""The shared kernelised-attention routines against naive O(T²) sums."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from aft.baselines._linear_attention import causal_linear_attention, linear_attention


def naive(q_feat: Tensor, k_feat: Tensor, v: Tensor, log_scale: Tensor, causal: bool) -> Tensor:
    """yᵢ = Σⱼ (φ(qᵢ)·φ(kⱼ)) vⱼ / Σⱼ φ(qᵢ)·φ(kⱼ), φ(kⱼ) = k_featⱼ·exp(ℓⱼ), with the T×T matrix."""
    weights = q_feat @ (k_feat * log_scale.exp()[..., None]).transpose(-2, -1)
    if causal:
        weights = weights.tril()
    return weights @ v / weights.sum(-1, keepdim=True)


def random_inputs(t: int, log_range: float, dtype: torch.dtype = torch.float64) -> tuple[Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    q = torch.rand(2, 3, t, 5, generator=gen, dtype=dtype) + 0.1
    k = torch.rand(2, 3, t, 5, generator=gen, dtype=dtype) + 0.1
    v = torch.randn(2, 3, t, 4, generator=gen, dtype=dtype)
    log_scale = (torch.rand(2, 3, t, generator=gen, dtype=dtype) * 2 - 1) * log_range
    return q, k, v, log_scale


@pytest.mark.parametrize("chunk_size", [1, 4, 13, 32])
@pytest.mark.parametrize("log_range", [0.0, 5.0, 300.0])
def test_causal_equals_naive(chunk_size: int, log_range: float) -> None:
    q, k, v, log_scale = random_inputs(13, log_range)
    expected = naive(q, k, v, log_scale, causal=True)
    got = causal_linear_attention(q, k, v, log_scale, eps=0.0, chunk_size=chunk_size)
    torch.testing.assert_close(got, expected)


def test_causal_without_log_scale_equals_naive() -> None:
    q, k, v, log_scale = random_inputs(10, 0.0)
    expected = naive(q, k, v, torch.zeros_like(log_scale), causal=True)
    torch.testing.assert_close(causal_linear_attention(q, k, v, eps=0.0, chunk_size=4), expected)


@pytest.mark.parametrize("log_range", [0.0, 300.0])
def test_non_causal_equals_naive(log_range: float) -> None:
    q, k, v, log_scale = random_inputs(9, log_range)
    expected = naive(q, k, v, log_scale, causal=False)
    torch.testing.assert_close(linear_attention(q, k, v, log_scale, eps=0.0), expected)


def test_float32_with_huge_log_scales_stays_finite_and_accurate() -> None:
    """exp(±300) overflows float32; the running-max rescaling never forms it."""
    q, k, v, log_scale = random_inputs(13, 300.0)
    expected = naive(q, k, v, log_scale, causal=True)
    got = causal_linear_attention(*(z.float() for z in (q, k, v, log_scale)), eps=0.0, chunk_size=4)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
