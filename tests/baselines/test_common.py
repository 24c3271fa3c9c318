"""Checks every baseline sequence mixer must pass: shapes, gradients and causality."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from aft.baselines import (
    DenseSynthesizerAttention,
    LinearAttention,
    LocalAttention2d,
    LSHAttention,
    MultiHeadAttention,
    PerformerAttention,
    StridedSparseAttention,
)
from tests.baselines.helpers import dependency_matrix

DIM, T = 16, 21

MIXERS: dict[str, Callable[[bool], nn.Module]] = {
    "mha": lambda causal: MultiHeadAttention(DIM, heads=2, causal=causal),
    "local2d": lambda causal: LocalAttention2d(
        DIM, heads=2, causal=causal, height=4, width_channels=12, query_shape=(2, 4), memory_flange=(1, 2)
    ),
    "strided": lambda causal: StridedSparseAttention(DIM, heads=2, causal=causal, stride=4),
    "linear": lambda causal: LinearAttention(DIM, heads=2, causal=causal, chunk_size=4),
    "performer": lambda causal: PerformerAttention(DIM, heads=2, causal=causal, n_features=12, chunk_size=4),
    "synthesizer": lambda causal: DenseSynthesizerAttention(DIM, heads=2, causal=causal, seq_len=24),
    "reformer": lambda causal: LSHAttention(DIM, heads=2, causal=causal, n_buckets=4, chunk_size=4),
}


def build(name: str, causal: bool) -> nn.Module:
    torch.manual_seed(0)
    return MIXERS[name](causal).double().eval()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name", MIXERS)
def test_forward_backward(name: str, causal: bool) -> None:
    torch.manual_seed(0)
    mixer = MIXERS[name](causal).train()
    x = torch.randn(2, T, DIM, requires_grad=True)
    y = mixer(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for param_name, param in mixer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name


@pytest.mark.parametrize("name", MIXERS)
def test_causal_outputs_ignore_future_tokens(name: str) -> None:
    mixer = build(name, causal=True)
    x = torch.randn(2, T, DIM, dtype=torch.float64)
    y = mixer(x)
    for t in (0, 3, 10, T - 2):
        changed = x.clone()
        changed[:, t + 1 :] = torch.randn_like(changed[:, t + 1 :]) * 3
        torch.testing.assert_close(mixer(changed)[:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", MIXERS)
def test_non_causal_outputs_see_future_tokens(name: str) -> None:
    mixer = build(name, causal=False)
    x = torch.randn(2, T, DIM, dtype=torch.float64)
    changed = x.clone()
    changed[:, 3:] += 1.0
    assert (mixer(changed)[:, :3] - mixer(x)[:, :3]).abs().max() > 1e-4


@pytest.mark.parametrize("name", MIXERS)
def test_causal_gradients_vanish_on_future_tokens(name: str) -> None:
    mixer = build(name, causal=True)
    depends = dependency_matrix(mixer, torch.randn(1, T, DIM, dtype=torch.float64))
    assert not depends.triu(1).any()
    assert depends.any(dim=1).all()
