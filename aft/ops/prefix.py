"""Sums over whole sequences in float64: the part of every AFT variant where the bias is 0.

Outside the window (AFT-local, AFT-conv) and everywhere for causal AFT-simple, Eq. 2's sums
are ``sum_t' exp(k[t']) x[t']`` over ``t' <= t - window`` (and ``t' >= t + window``): prefix
(and suffix) sums ``(B, T, C)`` of ``exp(k - max_t k)`` in float64, one shift per channel,
exact unless a sum lies ``MAX_KEY_RANGE`` = 500 nats below its channel's largest key. The
backward pass takes the same sums over queries, weighted by ``exp(-lse[t])``.

:class:`Underflow` is what the fast paths raise when a check on their sums fails; the
operator then recomputes the call with :mod:`aft.ops.exact`.
"""

from __future__ import annotations

import torch
from torch import Tensor

# A computed (shifted) denominator below this means the largest term lay ~57 nats under
# its shift: float32 products may have flushed to zero, so recompute exactly.
MIN_SHIFTED_DENOMINATOR = 1e-25
# Largest gap (nats) between a channel's largest key and a sum of the global float64 scans
# (:func:`global_exp`); wider-spread keys take the exact path.
MAX_KEY_RANGE = 500.0
NEG = -1e30  # "minus infinity" for padded keys that keeps x - max finite


class Underflow(Exception):
    """A shifted denominator fell below ``MIN_SHIFTED_DENOMINATOR``: recompute exactly."""


def global_exp(k: Tensor) -> tuple[Tensor, Tensor]:
    """``exp(k - max_t k)`` in float64 ``(B, T, C)`` and its shift ``(B, 1, C)``, one per channel.

    Every term is ``<= 1``. float64 holds ``e^-708``, so a sum whose largest term is within
    ``MAX_KEY_RANGE`` of the shift is exact to float32 precision, and a term it drops to 0
    was below ``e^-208`` of that sum. Callers check the range on their sums.
    """
    key_max = k.amax(dim=1, keepdim=True).double()
    return torch.exp(k.double() - key_max), key_max


def check_key_range(lse: Tensor, key_max: Tensor) -> None:
    """Raise :class:`Underflow` if a log-normalizer lies more than ``MAX_KEY_RANGE`` under
    its channel's key maximum: past the reach of the float64 sums of :func:`global_exp`."""
    if not bool((lse - key_max >= -MAX_KEY_RANGE).all()):
        raise Underflow


def query_factors(k: Tensor, lse: Tensor) -> tuple[Tensor, Tensor]:
    """``exp(k[t'] - lse[t])`` as ``ek[t'] * weight[t]``, both float64 ``(B, T, Hk)``.

    ``ek = exp(k - max k)`` (:func:`global_exp`) and ``weight = exp(max k - lse)``; the
    forward pass checked ``max k - lse <= MAX_KEY_RANGE``, so neither overflows.
    """
    ek, key_max = global_exp(k)
    return ek, torch.exp(key_max - lse.double())


def query_sums(x: Tensor, ek: Tensor, weight: Tensor, window: int, causal: bool) -> Tensor:
    """``exp(k[t']) sum_t exp(-lse[t]) x[t]`` over the queries ``t`` that take key ``t'`` with bias 0.

    Those are ``t >= t' + window`` (and ``t <= t' - window`` unless causal); causal
    ``window = 0`` gives all ``t >= t'``. float64 suffix (and prefix) sums.

    Args:
        x: ``(B, T, D)`` or per key head ``(B, T, Hk)``.
        ek, weight: ``(B, T, Hk)`` from :func:`query_factors`.

    Returns:
        ``x``'s shape and dtype.
    """
    G = x.shape[-1] // ek.shape[-1]
    sums = outside_window_sums((per_channel(weight, G) * x).flip(1), window, causal).flip(1)
    return (per_channel(ek, G) * sums).to(x.dtype)


def per_channel(x: Tensor, group: int, dim: int = -1) -> Tensor:
    """Repeat each key head ``group`` times along ``dim`` so it lines up with ``D`` channels."""
    return x if group == 1 else x.repeat_interleave(group, dim=dim)


def outside_window_sums(x: Tensor, window: int, causal: bool, dim: int = 1) -> Tensor:
    """``sum x[t']`` over ``t' <= t - window`` (and ``t' >= t + window`` unless causal), along ``dim``.

    Prefix (and suffix) sums; ``window = 0`` (causal) is the inclusive prefix sum. Every term
    is added, none subtracted, so the result is exact to rounding for non-negative ``x``.
    """
    prefix = _shift(x.cumsum(dim), window, dim)
    if causal:
        return prefix
    return prefix + _shift(x.flip(dim).cumsum(dim).flip(dim), -window, dim)


def _shift(x: Tensor, n: int, dim: int) -> Tensor:
    """``out[i] = x[i - n]`` along ``dim`` (``n > 0`` moves toward the end), 0 where ``i - n`` is outside."""
    length = x.shape[dim]
    if n == 0:
        return x
    if abs(n) >= length:
        return torch.zeros_like(x)
    size = list(x.shape)
    size[dim] = abs(n)
    zeros = x.new_zeros(size)
    if n > 0:
        return torch.cat([zeros, x.narrow(dim, 0, length - n)], dim)
    return torch.cat([x.narrow(dim, -n, length + n), zeros], dim)
