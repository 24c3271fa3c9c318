"""AFT-full (Eq. 2) on the PyTorch path: matrix products of shifted exponentials, ``(B, T, D)``.

For a block of rows ``t`` and the keys ``t'`` they see (all, or ``t' <= t`` causal), with
``ew = exp(w - max_t' w)`` ``(R, C)`` and ``ek = exp(k - max_t' k)`` ``(B, C, D)``::

    avg = (ew @ (ek * v)) / den,    den = ew @ ek

Causal mode runs up to 8 row blocks, each shifting by the keys it can see, so keys growing
along the sequence do not flush early rows to zero. The backward is the adjoint of the two
products (``dnum = G / den``, ``dden = -G avg / den``)::

    d(ek v) = ew^T dnum,  dv = ek d(ek v),  dk = ek (ew^T dden + v d(ek v)),
    dw = ew * sum_b (dnum (ek v)^T + dden ek^T)

Registered as the custom ops ``aft::full`` / ``aft::full_backward``; a denominator under
``MIN_SHIFTED_DENOMINATOR`` sends the call to :mod:`aft.ops.exact`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from aft.ops import exact
from aft.ops.casting import autocast_off
from aft.ops.library import connect, fake_flag, flag
from aft.ops.prefix import MIN_SHIFTED_DENOMINATOR, Underflow


def average(k: Tensor, v: Tensor, w: Tensor, causal: bool) -> Tensor:
    """AFT-full's weighted average ``(B, T, D)``, differentiable in ``k``, ``v`` and ``w`` ``(T, T)``."""
    return _full(k, v, w, causal)[0]


def _row_blocks(T: int, causal: bool) -> Iterator[tuple[int, int, int]]:
    """``(r0, r1, c1)``: rows ``[r0, r1)`` see keys ``[0, c1)``."""
    n_blocks = min(8, math.ceil(T / 128)) if causal else 1
    size = math.ceil(T / n_blocks)
    for r0 in range(0, T, size):
        r1 = min(T, r0 + size)
        yield r0, r1, r1 if causal else T


def _exponentials(k: Tensor, w: Tensor, r0: int, r1: int, c1: int, causal: bool) -> tuple[Tensor, Tensor]:
    """``ew`` ``(R, C)`` and ``ek`` ``(B, C, D)`` of one row block."""
    rows = w[r0:r1, :c1]
    if causal:
        future = torch.ones(r1 - r0, c1, dtype=torch.bool, device=w.device).triu(r0 + 1)
        rows = rows.masked_fill(future, -math.inf)
    ew = torch.exp(rows - rows.amax(dim=1, keepdim=True))
    keys = k[:, :c1]
    return ew, torch.exp(keys - keys.amax(dim=1, keepdim=True))


def _forward(k: Tensor, v: Tensor, w: Tensor, causal: bool) -> tuple[Tensor, Tensor]:
    """``(avg, den)``, both ``(B, T, D)``; raises :class:`Underflow`."""
    avgs, dens = [], []
    for r0, r1, c1 in _row_blocks(k.shape[1], causal):
        ew, ek = _exponentials(k, w, r0, r1, c1, causal)
        den = ew @ ek
        if not bool((den >= MIN_SHIFTED_DENOMINATOR).all()):
            raise Underflow
        avgs.append((ew @ (ek * v[:, :c1])) / den)
        dens.append(den)
    return torch.cat(avgs, dim=1), torch.cat(dens, dim=1)


def _backward(
    grad: Tensor, k: Tensor, v: Tensor, w: Tensor, avg: Tensor, den: Tensor, causal: bool
) -> tuple[Tensor, Tensor, Tensor]:
    dk, dv, dw = torch.zeros_like(k), torch.zeros_like(v), torch.zeros_like(w)
    for r0, r1, c1 in _row_blocks(k.shape[1], causal):
        ew, ek = _exponentials(k, w, r0, r1, c1, causal)
        values = v[:, :c1]
        d_num = grad[:, r0:r1] / den[:, r0:r1]
        d_den = -d_num * avg[:, r0:r1]
        ekv = ek * values
        d_ekv = ew.T @ d_num
        dv[:, :c1] += ek * d_ekv
        dk[:, :c1] += ek * (ew.T @ d_den + values * d_ekv)
        dw[r0:r1, :c1] = ew * (d_num @ ekv.transpose(1, 2) + d_den @ ek.transpose(1, 2)).sum(0)
    return dk, dv, dw


def _dense_rows(params: tuple[Tensor, ...], r0: int, r1: int) -> Tensor:
    return params[0][r0:r1].unsqueeze(0)


@torch.library.custom_op("aft::full", mutates_args=())
def _full(k: Tensor, v: Tensor, w: Tensor, causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    with autocast_off(k.device):
        try:
            avg, den = _forward(k, v, w, causal)
            return avg, den, flag(False, k)
        except Underflow:
            return exact.average(k, v, (w,), _dense_rows, causal), torch.ones_like(v), flag(True, k)


@_full.register_fake
def _(k: Tensor, v: Tensor, w: Tensor, causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    return v.new_empty(v.shape), v.new_empty(v.shape), fake_flag(v)


@torch.library.custom_op("aft::full_backward", mutates_args=())
def _full_backward(
    grad: Tensor, k: Tensor, v: Tensor, w: Tensor, avg: Tensor, den: Tensor, was_exact: Tensor, causal: bool
) -> tuple[Tensor, Tensor, Tensor]:
    with autocast_off(k.device):
        if bool(was_exact):
            return exact.average_backward(grad, k, v, (w,), _dense_rows, causal)
        return _backward(grad, k, v, w, avg, den, causal)


connect(_full, _full_backward, tensors=3)
