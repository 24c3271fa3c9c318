"""The AFT operators as their equations: dense, vectorized, the reference for every backend.

Every variant is Eq. 2 with its own bias ``w[t, t']`` ``(Hb, T, T)`` (one per key head for
AFT-conv, ``Hb = 1`` otherwise)::

    avg[t, c] = sum_t' exp(k[t', c] + w[t, t']) v[t', c] / sum_t' exp(k[t', c] + w[t, t'])
    out[t, c] = sigmoid(q[t, c]) * avg[t, c]          (avg itself when q is None)

with ``t' <= t`` only when causal, and ``w`` built densely:

* AFT-full (Eq. 2): ``w`` as given; AFT-simple (Eq. 5): ``w = 0``.
* AFT-local (Eq. 4): ``w[t, t']`` where ``|t - t'| < s``, 0 elsewhere; ``w = u v^T`` (Eq. 7)
  for a factorized bias.
* AFT-conv1d (Eq. 6): ``w[h, t, t'] = kernel[h, t' - t + S//2]`` (causal:
  ``kernel[h, t - t']``) inside the kernel, 0 outside (``-inf`` without global connectivity).
* AFT-conv2d (Eq. 6): the same on the raster-ordered ``Y x X`` grid with a 2-d kernel.

Computed as one softmax over ``t'`` in the inputs' dtype (float64 stays float64, float16 and
bfloat16 run in float32), returned in ``v``'s dtype. This is the one place that builds
``T x T x D`` (``(B, T, T, D)`` logits); it refuses inputs where that tensor would exceed
``MAX_ELEMENTS``. Shapes as :mod:`aft.ops`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from aft.ops.casting import FactorizedBias, upcast

MAX_ELEMENTS = 1 << 26  # of the (B, T, T, D) logits: 512 MiB in float64


def aft_dense(
    q: Tensor | None, k: Tensor, v: Tensor, bias: Tensor, causal: bool, dtype: torch.dtype | None = None
) -> Tensor:
    """Eq. 2 with a dense bias ``(Hb, T, T)``, ``Hb`` 1 or ``Hk``; ``k`` ``(B, T, Hk)``, ``Hk | D``.

    ``dtype``: compute in it (tests pass float64); default the inputs' upcast dtype.
    """
    B, T, D = v.shape
    if B * T * T * D > MAX_ELEMENTS:
        raise ValueError(
            f"aft.ops.naive would build a (B, T, T, D) = {(B, T, T, D)} tensor of {B * T * T * D} elements "
            f"(> MAX_ELEMENTS = {MAX_ELEMENTS}): use backend='torch' (model.mixer.backend=torch) or smaller inputs"
        )
    cast = (lambda t: t.to(dtype)) if dtype is not None else upcast
    k, values, bias = cast(k), cast(v), cast(bias)
    group = D // k.shape[-1]
    heads = (
        torch.arange(D, device=v.device) // group
        if bias.shape[0] > 1
        else torch.zeros(D, dtype=torch.long, device=v.device)
    )
    logits = k.repeat_interleave(group, dim=-1)[:, None] + bias[heads].permute(1, 2, 0)[None]  # (B, T, T', D)
    if causal:
        logits = logits.masked_fill(
            torch.ones(T, T, dtype=torch.bool, device=v.device).triu(1)[None, :, :, None], -math.inf
        )
    avg = (torch.softmax(logits, dim=2) * values[:, None]).sum(dim=2)
    out = avg if q is None else torch.sigmoid(cast(q)) * avg
    return out if dtype is not None else out.to(v.dtype)


def local_bias(w: Tensor | FactorizedBias, window: int) -> Tensor:
    """Eq. 4: ``w[t, t']`` where ``|t - t'| < window``, else 0; ``(1, T, T)``."""
    dense = w[0] @ w[1].T if isinstance(w, (tuple, list)) else w
    T = dense.shape[0]
    offsets = torch.arange(T, device=dense.device)[None] - torch.arange(T, device=dense.device)[:, None]
    return dense.masked_fill(offsets.abs() >= window, 0.0)[None]


def conv1d_bias(w: Tensor, T: int, causal: bool, global_connectivity: bool = True) -> Tensor:
    """Toeplitz bias of AFT-conv1d from its kernel ``(H, S)``; ``(H, T, T)``."""
    S = w.shape[1]
    offsets = torch.arange(T, device=w.device)[None] - torch.arange(T, device=w.device)[:, None]  # t' - t
    index = -offsets if causal else offsets + S // 2
    inside = (index >= 0) & (index < S)
    return w[:, index.clamp(0, S - 1)].masked_fill(~inside, 0.0 if global_connectivity else -math.inf)


def conv2d_bias(w: Tensor, Y: int, X: int, global_connectivity: bool = True) -> Tensor:
    """2-d Toeplitz bias of AFT-conv2d from its kernel ``(H, S, S)`` over the raster-ordered grid; ``(H, YX, YX)``."""
    S = w.shape[-1]
    cells = torch.arange(Y * X, device=w.device)
    ys, xs = cells.div(X, rounding_mode="floor"), cells % X
    dy, dx = ys[None] - ys[:, None] + S // 2, xs[None] - xs[:, None] + S // 2
    inside = (dy >= 0) & (dy < S) & (dx >= 0) & (dx < S)
    return w[:, dy.clamp(0, S - 1), dx.clamp(0, S - 1)].masked_fill(~inside, 0.0 if global_connectivity else -math.inf)


def aft_full(q: Tensor | None, k: Tensor, v: Tensor, w: Tensor, causal: bool = False) -> Tensor:
    return aft_dense(q, k, v, w[None], causal)


def aft_simple(q: Tensor | None, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
    T = k.shape[1]
    return aft_dense(q, k, v, k.new_zeros(1, T, T), causal)


def aft_local(
    q: Tensor | None, k: Tensor, v: Tensor, w: Tensor | FactorizedBias, window: int, causal: bool = False
) -> Tensor:
    return aft_dense(q, k, v, local_bias(w, window), causal)


def aft_conv1d(
    q: Tensor | None, k: Tensor, v: Tensor, w: Tensor, causal: bool = False, global_connectivity: bool = True
) -> Tensor:
    return aft_dense(q, k, v, conv1d_bias(w, k.shape[1], causal, global_connectivity), causal)


def aft_conv2d(q: Tensor | None, k: Tensor, v: Tensor, w: Tensor, global_connectivity: bool = True) -> Tensor:
    B, Y, X, D = v.shape
    flat = [None if t is None else t.reshape(B, Y * X, t.shape[-1]) for t in (q, k, v)]
    return aft_dense(*flat, conv2d_bias(w, Y, X, global_connectivity), False).reshape(B, Y, X, D)
