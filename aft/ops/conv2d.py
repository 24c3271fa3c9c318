"""AFT-conv2d (Eq. 6, non-causal) on the PyTorch path: a depthwise ``conv2d`` plus global sums.

Inputs ``q, v`` ``(B, Y, X, D)``, ``k`` ``(B, Y, X, H)``, kernel ``w`` ``(H, S, S)``; the
result equals AFT-full over the raster-ordered grid with a 2-d Toeplitz bias per head.

Forward. With ``ek = exp(k - max k)`` per head and ``ew = exp(w - max w)`` per head:
inside the kernel a depthwise ``conv2d`` of ``ek v`` and ``ek`` with ``ew``; outside it
sums of the same terms over the rows above and below the kernel and the columns left
and right of it within its rows (:func:`_outside_kernel_sums`), each side scaled against
a common reference.

Backward. Saves ``k``, ``v``, ``w``, the average and the shifted denominator ``den``
``(B, H, Y, X)``, no graph of the convolutions. The forward map is linear in ``ek v``
and ``ek``, so with ``G = dL/davg``::

    dv = ek * A^T(G / den),   dk = sum_(c in head) (v dv) - ek * A^T(sum_(c in head) G avg / den)

where ``A^T`` is its adjoint: a correlation with the flipped kernel inside the box, and
the same outside-box sums (``t'`` is outside ``t``'s box iff ``t`` is outside ``t'``'s).
``dw`` is the depthwise weight gradient of the same two convolutions, times ``ew``.

Registered as the custom ops ``aft::conv2d`` / ``aft::conv2d_backward``; a denominator under
``MIN_SHIFTED_DENOMINATOR`` sends the call to :mod:`aft.ops.exact`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from aft.ops import exact
from aft.ops.casting import autocast_off
from aft.ops.exact import BiasRows
from aft.ops.library import connect, fake_flag, flag
from aft.ops.prefix import MIN_SHIFTED_DENOMINATOR, Underflow, outside_window_sums, per_channel


def average(k: Tensor, v: Tensor, w: Tensor, global_connectivity: bool) -> Tensor:
    """AFT-conv2d's weighted average ``(B, Y, X, D)``, differentiable in ``k``, ``v`` and ``w``."""
    return _conv2d(k, v, reachable_taps(w, v.shape[1], v.shape[2]), global_connectivity)[0]


def reachable_taps(w: Tensor, Y: int, X: int) -> Tensor:
    """The central ``n x n`` taps of ``w`` ``(H, S, S)``, ``n = min(S, 2 max(Y, X) - 1)``: the only ones that
    connect two cells of a ``Y x X`` grid (a 25-wide kernel on a 6 x 6 grid: 121 of its 625 taps).
    The others get no gradient, as in the uncropped sum."""
    S, n = w.shape[-1], 2 * max(Y, X) - 1
    if S <= n:
        return w
    start = (S - n) // 2
    return w[:, start : start + n, start : start + n]


