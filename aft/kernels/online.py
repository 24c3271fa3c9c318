"""Online log-sum-exp states: the numerics shared by every AFT kernel.

A *state* ``(m, a, b)`` stands for the two sums ``sum_i exp(l_i) x_i`` and
``sum_i exp(l_i) y_i`` over a set of terms, written as ``exp(m) * a`` and ``exp(m) * b``
with ``m`` the largest logit ``l_i`` seen: every stored factor is ``exp`` of a
non-positive number, so keys and biases of any magnitude neither overflow nor, as long as
one term dominates, underflow to ``0/0``.

In the forward pass the terms are keys: ``l = k[t'] (+ w[t, t'])``, ``x = 1``,
``y = v[t']``, so ``b / a`` is the weighted average of Eq. 2 and ``m + log(a)`` its
log-normalizer. In the backward pass they are queries: ``l = -lse[t]``, ``x = dL/davg[t]``,
``y = dL/davg[t] * avg[t]`` (see :mod:`aft.kernels.banded`).

The empty state is ``(NEG, 0, 0)``; ``NEG`` is finite so that ``NEG - NEG`` is 0, not NaN.
All functions act elementwise on tensors of any (broadcastable) shape.
"""

from __future__ import annotations

import triton
import triton.language as tl

NEG = tl.constexpr(-1.0e30)


@triton.jit
def merge(m1, a1, b1, m2, a2, b2):
    """The state of the union of two disjoint sets of terms (associative, commutative)."""
    m = tl.maximum(m1, m2)
    e1 = tl.exp(m1 - m)
    e2 = tl.exp(m2 - m)
    return m, a1 * e1 + a2 * e2, b1 * e1 + b2 * e2


@triton.jit
def push(m, a, b, logit, x, y):
    """Add one term ``exp(logit) * (x, y)`` with a single ``exp``.

    ``exp(-|logit - m|)`` rescales the old sums when the new term is the new maximum and
    weights the new term otherwise.
    """
    d = logit - m
    e = tl.exp(-tl.abs(d))
    grows = d > 0
    a = tl.where(grows, a * e + x, a + e * x)
    b = tl.where(grows, b * e + y, b + e * y)
    return tl.where(grows, logit, m), a, b


@triton.jit
def empty_like(x):
    """The empty state, in float32 tensors of ``x``'s shape."""
    zero = tl.zeros_like(x).to(tl.float32)
    return zero + NEG, zero, zero


@triton.jit
def scan_tile(cm, ca, cb, m, a, b, REVERSE: tl.constexpr):
    """Inclusive scan of a tile of terms along its rows, on top of a carried state.

    Args:
        cm, ca, cb: ``(BLOCK_D,)`` carry, the state of the terms before the tile (after it
            when ``REVERSE``).
        m, a, b: ``(BLOCK_T, BLOCK_D)``, one term per row.

    Returns:
        The ``(BLOCK_T, BLOCK_D)`` state of each row (the carry, the rows before it and
        itself; with ``REVERSE`` the rows after it) and the new ``(BLOCK_D,)`` carry, which
        also holds the whole tile.
    """
    tm, ta, tb = total(m, a, b)
    cm2, ca2, cb2 = merge(cm, ca, cb, tm, ta, tb)
    m, a, b = tl.associative_scan((m, a, b), 0, merge, reverse=REVERSE)
    m, a, b = merge(cm[None, :], ca[None, :], cb[None, :], m, a, b)
    return m, a, b, cm2, ca2, cb2


@triton.jit
def total(m, a, b):
    """The ``(BLOCK_D,)`` state of all rows of a tile of terms ``(BLOCK_T, BLOCK_D)``."""
    top = tl.max(m, 0)
    e = tl.exp(m - top[None, :])
    return top, tl.sum(a * e, 0), tl.sum(b * e, 0)


@triton.jit
def load(ptr, index, chans, D):
    """The ``(BLOCK_D,)`` state stored at ``ptr[index]`` of a ``(n, 3, D)`` float32 array."""
    base = ptr + index * 3 * D + chans
    mask = chans < D
    return (
        tl.load(base, mask=mask, other=NEG),
        tl.load(base + D, mask=mask, other=0.0),
        tl.load(base + 2 * D, mask=mask, other=0.0),
    )


@triton.jit
def store(ptr, index, chans, D, m, a, b):
    """Store a ``(BLOCK_D,)`` state at ``ptr[index]`` of a ``(n, 3, D)`` float32 array."""
    base = ptr + index * 3 * D + chans
    mask = chans < D
    tl.store(base, m, mask=mask)
    tl.store(base + D, a, mask=mask)
    tl.store(base + 2 * D, b, mask=mask)


@triton.jit
def fold(ptr, first, stop, chans, D):
    """The merged state of ``ptr[first:stop]`` of a ``(n, 3, D)`` float32 array."""
    m, a, b = empty_like(chans)
    for index in range(first, stop):
        sm, sa, sb = load(ptr, index, chans, D)
        m, a, b = merge(m, a, b, sm, sa, sb)
    return m, a, b
