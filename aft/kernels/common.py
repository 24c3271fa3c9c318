"""What the banded and the AFT-conv2d kernels share: pointer groups, tile loads and stores, launch shape.

Pointer groups. A sweep reads its *terms* (:mod:`aft.kernels.online`) from one of two groups of
arrays, each a named tuple of pointers that a kernel takes as one argument:

* :class:`Keys` ``(k, v)``, read by the forward pass: the terms ``(K[t'], 1, V[t'])``;
* :class:`Queries` ``(q, out, lse, dout)``, read by the backward pass: the terms
  ``(-lse[t], G[t], delta[t])`` with ``G = dout * sigmoid(q)`` (``dout`` without the gate)
  and ``delta = dout * out`` (:mod:`aft.kernels.banded`, "Backward");

and the backward pass writes :class:`Gradients` ``(q, k, v, bias)``. A pointer that a launch
does not use (the gate ``q`` of an ungated call, ``lse`` when no backward will run, a gradient
not asked for, a state buffer a sweep does not read) is ``None``, which Triton takes as a
``constexpr``: a forward launch takes no backward array and no placeholder buffer.

Shapes: ``k`` ``(B, T, HK)``, every other array of a group ``(B, T, D)``, all row-major;
channel ``c`` reads key channel ``c // GROUP`` (``GROUP = D // HK``). :func:`keys_at` and
:func:`queries_at` move a group on by ``n`` positions (to a batch element, to a grid row).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from aft.kernels.online import NEG


class Keys(NamedTuple):
    """The arrays of the forward terms: ``k`` ``(B, T, HK)``, ``v`` ``(B, T, D)``."""

    k: Tensor
    v: Tensor


class Queries(NamedTuple):
    """The arrays of the backward terms, each ``(B, T, D)``: the gate ``q`` (``None`` without
    it), the output ``out``, its float32 log-normalizer ``lse`` and the incoming gradient ``dout``."""

    q: Tensor | None
    out: Tensor
    lse: Tensor
    dout: Tensor


class Gradients(NamedTuple):
    """What the backward pass writes: ``q`` (``None`` without the gate), ``k`` (per channel,
    ``(B, T, D)``), ``v`` and, shared by the batch, ``bias`` (``None`` unless asked for)."""

    q: Tensor | None
    k: Tensor
    v: Tensor
    bias: Tensor | None


# ------------------------------------------------------------------------------ kernels


@triton.jit
def program(D, BLOCK_D: tl.constexpr):
    """``(batch index, (BLOCK_D,) channels)`` of this program; ``program_id(0)`` counts
    ``(batch element, channel block)`` pairs."""
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(D, BLOCK_D)
    return (pid // n_blocks).to(tl.int64), (pid % n_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)


@triton.jit
def moved(ptr, n):
    """``ptr + n``; an absent pointer (``None``) stays absent."""
    if ptr is not None:
        ptr += n
    return ptr


@triton.jit
def keys_at(keys, n, D, HK):
    """:class:`Keys` moved on by ``n`` positions."""
    return Keys(keys.k + n * HK, keys.v + n * D)


@triton.jit
def queries_at(queries, n, D):
    """:class:`Queries` moved on by ``n`` positions."""
    step = n * D
    return Queries(moved(queries.q, step), queries.out + step, queries.lse + step, queries.dout + step)


@triton.jit
def terms_at(source, n, D, HK, QUERIES: tl.constexpr):
    """:class:`Queries` (``QUERIES``) or :class:`Keys` moved on by ``n`` positions."""
    if QUERIES:
        source = queries_at(source, n, D)
    else:
        source = keys_at(source, n, D, HK)
    return source


@triton.jit
def gradients_at(grads, n, D):
    """:class:`Gradients` moved on by ``n`` positions (the bias gradient stays: the batch shares it)."""
    step = n * D
    return Gradients(moved(grads.q, step), grads.k + step, grads.v + step, grads.bias)


@triton.jit
def tile(ptr, rows, cols, T, width, other):
    """``x[rows, cols]`` of a row-major ``(T, width)`` array as float32, ``other`` outside.

    ``other`` is applied in float32: as a float16 load's ``other``, ``NEG`` would be ``-inf``.
    """
    mask = ((rows >= 0) & (rows < T))[:, None] & (cols < width)[None, :]
    x = tl.load(ptr + rows[:, None] * width + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return tl.where(mask, x, other)


@triton.jit
def key_terms(keys, rows, chans, T, D, HK, GROUP: tl.constexpr):
    """Forward terms of ``rows``: ``(K[t'], 1, V[t'])``; the empty term outside ``[0, T)``."""
    logit = tile(keys.k, rows, chans // GROUP, T, HK, NEG)
    inside = ((rows >= 0) & (rows < T))[:, None] & (chans < D)[None, :]
    return logit, inside.to(tl.float32), tile(keys.v, rows, chans, T, D, 0.0)


@triton.jit
def query_terms(queries, rows, chans, T, D, GATED: tl.constexpr):
    """Backward terms of ``rows``: ``(-lse[t], G[t], delta[t])``."""
    neg_lse = -tile(queries.lse, rows, chans, T, D, -NEG)
    dout = tile(queries.dout, rows, chans, T, D, 0.0)
    d_avg = dout
    if GATED:
        d_avg = dout * tl.sigmoid(tile(queries.q, rows, chans, T, D, 0.0))
    return neg_lse, d_avg, dout * tile(queries.out, rows, chans, T, D, 0.0)


@triton.jit
def terms(source, rows, chans, T, D, HK, GROUP: tl.constexpr, GATED: tl.constexpr, QUERIES: tl.constexpr):
    """Query terms (``QUERIES``, ``source`` :class:`Queries`) or key terms (:class:`Keys`) of ``rows``."""
    if QUERIES:
        logit, x, y = query_terms(source, rows, chans, T, D, GATED)
    else:
        logit, x, y = key_terms(source, rows, chans, T, D, HK, GROUP)
    return logit, x, y


@triton.jit
def bias_column(bias_ptr, rows, chans, col, T, D, W, GROUP: tl.constexpr, PER_HEAD: tl.constexpr):
    """Column ``col`` of a row-major bias with ``W`` columns, as float32: of rows ``rows``
    (positions) ``(BLOCK_T, 1)``, or ``PER_HEAD`` of the key heads of ``chans`` ``(1, BLOCK_D)``."""
    if PER_HEAD:
        w = tl.load(bias_ptr + (chans // GROUP) * W + col, mask=chans < D, other=0.0)
        w = w.to(tl.float32)[None, :]
    else:
        w = tl.load(bias_ptr + rows * W + col, mask=(rows >= 0) & (rows < T), other=0.0)
        w = w.to(tl.float32)[:, None]
    return w


@triton.jit
def store_output(q_ptr, out_ptr, lse_ptr, offs, mask, m, a, s, GATED: tl.constexpr, STORE_LSE: tl.constexpr):
    """Store ``out = sigmoid(q) * s / a`` (Eq. 2) and, if ``STORE_LSE``, ``lse = m + log(a)``
    at ``offs`` from a forward state ``(m, a, s)``; ``a = 0`` (padding) reads as 1."""
    a = tl.where(a > 0, a, 1.0)
    avg = s / a
    if GATED:
        avg = avg * tl.sigmoid(tl.load(q_ptr + offs, mask=mask, other=0.0).to(tl.float32))
    tl.store(out_ptr + offs, avg.to(out_ptr.dtype.element_ty), mask=mask)
    if STORE_LSE:
        tl.store(lse_ptr + offs, m + tl.log(a), mask=mask)


@triton.jit
def add_band_term(dk, dv, p, value, d_avg, delta):
    """Add one band term ``p = p[t, t']`` per key row: ``dv += p G[t]``, ``dk += r`` with
    ``r = p (G[t] V[t'] - delta[t])``; ``r`` is also returned for the bias gradient."""
    r = p * (d_avg * value - delta)
    return dk + r, dv + p * d_avg, r


@triton.jit
def store_gradients(queries, grads, offs, mask, dk, dv, GATED: tl.constexpr):
    """Store ``dk``, ``dv`` and, if ``GATED``, ``dq = dout * out * (1 - sigmoid(q))`` at ``offs``."""
    tl.store(grads.k + offs, dk.to(grads.k.dtype.element_ty), mask=mask)
    tl.store(grads.v + offs, dv.to(grads.v.dtype.element_ty), mask=mask)
    if GATED:
        gate = tl.sigmoid(tl.load(queries.q + offs, mask=mask, other=0.0).to(tl.float32))
        grad = tl.load(queries.dout + offs, mask=mask, other=0.0).to(tl.float32)
        out = tl.load(queries.out + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(grads.q + offs, (grad * out * (1.0 - gate)).to(grads.q.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------ launch


@dataclass(frozen=True)
class Blocks:
    """Launch shape: ``t`` rows per tile, ``d`` channels per program, row ``chunks`` swept
    in parallel per channel block (``None``: enough to fill the device), ``warps``, and
    whether a band over positions (AFT-local) is summed as ``t x t`` tile ``products``
    (``tl.dot``; ``t, d >= 16``) rather than term by term. The AFT-conv2d kernels take only
    ``d`` and ``warps`` (a tile holds a whole grid row)."""

    t: int = 32
    d: int = 32
    chunks: int | None = None
    warps: int = 4
    products: bool = False


def on_device(t: Tensor) -> contextlib.AbstractContextManager:
    """``t``'s CUDA device made current for the launches (Triton launches on the current device)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
