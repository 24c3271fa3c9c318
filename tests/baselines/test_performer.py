"""PerformerAttention: FAVOR+ estimator quality, exactness of the causal prefix sums, stability."""

from __future__ import annotations

import math

import pytest
import torch

from aft.baselines import PerformerAttention
from aft.baselines.performer import favor_features, orthogonal_gaussian_features


def test_orthogonal_features_are_orthogonal_within_blocks() -> None:
    w = orthogonal_gaussian_features(10, 4, generator=torch.Generator().manual_seed(0))
    assert w.shape == (10, 4)
    for block in (w[:4], w[4:8]):
        gram = block @ block.T
        torch.testing.assert_close(gram - torch.diag(gram.diagonal()), torch.zeros(4, 4), atol=1e-5, rtol=0)


def favor_attention_error(n_features: int, seed: int) -> float:
    """Mean |Â − A| between the FAVOR+ estimate and softmax(QKᵀ/√E) for fixed random q, k."""
    data = torch.Generator().manual_seed(123)
    e = 8
    q, k = torch.randn(2, 16, e, generator=data, dtype=torch.float64) * 0.5
    exact = (q @ k.T / math.sqrt(e)).softmax(-1)
    w = orthogonal_gaussian_features(n_features, e, generator=torch.Generator().manual_seed(seed)).double()
    (psi_q, log_q), (psi_k, log_k) = (favor_features(z * e**-0.25, w) for z in (q, k))
    estimate = (psi_q * log_q.exp()[:, None]) @ (psi_k * log_k.exp()[:, None]).T
    return (estimate / estimate.sum(-1, keepdim=True) - exact).abs().mean().item()


def test_kernel_approximation_improves_with_more_features() -> None:
    errors = {m: sum(favor_attention_error(m, seed) for seed in range(5)) / 5 for m in (4, 64, 1024)}
    assert errors[1024] < errors[64] < errors[4]
    assert errors[1024] < 0.25 * errors[4]


def naive_favor(mixer: PerformerAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """The same random features, attention matrix formed explicitly (T×T) and normalised."""
    b, t, d = x.shape
    heads = mixer.heads
    q, k, v = (z.view(b, t, heads, d // heads).transpose(1, 2) for z in mixer.qkv(x).chunk(3, dim=-1))
    scale = (d // heads) ** -0.25
    (psi_q, log_q), (psi_k, log_k) = (favor_features(z * scale, mixer.projection) for z in (q, k))
    weights = (psi_q * log_q.exp()[..., None]) @ (psi_k * log_k.exp()[..., None]).transpose(-2, -1)
    if causal:
        weights = weights.tril()
    out = weights @ v / weights.sum(-1, keepdim=True)
    return mixer.proj(out.transpose(1, 2).reshape(b, t, d))


@pytest.mark.parametrize("causal", [True, False])
def test_output_equals_naive_quadratic_reference(causal: bool) -> None:
    torch.manual_seed(0)
    mixer = PerformerAttention(12, heads=2, causal=causal, n_features=10, chunk_size=4, eps=1e-12).double()
    x = torch.randn(2, 11, 12, dtype=torch.float64)
    torch.testing.assert_close(mixer(x), naive_favor(mixer, x, causal))


def test_large_activations_stay_finite_and_causal_in_float32() -> None:
    """Keys with huge norms overflow unstabilised features; future keys still cannot leak."""
    torch.manual_seed(0)
    mixer = PerformerAttention(16, heads=2, causal=True, n_features=16, chunk_size=4).eval()
    x = torch.randn(1, 12, 16) * 30
    y = mixer(x)
    assert torch.isfinite(y).all()
    changed = x.clone()
    changed[:, 6:] *= 3
    torch.testing.assert_close(mixer(changed)[:, :6], y[:, :6], rtol=0, atol=1e-6)


def test_features_are_fixed_until_redrawn() -> None:
    torch.manual_seed(0)
    mixer = PerformerAttention(16, heads=2).eval()
    x = torch.randn(2, 9, 16)
    y = mixer(x)
    assert torch.equal(mixer(x), y)
    assert "projection" in mixer.state_dict()
    mixer.redraw_features(torch.Generator().manual_seed(1))
    assert not torch.allclose(mixer(x), y)


def test_default_feature_count_is_d_log_d() -> None:
    assert PerformerAttention(512, heads=8).n_features == int(64 * math.log(64)) == 266
