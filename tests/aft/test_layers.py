"""AFT layers: options, incremental decoding, parameter counts, no T x T tensors."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from aft.layers import AFTConv1d, AFTConv2d, AFTFull, AFTLocal, AFTSimple
from aft.position_bias import FactorizedPositionBias

B, T, D = 2, 24, 16


def _randomize(layer: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial parameters (the default init gives zero conv biases, tiny u, v)."""
    g = torch.Generator().manual_seed(0)
    for p in layer.parameters():
        p.data = torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5
    return layer


CAUSAL_LAYERS = {
    "full_factorized": lambda: AFTFull(D, T, bias_dim=4, causal=True),
    "full_dense": lambda: AFTFull(D, T, bias_dim=None, causal=True),
    "local_factorized": lambda: AFTLocal(D, T, window=5, bias_dim=4, causal=True),
    "local_dense": lambda: AFTLocal(D, T, window=5, bias_dim=None, causal=True),
    "local_window0": lambda: AFTLocal(D, T, window=0, causal=True),
    "simple": lambda: AFTSimple(D, causal=True),
    "simple_no_query": lambda: AFTSimple(D, causal=True, use_query=False),
    "conv1d": lambda: AFTConv1d(D, heads=4, kernel_size=4, causal=True),
    "conv1d_naive": lambda: AFTConv1d(D, heads=2, kernel_size=3, causal=True, reparam=False),
}


@pytest.mark.parametrize("name", sorted(CAUSAL_LAYERS))
def test_step_matches_forward(name: str) -> None:
    layer = _randomize(CAUSAL_LAYERS[name]().double())
    x = torch.randn(B, T, D, dtype=torch.float64)
    full = layer(x)
    cache, steps = None, []
    for t in range(T):
        y, cache = layer.step(x[:, t], cache)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, dim=1), full, rtol=0, atol=1e-12)
    if layer.window is not None:
        assert cache.keys.shape[1] <= max(layer.window, 0)  # O(window * D) state


def test_non_causal_layer_cannot_step() -> None:
    with pytest.raises(ValueError, match="causal=False"):
        AFTSimple(D).step(torch.randn(B, D))


def test_factorized_and_dense_local_agree() -> None:
    factorized = _randomize(AFTLocal(D, T, window=6, bias_dim=3))
    dense = AFTLocal(D, T, window=6, bias_dim=None)
    state = {k: v for k, v in factorized.state_dict().items() if not k.startswith("position_bias")}
    dense.load_state_dict({**state, "position_bias.w": factorized.position_bias.matrix(T).detach()})
    x = torch.randn(B, T, D)
    torch.testing.assert_close(factorized(x), dense(x), rtol=1e-5, atol=1e-6)


def test_shorter_inputs_use_leading_biases() -> None:
    layer = _randomize(AFTLocal(D, T, window=4, bias_dim=2, causal=True))
    x = torch.randn(B, T, D)
    torch.testing.assert_close(layer(x[:, :10]), layer(x)[:, :10], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="model.seq_len"):
        layer(torch.randn(B, T + 1, D))


def test_query_gate_option() -> None:
    gated, plain = AFTSimple(D), AFTSimple(D, use_query=False)
    assert plain.to_q is None
    n_gate = sum(p.numel() for p in gated.parameters()) - sum(p.numel() for p in plain.parameters())
    assert n_gate == D * D + D


def test_parameter_counts() -> None:
    """Projections as timm's Attention (4 d^2 + 4 d), plus the position biases (§3.2)."""
    d, proj = 192, 4 * 192 * 192 + 4 * 192
    assert sum(p.numel() for p in AFTFull(d, 197, bias_dim=128).parameters()) == proj + 2 * 197 * 128
    assert sum(p.numel() for p in AFTFull(d, 197, bias_dim=None).parameters()) == proj + 197 * 197
    conv = AFTConv2d(d, heads=32, kernel_size=11)
    key = d * 32 + 32  # K projects to `heads` channels
    expected = 3 * d * d + 3 * d + key + 32 * 121 + 2 * 32
    assert sum(p.numel() for p in conv.parameters()) == expected
    # Table 3: per-layer parameters of AFT-local at CIFAR10 L=24 d=256 T=3072, d'=64.
    factorized = sum(p.numel() for p in AFTLocal(256, 3072, 256, bias_dim=64).parameters())
    assert abs(factorized - 0.6e6) <= 0.15e6
    dense = sum(p.numel() for p in AFTLocal(256, 3072, 256, bias_dim=None).parameters())
    assert abs(dense - 9.6e6) <= 0.15e6


def test_conv2d_any_grid_and_global_connectivity() -> None:
    torch.manual_seed(0)
    local = _randomize(AFTConv2d(D, heads=4, kernel_size=3, global_connectivity=False))
    glob = _randomize(AFTConv2d(D, heads=4, kernel_size=3))
    for grid in ((5, 7), (14, 14), (24, 24)):
        x = torch.randn(1, *grid, D)
        assert glob(x).shape == x.shape
    x = torch.randn(1, 9, 9, D)
    x2 = x.clone()
    x2[:, 8, 8] += 5.0  # far outside a 3x3 kernel of (0, 0)
    # (the key shift is a max over the grid, so only rounding may change: up to ~1.5e-6 over
    # 200 random draws, against > 1e-3 with global connectivity)
    torch.testing.assert_close(local(x)[:, 0, 0], local(x2)[:, 0, 0], rtol=0, atol=1e-5)
    assert (glob(x)[:, 0, 0] - glob(x2)[:, 0, 0]).abs().max() > 1e-3


def test_conv_reparameterization_starts_at_zero_bias() -> None:
    layer = AFTConv2d(D, heads=4, kernel_size=5)
    assert torch.equal(layer.position_bias(), torch.zeros(4, 5, 5))
    naive = AFTConv2d(D, heads=4, kernel_size=5, reparam=False)
    assert torch.equal(naive.position_bias(), naive.position_bias.weight)


def test_gumbel_mode_is_one_hot_at_eval() -> None:
    layer = _randomize(AFTConv2d(D, heads=4, kernel_size=3, gumbel_tau=0.5))
    kernel = layer.position_bias.kernel()
    layer.eval()
    w = layer.position_bias().flatten(1)
    assert ((w != 0).sum(dim=1) == 1).all()
    torch.testing.assert_close(w.sum(dim=1), kernel.flatten(1).max(dim=1).values)
    layer.train()
    torch.manual_seed(0)
    a = layer.position_bias()
    torch.manual_seed(1)
    assert not torch.equal(a, layer.position_bias())
    a.sum().backward()
    assert layer.position_bias.weight.grad is not None


def test_bad_configs_name_the_fix() -> None:
    with pytest.raises(ValueError, match="model.mixer.window"):
        AFTLocal(D, seq_len=16, window=32)
    with pytest.raises(ValueError, match="model.mixer.heads"):
        AFTConv2d(D, heads=5, kernel_size=3)
    with pytest.raises(ValueError, match="model.mixer.kernel_size"):
        AFTConv2d(D, heads=4, kernel_size=4)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("causal", [False, True])
def test_factorized_local_never_builds_t_by_t(causal: bool) -> None:
    n, d = 2048, 4
    layer = AFTLocal(d, n, window=32, bias_dim=8, causal=causal)
    x = torch.randn(1, n, d, requires_grad=True)
    with _LargestTensor() as mode:
        layer(x).sum().backward()
    assert mode.largest < n * n // 8, mode.largest
    assert isinstance(layer.position_bias, FactorizedPositionBias)