def _forward(k: Tensor, v: Tensor, w: Tensor, global_connectivity: bool) -> tuple[Tensor, Tensor]:
    """``(avg (B, Y, X, D), den (B, H, Y, X))``; raises :class:`Underflow`."""
    H, S, G = w.shape[0], w.shape[-1], v.shape[-1] // w.shape[0]
    ek, ew, inside, outside = _conv2d_factors(k, w, global_connectivity)
    ekv = per_channel(ek, G, dim=1) * v.permute(0, 3, 1, 2)
    num = F.conv2d(ekv, per_channel(ew, G, dim=0), padding=S // 2, groups=v.shape[-1])
    den = F.conv2d(ek, ew, padding=S // 2, groups=H) * inside
    num = num * per_channel(inside, G, 1)
    if global_connectivity:
        den = den + _outside_kernel_sums(ek, S // 2) * outside
        num = num + _outside_kernel_sums(ekv, S // 2) * per_channel(outside, G, 1)
    if not bool((den >= MIN_SHIFTED_DENOMINATOR).all()):
        raise Underflow
    avg = (num / per_channel(den, G, dim=1)).permute(0, 2, 3, 1)
    return avg, den


def _backward(
    grad: Tensor, k: Tensor, v: Tensor, w: Tensor, avg: Tensor, den: Tensor, global_connectivity: bool
) -> tuple[Tensor, Tensor, Tensor]:
    B, Y, X, D = v.shape
    H, S = w.shape[0], w.shape[-1]
    G, r = D // H, S // 2
    ek, ew, inside, outside = _conv2d_factors(k, w, global_connectivity)
    grad_c, avg_c, v_c = (x.permute(0, 3, 1, 2) for x in (grad, avg, v))  # (B, D, Y, X)
    r_grad = grad_c / per_channel(den, G, dim=1)  # dL/dnum
    r_avg = (grad_c * avg_c).reshape(B, H, G, Y, X).sum(2) / den  # -dL/dden
    ew_c = per_channel(ew, G, dim=0)  # (D, 1, S, S)

    def adjoint(x: Tensor, kernel: Tensor, inside: Tensor, outside: Tensor) -> Tensor:
        """``A^T x`` for ``x`` ``(B, channels, Y, X)`` and a ``(channels, 1, S, S)`` kernel."""
        out = F.conv2d(x, kernel.flip(-1, -2), padding=r, groups=x.shape[1]) * inside
        if global_connectivity:
            out = out + _outside_kernel_sums(x, r) * outside
        return out

    dv = per_channel(ek, G, dim=1) * adjoint(r_grad, ew_c, per_channel(inside, G, 1), per_channel(outside, G, 1))
    dk = (v_c * dv).reshape(B, H, G, Y, X).sum(2) - ek * adjoint(r_avg, ew, inside, outside)
    ekv = per_channel(ek, G, dim=1) * v_c
    d_num = torch.nn.grad.conv2d_weight(ekv, ew_c.shape, r_grad, padding=r, groups=D)
    d_den = torch.nn.grad.conv2d_weight(ek, ew.shape, r_avg, padding=r, groups=H)
    dw = (ew * inside[0, :, :, :, None] * (d_num.view(H, G, S, S).sum(1, keepdim=True) - d_den)).squeeze(1)
    return dk.permute(0, 2, 3, 1), dv.permute(0, 2, 3, 1), dw


def _conv2d_factors(k: Tensor, w: Tensor, global_connectivity: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shifted exponentials of AFT-conv2d: ``ek`` ``(B, H, Y, X)``, ``ew`` ``(H, 1, S, S)``, and the
    ``(1, H, 1, 1)`` scales of the terms inside and outside the kernel against a common reference."""
    kc = k.permute(0, 3, 1, 2)
    ek = torch.exp(kc - kc.amax(dim=(2, 3), keepdim=True))
    bias_shift = w.amax(dim=(1, 2), keepdim=True)  # (H, 1, 1)
    ew = torch.exp(w - bias_shift).unsqueeze(1)
    ref = bias_shift.clamp(min=0.0) if global_connectivity else bias_shift
    return ek, ew, torch.exp(bias_shift - ref).unsqueeze(0), torch.exp(-ref).unsqueeze(0)


def _outside_kernel_sums(x: Tensor, radius: int) -> Tensor:
    """``sum x[y', x']`` over the grid cells outside the ``(2r+1)^2`` box around ``(y, x)``.

    Rows above and below the box, plus the cells left and right of it within its rows;
    every term is added, none subtracted.

    Args:
        x: ``(B, C, Y, X)``, non-negative.

    Returns:
        ``(B, C, Y, X)``.
    """
    size = 2 * radius + 1
    above_below = outside_window_sums(x.sum(dim=-1), radius + 1, causal=False, dim=-1)  # (B, C, Y)
    left_right = outside_window_sums(x, radius + 1, causal=False, dim=-1)
    band = F.avg_pool2d(left_right, (size, 1), stride=1, padding=(radius, 0)) * size
    return above_below.unsqueeze(-1) + band


def _grid_rows(Y: int, X: int, global_connectivity: bool) -> BiasRows:
    """Rows of the 2-d Toeplitz bias over the raster-ordered grid from the kernel ``params[0]``,
    for :mod:`aft.ops.exact`: the kernel inside, 0 (global connectivity) or ``-inf`` outside."""

    def rows(params: tuple[Tensor, ...], r0: int, r1: int) -> Tensor:
        w = params[0]
        S = w.shape[-1]
        cells = torch.arange(Y * X, device=w.device)
        ys, xs = cells.div(X, rounding_mode="floor"), cells % X
        dy = ys.unsqueeze(0) - ys[r0:r1].unsqueeze(1) + S // 2
        dx = xs.unsqueeze(0) - xs[r0:r1].unsqueeze(1) + S // 2
        inside = (dy >= 0) & (dy < S) & (dx >= 0) & (dx < S)
        values = w[:, dy.clamp(0, S - 1), dx.clamp(0, S - 1)]
        return values.masked_fill(~inside, 0.0 if global_connectivity else -math.inf)

    return rows


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1, x.shape[-1])


@torch.library.custom_op("aft::conv2d", mutates_args=())
def _conv2d(k: Tensor, v: Tensor, w: Tensor, global_connectivity: bool) -> tuple[Tensor, Tensor, Tensor]:
    B, Y, X, D = v.shape
    with autocast_off(k.device):
        try:
            avg, den = _forward(k, v, w, global_connectivity)
            return avg.contiguous(), den.contiguous(), flag(False, k)
        except Underflow:
            avg = exact.average(_flat(k), _flat(v), (w,), _grid_rows(Y, X, global_connectivity), False)
            return avg.reshape(v.shape), k.new_ones(B, k.shape[-1], Y, X), flag(True, k)


@_conv2d.register_fake
def _(k: Tensor, v: Tensor, w: Tensor, global_connectivity: bool) -> tuple[Tensor, Tensor, Tensor]:
    B, Y, X, D = v.shape
    return v.new_empty(v.shape), k.new_empty(B, k.shape[-1], Y, X), fake_flag(k)


@torch.library.custom_op("aft::conv2d_backward", mutates_args=())
def _conv2d_backward(
    grad: Tensor,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    avg: Tensor,
    den: Tensor,
    was_exact: Tensor,
    global_connectivity: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    B, Y, X, D = v.shape
    with autocast_off(k.device):
        if bool(was_exact):
            rows = _grid_rows(Y, X, global_connectivity)
            dk, dv, dw = exact.average_backward(_flat(grad), _flat(k), _flat(v), (w,), rows, False)
            return dk.reshape(k.shape), dv.reshape(v.shape), dw
        dk, dv, dw = _backward(grad, k, v, w, avg, den, global_connectivity)
        return dk.contiguous(), dv.contiguous(), dw


connect(_conv2d, _conv2d_backward, tensors=3)
