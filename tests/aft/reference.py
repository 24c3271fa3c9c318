"""A dense, obviously-correct float64 reference for every AFT variant (Eq. 2).

Builds the full ``(T, T)`` bias of each variant with Python loops and evaluates Eq. 2 as a
softmax over ``t'`` of ``k[t'] + w[t, t']``: O(T^2 D) memory, for tiny test sizes only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def reference_aft(q: Tensor | None, k: Tensor, v: Tensor, bias: Tensor, causal: bool) -> Tensor:
    """Eq. 2. ``k``: (B, T, Hk) with Hk | D; ``v``: (B, T, D); ``bias``: (Hb, T, T), Hb in {1, Hk}."""
    k, v, bias = k.double(), v.double(), bias.double()
    B, T, D = v.shape
    group = D // k.shape[-1]
    keys = k.repeat_interleave(group, dim=-1)  # (B, T, D)
    heads = torch.arange(D, device=v.device) // group if bias.shape[0] > 1 else torch.zeros(D, dtype=torch.long, device=v.device)
    logits = keys[:, None, :, :] + bias[heads].permute(1, 2, 0)[None]  # (B, T, T', D)
    if causal:
        future = torch.ones(T, T, dtype=torch.bool, device=v.device).triu(1)
        logits = logits.masked_fill(future[None, :, :, None], -math.inf)
    avg = (torch.softmax(logits, dim=2) * v[:, None]).sum(dim=2)
    return avg if q is None else torch.sigmoid(q.double()) * avg


def local_bias(w: Tensor, window: int) -> Tensor:
    """Eq. 4: ``w[t, t']`` where ``|t - t'| < window``, else 0. Returns (1, T, T)."""
    T = w.shape[0]
    out = torch.zeros(T, T, dtype=w.dtype)
    for t in range(T):
        for s in range(T):
            if abs(t - s) < window:
                out[t, s] = w[t, s]
    return out[None]


def conv1d_bias(w: Tensor, T: int, causal: bool, global_connectivity: bool = True) -> Tensor:
    """Toeplitz bias of AFT-conv1d, (H, T, T)."""
    H, S = w.shape
    fill = 0.0 if global_connectivity else -math.inf
    out = torch.full((H, T, T), fill, dtype=w.dtype)
    for t in range(T):
        for j in range(S):
            s = t - j if causal else t + j - S // 2
            if 0 <= s < T:
                out[:, t, s] = w[:, j]
    return out


def conv2d_bias(w: Tensor, Y: int, X: int, global_connectivity: bool = True) -> Tensor:
    """2-d Toeplitz bias of AFT-conv2d over the raster-ordered grid, (H, YX, YX)."""
    H, S, _ = w.shape
    fill = 0.0 if global_connectivity else -math.inf
    out = torch.full((H, Y * X, Y * X), fill, dtype=w.dtype)
    for y in range(Y):
        for x in range(X):
            for a in range(S):
                for b in range(S):
                    yy, xx = y + a - S // 2, x + b - S // 2
                    if 0 <= yy < Y and 0 <= xx < X:
                        out[:, y * X + x, yy * X + xx] = w[:, a, b]
    return out
