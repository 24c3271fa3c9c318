"""Tensor-reshaping helpers shared by several baseline mixers."""

from __future__ import annotations

import torch
from torch import Tensor


def split_heads(x: Tensor, heads: int) -> Tensor:
    """Split the feature axis into heads: (B, T, H·E) -> (B, H, T, E)."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """Inverse of :func:`split_heads`: (B, H, T, E) -> (B, T, H·E)."""
    b, h, t, e = x.shape
    return x.transpose(1, 2).reshape(b, t, h * e)


def check_heads(dim: int, heads: int) -> int:
    """Return the per-head width ``dim // heads``; raise if ``heads`` does not divide ``dim``."""
    if heads < 1 or dim % heads != 0:
        raise ValueError(f"dim={dim} must be a positive multiple of heads={heads}")
    return dim // heads


def look_around(x: Tensor, dim: int, before: int, after: int, pad_value: float) -> Tensor:
    """Concatenate every chunk with its ``before`` preceding and ``after`` following chunks.

    ``x`` has a chunk axis ``dim`` of length N directly followed by a within-chunk axis of
    length C: (..., N, C, ...) -> (..., N, (before + 1 + after)·C, ...). Out-of-range
    neighbours (before the first / after the last chunk) are filled with ``pad_value``.
    """
    dim = dim % x.dim()
    n = x.shape[dim]
    edge = list(x.shape)
    edge[dim] = before
    head = x.new_full(edge, pad_value)
    edge[dim] = after
    tail = x.new_full(edge, pad_value)
    padded = torch.cat([head, x, tail], dim=dim)
    return torch.cat([padded.narrow(dim, i, n) for i in range(before + 1 + after)], dim=dim + 1)
