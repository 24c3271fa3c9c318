"""Test utilities shared by the baseline-mixer tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def dependency_matrix(module: nn.Module, x: Tensor) -> Tensor:
    """Boolean (T, T) matrix whose entry (i, j) says whether ∂y_i/∂x_j ≠ 0 for y = module(x).

    x: (1, T, D). Each output row is contracted with a random vector so that no derivative
    cancels by accident; the T vector-Jacobian products run as one batched backward pass.
    """
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    t = y.shape[1]
    weight = torch.randn(y.shape[-1], dtype=y.dtype, generator=torch.Generator().manual_seed(0))
    cotangents = torch.eye(t, dtype=y.dtype)[:, None, :, None] * weight  # (T, 1, T, D)
    (grads,) = torch.autograd.grad(y, x, cotangents, is_grads_batched=True)
    return grads[:, 0].abs().sum(-1) > 0
