"""PerformerAttention: fast-transformers' FAVOR (±pairs of orthogonal features, as many as the head
width, redrawn at every training forward), estimator quality, exactness of the causal prefix sums,
stability, deterministic evaluation."""

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


def test_features_come_in_plus_minus_pairs() -> None:
    """φ(x) = [exp(ω·x − ‖x‖²/2), exp(−ω·x − ‖x‖²/2)]: each pair's log-features sum to −‖x‖²."""
    w = orthogonal_gaussian_features(3, 4, generator=torch.Generator().manual_seed(0)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    psi, log_scale = favor_features(x, w)
    assert psi.shape == (5, 6)
    log_phi = psi.log() + log_scale[:, None]
    torch.testing.assert_close(log_phi[:, :3] + log_phi[:, 3:], -x.square().sum(-1, keepdim=True).expand(5, 3))
    torch.testing.assert_close(log_phi[:, :3] - log_phi[:, 3:], 2 * x @ w.T)


def favor_attention_error(n_features: int, seed: int) -> float:
    """Mean |Â − A| between the FAVOR estimate with ``n_features`` (±pairs) and softmax(QKᵀ/√E)."""
    data = torch.Generator().manual_seed(123)
    e = 8
    q, k = torch.randn(2, 16, e, generator=data, dtype=torch.float64) * 0.5
    exact = (q @ k.T / math.sqrt(e)).softmax(-1)
    w = orthogonal_gaussian_features(n_features // 2, e, generator=torch.Generator().manual_seed(seed)).double()
    (psi_q, log_q), (psi_k, log_k) = (favor_features(z * e**-0.25, w) for z in (q, k))
    estimate = (psi_q * log_q.exp()[:, None]) @ (psi_k * log_k.exp()[:, None]).T
    return (estimate / estimate.sum(-1, keepdim=True) - exact).abs().mean().item()


def test_kernel_approximation_improves_with_more_features() -> None:
    errors = {m: sum(favor_attention_error(m, seed) for seed in range(5)) / 5 for m in (4, 64, 1024)}
    assert errors[1024] < errors[64] < errors[4]
    assert errors[1024] < 0.25 * errors[4]


def softmax_attention(mixer: PerformerAttention, x: torch.Tensor) -> torch.Tensor:
    """Exact causal softmax attention with the mixer's own projections."""
    b, t, d = x.shape
    q, k, v = (z.view(b, t, mixer.heads, d // mixer.heads).transpose(1, 2) for z in mixer.qkv(x).chunk(3, dim=-1))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return mixer.proj(out.transpose(1, 2).reshape(b, t, d))


def test_module_approximates_softmax_attention_on_small_inputs() -> None:
    """With many features the estimate is close to exact attention; with few it is coarser."""
    torch.manual_seed(0)
    x = torch.randn(2, 12, 16, dtype=torch.float64) * 0.5
    errors = {}
    for n_features in (4, 4096):
        torch.manual_seed(0)
        mixer = PerformerAttention(16, heads=2, causal=True, n_features=n_features, chunk_size=4).double().eval()
        exact = softmax_attention(mixer, x)
        errors[n_features] = ((mixer(x) - exact).abs().mean() / exact.abs().mean()).item()
    assert errors[4096] < 0.05 and errors[4096] < 0.25 * errors[4]


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
    mixer = PerformerAttention(12, heads=2, causal=causal, n_features=10, chunk_size=4, eps=1e-12).double().eval()
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


def test_features_are_redrawn_at_every_training_forward() -> None:
    torch.manual_seed(0)
    mixer = PerformerAttention(16, heads=2).train()
    x = torch.randn(2, 9, 16)
    draws, outputs = [], []
    for _ in range(3):
        outputs.append(mixer(x))
        draws.append(mixer.projection.clone())
    for i in range(2):
        assert not torch.allclose(draws[i], draws[i + 1]) and not torch.allclose(outputs[i], outputs[i + 1])


def test_evaluation_is_deterministic_with_the_last_training_draw() -> None:
    torch.manual_seed(0)
    mixer = PerformerAttention(16, heads=2)
    x = torch.randn(2, 9, 16)
    mixer.train()(x)
    last_draw = mixer.projection.clone()
    mixer.eval()
    y = mixer(x)
    for _ in range(2):
        torch.testing.assert_close(mixer(x), y, rtol=0, atol=0)
    assert torch.equal(mixer.projection, last_draw)
    restored = PerformerAttention(16, heads=2).eval()  # another construction draw ...
    restored.load_state_dict(mixer.state_dict())  # ... replaced by the checkpointed one
    torch.testing.assert_close(restored(x), y, rtol=0, atol=0)


def test_a_training_forward_keeps_the_backward_of_an_earlier_one() -> None:
    """The redraw replaces the buffer instead of writing into the one the earlier graph saved."""
    torch.manual_seed(0)
    mixer = PerformerAttention(16, heads=2).train()
    x = torch.randn(2, 9, 16, requires_grad=True)
    first = mixer(x)
    mixer(x)
    first.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_default_features_are_the_head_width_in_pairs() -> None:
    """fast-transformers' Favor: n_dims = query_dimensions, from n_dims / 2 orthogonal directions."""
    mixer = PerformerAttention(512, heads=8)
    assert mixer.n_features == 64 and mixer.projection.shape == (32, 64)
    gram = mixer.projection @ mixer.projection.T
    torch.testing.assert_close(gram - torch.diag(gram.diagonal()), torch.zeros(32, 32), atol=1e-4, rtol=0)


def test_rejects_an_odd_feature_count() -> None:
    with pytest.raises(ValueError, match="n_features"):
        PerformerAttention(16, heads=2, n_features=7)
