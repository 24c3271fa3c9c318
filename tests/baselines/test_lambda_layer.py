"""LambdaLayer: per-position reference, grid sizes and the Table 7 parameter counts."""

from __future__ import annotations

import pytest
import torch

from aft.baselines import LambdaLayer


def naive_lambda(layer: LambdaLayer, x: torch.Tensor) -> torch.Tensor:
    """yₙ = qₙᵀ(λᶜ + λᵖₙ) with λᵖₙ = Σₘ E[m − n] vₘᵀ summed position by position (Bello 2021, Eq. 3)."""
    b, height, width, d = x.shape
    max_height, max_width = layer.grid_size
    tokens = x.reshape(-1, d)
    q = layer.norm_q(layer.to_q(tokens)).view(b, height * width, layer.heads, layer.key_dim)
    k = layer.norm_k(layer.to_k(tokens)).view(b, height * width, layer.key_dim).softmax(dim=1)
    v = layer.to_v(tokens).view(b, height * width, layer.value_dim)
    out = torch.zeros(b, height * width, layer.heads, layer.value_dim, dtype=x.dtype)
    for n in range(height * width):
        yn, xn = divmod(n, width)
        lam = k.transpose(1, 2) @ v  # content lambda (B, |k|, |v|)
        for m in range(height * width):
            ym, xm = divmod(m, width)
            embedding = layer.rel_pos_emb[ym - yn + max_height - 1, xm - xn + max_width - 1]
            lam = lam + embedding[None, :, None] * v[:, m, None, :]
        out[:, n] = q[:, n] @ lam
    return layer.proj(out.reshape(b, height, width, d))


@pytest.mark.parametrize("grid", [(4, 5), (3, 2)])
def test_matches_per_position_reference(grid: tuple[int, int]) -> None:
    torch.manual_seed(0)
    layer = LambdaLayer(12, heads=3, key_dim=4, grid_size=(4, 5)).double()
    with torch.no_grad():
        layer.rel_pos_emb.normal_()  # make the positional term as large as the content term
    layer.train()(torch.randn(4, 4, 5, 12, dtype=torch.float64))  # non-trivial BatchNorm statistics
    layer.eval()
    x = torch.randn(2, *grid, 12, dtype=torch.float64)
    torch.testing.assert_close(layer(x), naive_lambda(layer, x))


@pytest.mark.parametrize("grid", [(14, 14), (7, 10)])
def test_forward_backward_on_grids_up_to_the_configured_size(grid: tuple[int, int]) -> None:
    layer = LambdaLayer(24, heads=3, grid_size=(14, 14)).train()
    x = torch.randn(2, *grid, 24, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_rejects_grids_larger_than_configured() -> None:
    with pytest.raises(ValueError):
        LambdaLayer(24, heads=3, grid_size=(4, 4))(torch.randn(1, 5, 4, 24))


@pytest.mark.parametrize(("dim", "heads", "count"), [(192, 3, 73_424), (384, 6, 227_312)])
def test_table_7_mixer_parameter_counts(dim: int, heads: int, count: int) -> None:
    assert sum(p.numel() for p in LambdaLayer(dim, heads=heads).parameters()) == count
