"""The exact fallback: Eq. 2 as a row-chunked softmax, exact for keys and biases of any scale.

A fast path whose check fails (:class:`aft.ops.prefix.Underflow`) recomputes its call here.
For the rows ``t`` of a chunk it builds the logits ``k[t'] + w[t, t']`` ``(B, R, T, Hk)``
from a :data:`BiasRows` function of the bias parameters and takes a softmax over ``t'``::

    avg[t] = sum_t' softmax_t'(k[t'] + w[t, t']) v[t']

O(T^2 d) time; the chunk is sized to ``EXACT_CHUNK_ELEMENTS`` logits, so no ``T x T x d``
tensor exists at once. The backward recomputes each chunk and takes its vector-Jacobian
product (``torch.func.vjp``) with respect to ``k``, ``v`` and the bias parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

# Elements of the (B, chunk, T, channels) logits tensor of one chunk.
EXACT_CHUNK_ELEMENTS = 1 << 22

BiasRows = Callable[[tuple[Tensor, ...], int, int], Tensor]
"""``rows(params, r0, r1) -> (Hb, r1 - r0, T)``: bias rows built from ``params``, ``-inf``
where a pair is excluded; ``Hb`` is 1 or the number of key heads."""


def average(k: Tensor, v: Tensor, params: tuple[Tensor, ...], rows: BiasRows, causal: bool) -> Tensor:
    """Exact weighted average ``(B, T, D)`` for ``k`` ``(B, T, Hk)``, ``v`` ``(B, T, D)``."""
    return torch.cat([_chunk(k, v, params, rows, r0, r1, causal) for r0, r1 in _chunks(k)], dim=1)


def average_backward(
    grad: Tensor, k: Tensor, v: Tensor, params: tuple[Tensor, ...], rows: BiasRows, causal: bool
) -> tuple[Tensor, ...]:
    """Gradients of :func:`average` for ``k``, ``v`` and each of ``params``, given ``grad = dL/davg``."""
    grads = [torch.zeros_like(x) for x in (k, v, *params)]
    for r0, r1 in _chunks(k):
        _, vjp = torch.func.vjp(lambda k, v, *p, r0=r0, r1=r1: _chunk(k, v, p, rows, r0, r1, causal), k, v, *params)
        for total, part in zip(grads, vjp(grad[:, r0:r1].contiguous()), strict=True):
            total += part
    return tuple(grads)


def _chunks(k: Tensor) -> list[tuple[int, int]]:
    B, T, Hk = k.shape
    size = max(1, EXACT_CHUNK_ELEMENTS // (B * T * Hk))
    return [(r0, min(T, r0 + size)) for r0 in range(0, T, size)]


def _chunk(k: Tensor, v: Tensor, params: tuple[Tensor, ...], rows: BiasRows, r0: int, r1: int, causal: bool) -> Tensor:
    B, T, Hk = k.shape
    D = v.shape[-1]
    bias = rows(params, r0, r1).permute(1, 2, 0)  # (R, T, Hb)
    if causal:
        future = torch.arange(T, device=k.device) > torch.arange(r0, r1, device=k.device).unsqueeze(1)
        bias = bias.masked_fill(future.unsqueeze(-1), -math.inf)
    weights = torch.softmax(k.unsqueeze(1) + bias, dim=2)  # (B, R, T, Hk)
    out = torch.einsum("brth,bthg->brhg", weights, v.reshape(B, T, Hk, D // Hk))
    return out.reshape(B, r1 - r0, D)
