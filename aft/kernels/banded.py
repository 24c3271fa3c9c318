"""AFT with a banded position bias and global connectivity, forward and backward in Triton.

One kernel family computes AFT-simple (Eq. 5), AFT-local with a banded bias (Eq. 4, from
the factors of Eq. 7 or a dense ``w``) and AFT-conv1d (Eq. 6 with a Toeplitz bias per
head). For query ``t`` and channel ``c`` (Eq. 2)::

    Y[t, c] = sigmoid(Q[t, c]) * sum_t' exp(K[t', h] + w[t, t']) V[t', c] / sum_t' exp(K[t', h] + w[t, t'])

with ``h = c // (D // Hk)`` the key head of channel ``c`` and a bias that is a *band* in
``o = t - t'`` (``band_lo <= o < window``; ``band_lo = 0`` causal, ``1 - window`` otherwise)
and, with global connectivity, 0 outside it (``-inf`` without). Causal sums stop at
``t' <= t``.

Shapes: ``q, v, out``: ``(B, T, D)``; ``k``: ``(B, T, Hk)``, ``Hk | D``; the band
``bias[r, o - band_lo]``: ``(T, W)`` (row ``r = t``, AFT-local) or ``(Hk, W)`` (row ``r = h``,
AFT-conv1d), ``W = window - band_lo``.

Algorithm. Each program owns a block of channels of one batch element and one chunk of
row tiles, and sweeps its tiles in order: ascending in the forward pass, descending in the
backward pass. It keeps an online log-sum-exp *state* (:mod:`aft.kernels.online`) of the
terms outside the window on its side of the sweep (bias 0: a running carry plus an
in-tile scan), adds the other side from per-tile summaries written beforehand by a sweep in
the opposite direction (non-causal only), and adds the band term by term, each with the
exact running maximum, or, for a band over positions (AFT-local) with ``Blocks.products``,
as matrix products of tiles (section "the band as tile products" below). Chunks after the
first start from the merged summaries of the chunks before them. Nothing ``T x T`` or
``T x window x D`` is formed; every pass reads and writes ``O(T D)`` bytes plus ``O(T W)``
of band.

Backward. Autograd keeps the inputs, the gated output ``out`` and the per-``(t, c)``
log-normalizer ``lse`` (float32). With ``p[t, t'] = exp(K[t'] + w[t, t'] - lse[t])``,
``g = dL/dout``, ``G = g * sigmoid(q)`` (the gradient of the average) and
``delta = g * out``::

    dV[t'] = sum_t p[t, t'] G[t]
    dK[t'] = sum_t p[t, t'] (G[t] V[t'] - delta[t])     (summed over the channels of a head)
    dw[t, t'] = sum_c p[t, t'] (G[t] V[t'] - delta[t])   (band only; atomic adds)
    dQ[t] = g[t] out[t] (1 - sigmoid(Q[t]))

The sums over ``t`` outside the band are states of the terms ``(-lse[t], G[t], delta[t])``
swept in the other direction, multiplied by ``exp(K[t'] + m)``: an exponent ``<= 0``
because ``lse[t] >= K[t']`` whenever ``t'`` is in row ``t``'s sum. Everything is computed in
float32 whatever the input dtype; ``out`` has ``v``'s dtype, each gradient its input's.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from aft.kernels import online
from aft.kernels.online import NEG
from aft.ops.library import connect

# ------------------------------------------------------------------------------ kernels


@triton.jit
def _program(D, BLOCK_D: tl.constexpr):
    """``(batch index, (BLOCK_D,) channels)`` of this program."""
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(D, BLOCK_D)
    return (pid // n_blocks).to(tl.int64), (pid % n_blocks) * BLOCK_D + tl.arange(0, BLOCK_D)


@triton.jit
def _at_batch(b, q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, dout_ptr, T, D, HK):
    """The ``(B, T, D)`` pointers (``k``: ``(B, T, HK)``) moved to batch element ``b``."""
    n = b * T
    return q_ptr + n * D, k_ptr + n * HK, v_ptr + n * D, out_ptr + n * D, lse_ptr + n * D, dout_ptr + n * D


@triton.jit
def _tile(ptr, rows, cols, T, width, other):
    """``x[rows, cols]`` of a row-major ``(T, width)`` array as float32, ``other`` outside.

    ``other`` is applied in float32: as a float16 load's ``other``, ``NEG`` would be ``-inf``.
    """
    mask = ((rows >= 0) & (rows < T))[:, None] & (cols < width)[None, :]
    x = tl.load(ptr + rows[:, None] * width + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return tl.where(mask, x, other)


@triton.jit
def _key_terms(k_ptr, v_ptr, keys, chans, T, D, HK, GROUP: tl.constexpr):
    """Forward terms of ``keys``: ``(K[t'], 1, V[t'])``; the empty term outside ``[0, T)``."""
    logit = _tile(k_ptr, keys, chans // GROUP, T, HK, NEG)
    inside = ((keys >= 0) & (keys < T))[:, None] & (chans < D)[None, :]
    return logit, inside.to(tl.float32), _tile(v_ptr, keys, chans, T, D, 0.0)


@triton.jit
def _query_terms(q_ptr, out_ptr, lse_ptr, dout_ptr, queries, chans, T, D, GATED: tl.constexpr):
    """Backward terms of ``queries``: ``(-lse[t], G[t], delta[t])`` (module docstring)."""
    neg_lse = -_tile(lse_ptr, queries, chans, T, D, -NEG)
    dout = _tile(dout_ptr, queries, chans, T, D, 0.0)
    d_avg = dout
    if GATED:
        d_avg = dout * tl.sigmoid(_tile(q_ptr, queries, chans, T, D, 0.0))
    return neg_lse, d_avg, dout * _tile(out_ptr, queries, chans, T, D, 0.0)


@triton.jit
def _terms(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, dout_ptr, rows, chans, T, D, HK,
           GROUP: tl.constexpr, GATED: tl.constexpr, QUERIES: tl.constexpr):
    """Query terms (backward) or key terms (forward) of ``rows``."""
    if QUERIES:
        logit, x, y = _query_terms(q_ptr, out_ptr, lse_ptr, dout_ptr, rows, chans, T, D, GATED)
    else:
        logit, x, y = _key_terms(k_ptr, v_ptr, rows, chans, T, D, HK, GROUP)
    return logit, x, y


@triton.jit
def _band(bias_ptr, rows, chans, col, T, D, W, GROUP: tl.constexpr, PER_HEAD: tl.constexpr):
    """Band column ``col`` of query ``rows``: ``(BLOCK_T, 1)``, or ``(1, BLOCK_D)`` per head."""
    if PER_HEAD:
        w = tl.load(bias_ptr + (chans // GROUP) * W + col, mask=chans < D, other=0.0)
        w = w.to(tl.float32)[None, :]
    else:
        w = tl.load(bias_ptr + rows * W + col, mask=(rows >= 0) & (rows < T), other=0.0)
        w = w.to(tl.float32)[:, None]
    return w


@triton.jit
def _store_output(q_ptr, out_ptr, lse_ptr, offs, mask, m, a, s, GATED: tl.constexpr, STORE_LSE: tl.constexpr):
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
def _store_gradients(q_ptr, out_ptr, dout_ptr, dq_ptr, dk_ptr, dv_ptr, offs, mask, dk, dv, GATED: tl.constexpr):
    """Store ``dk``, ``dv`` and, if ``GATED``, ``dq = dout * out * (1 - sigmoid(q))`` at ``offs``."""
    tl.store(dk_ptr + offs, dk.to(dk_ptr.dtype.element_ty), mask=mask)
    tl.store(dv_ptr + offs, dv.to(dv_ptr.dtype.element_ty), mask=mask)
    if GATED:
        gate = tl.sigmoid(tl.load(q_ptr + offs, mask=mask, other=0.0).to(tl.float32))
        grad = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        out = tl.load(out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dq_ptr + offs, (grad * out * (1.0 - gate)).to(dq_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_band_term(dk, dv, p, value, d_avg, delta):
    """Add one band term ``p = p[t, t']`` per key row: ``dv += p G[t]``, ``dk += r`` with
    ``r = p (G[t] V[t'] - delta[t])`` (module docstring); ``r`` is also returned for ``dw``."""
    r = p * (d_avg * value - delta)
    return dk + r, dv + p * d_avg, r


@triton.jit
def _outside(cm, ca, cb, om, oa, ob, other_tiles, tile, rows, main_shift, other_shift,
             q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, dout_ptr, chans, T, D, HK,
             GROUP: tl.constexpr, GATED: tl.constexpr, BACKWARD: tl.constexpr, CAUSAL: tl.constexpr):
    """State of each row's terms outside the window (bias 0), and the updated carry.

    Terms on the sweep's side (``rows + main_shift``) come from the carry ``c*`` and an
    in-tile scan; unless causal, those on the other side (``rows + other_shift``) from the
    tile's summary, the chunks after this one (``o*``) and an in-tile scan the other way.
    """
    logit, x, y = _terms(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, dout_ptr, rows + main_shift,
                         chans, T, D, HK, GROUP, GATED, BACKWARD)
    m, a, b, cm, ca, cb = online.scan_tile(cm, ca, cb, logit, x, y, BACKWARD)
    if not CAUSAL:
        tm, ta, tb = online.load(other_tiles, tile, chans, D)
        tm, ta, tb = online.merge(tm, ta, tb, om, oa, ob)
        logit, x, y = _terms(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, dout_ptr, rows + other_shift,
                             chans, T, D, HK, GROUP, GATED, BACKWARD)
        m2, a2, b2, _, _, _ = online.scan_tile(tm, ta, tb, logit, x, y, not BACKWARD)
        m, a, b = online.merge(m, a, b, m2, a2, b2)
    return m, a, b, cm, ca, cb


@triton.jit
def _chunk_start(main_chunks, other_chunks, chunk, n_chunks, chans, D,
                 BACKWARD: tl.constexpr, CAUSAL: tl.constexpr, GLOBAL: tl.constexpr):
    """Carries entering a chunk: terms of the chunks before it in sweep order (``c*``) and,
    unless causal, of the chunks after it (``o*``)."""
    cm, ca, cb = online.empty_like(chans)
    om, oa, ob = cm, ca, cb
    if GLOBAL:
        if BACKWARD:
            cm, ca, cb = online.fold(main_chunks, chunk + 1, n_chunks, chans, D)
        else:
            cm, ca, cb = online.fold(main_chunks, 0, chunk, chans, D)
        if not CAUSAL:
            if BACKWARD:
                om, oa, ob = online.fold(other_chunks, 0, chunk, chans, D)
            else:
                om, oa, ob = online.fold(other_chunks, chunk + 1, n_chunks, chans, D)
    return cm, ca, cb, om, oa, ob


@triton.jit
def _summary_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, dout_ptr, tiles_ptr, chunks_ptr,
    T, D, HK, shift, tiles_per_chunk,
    GROUP: tl.constexpr, GATED: tl.constexpr, QUERIES: tl.constexpr, REVERSE: tl.constexpr,
    STORE_TILES: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Summaries of the terms at ``rows + shift``, swept per chunk (descending if ``REVERSE``).

    ``chunks[b, j]``: the state of all terms of chunk ``j``. ``tiles[b, n]`` (if
    ``STORE_TILES``): the state of the terms of the tiles of ``n``'s chunk swept before
    ``n``. Both ``(B, n, 3, D)`` float32.
    """
    b, chans = _program(D, BLOCK_D)
    chunk = tl.program_id(1)
    n_tiles = tl.cdiv(T, BLOCK_T)
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, dout_ptr = _at_batch(b, q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, dout_ptr,
                                                                T, D, HK)
    tiles_ptr += b * n_tiles * 3 * D
    chunks_ptr += b * tl.num_programs(1) * 3 * D
    first = chunk * tiles_per_chunk
    count = tl.minimum(tiles_per_chunk, n_tiles - first)
    cm, ca, cb = online.empty_like(chans)
    for i in range(count):
        if REVERSE:
            tile = first + count - 1 - i
        else:
            tile = first + i
        if STORE_TILES:
            online.store(tiles_ptr, tile, chans, D, cm, ca, cb)
        rows = tile * BLOCK_T + tl.arange(0, BLOCK_T) + shift
        logit, x, y = _terms(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, dout_ptr, rows, chans, T, D, HK,
                             GROUP, GATED, QUERIES)
        tm, ta, tb = online.total(logit, x, y)
        cm, ca, cb = online.merge(cm, ca, cb, tm, ta, tb)
    online.store(chunks_ptr, chunk, chans, D, cm, ca, cb)


@triton.jit
def _forward_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, out_ptr, lse_ptr, main_chunks, other_tiles, other_chunks,
    T, D, HK, window, band_lo, W, main_shift, other_shift, tiles_per_chunk,
    GROUP: tl.constexpr, CAUSAL: tl.constexpr, GATED: tl.constexpr, GLOBAL: tl.constexpr,
    PER_HEAD: tl.constexpr, STORE_LSE: tl.constexpr, PRODUCTS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``out = sigmoid(q) * avg`` and (``STORE_LSE``) ``lse``, sweeping the chunk's tiles in
    ascending order; the band term by term, or (``PRODUCTS``) as tile products."""
    b, chans = _program(D, BLOCK_D)
    chunk = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    n_tiles = tl.cdiv(T, BLOCK_T)
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, _ = _at_batch(b, q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, out_ptr, T, D, HK)
    other_tiles += b * n_tiles * 3 * D
    cm, ca, cb, om, oa, ob = _chunk_start(main_chunks + b * n_chunks * 3 * D, other_chunks + b * n_chunks * 3 * D,
                                          chunk, n_chunks, chans, D, False, CAUSAL, GLOBAL)
    first = chunk * tiles_per_chunk
    for tile in range(first, tl.minimum(first + tiles_per_chunk, n_tiles)):
        rows = tile * BLOCK_T + tl.arange(0, BLOCK_T)
        if GLOBAL:
            m, a, s, cm, ca, cb = _outside(cm, ca, cb, om, oa, ob, other_tiles, tile, rows, main_shift, other_shift,
                                           q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, out_ptr, chans, T, D, HK,
                                           GROUP, GATED, False, CAUSAL)
        else:
            m, a, s = online.empty_like(tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32))
        if PRODUCTS:
            m, a, s = _band_products_forward(m, a, s, k_ptr, v_ptr, bias_ptr, tile * BLOCK_T, chans,
                                             T, D, HK, window, band_lo, W, GROUP, PRECISION, BLOCK_T)
        else:
            for offset in range(band_lo, window):
                logit, x, y = _key_terms(k_ptr, v_ptr, rows - offset, chans, T, D, HK, GROUP)
                bias = _band(bias_ptr, rows, chans, offset - band_lo, T, D, W, GROUP, PER_HEAD)
                m, a, s = online.push(m, a, s, logit + bias, x, y)
        mask = (rows < T)[:, None] & (chans < D)[None, :]
        _store_output(q_ptr, out_ptr, lse_ptr, rows[:, None] * D + chans[None, :], mask, m, a, s, GATED, STORE_LSE)


@triton.jit
def _backward_kernel(
    q_ptr, k_ptr, v_ptr, bias_ptr, out_ptr, lse_ptr, dout_ptr, main_chunks, other_tiles, other_chunks,
    dq_ptr, dk_ptr, dv_ptr, dbias_ptr,
    T, D, HK, window, band_lo, W, main_shift, other_shift, tiles_per_chunk,
    GROUP: tl.constexpr, CAUSAL: tl.constexpr, GATED: tl.constexpr, GLOBAL: tl.constexpr,
    PER_HEAD: tl.constexpr, BIAS_GRAD: tl.constexpr, PRODUCTS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """``dq``, per-channel ``dk`` (``(B, T, D)``), ``dv`` and (atomically) the band gradient,
    sweeping the chunk's tiles, here *keys* ``t'``, in descending order; the band term by
    term, or (``PRODUCTS``) as tile products."""
    b, chans = _program(D, BLOCK_D)
    chunk = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    n_tiles = tl.cdiv(T, BLOCK_T)
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, dout_ptr = _at_batch(b, q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, dout_ptr,
                                                                T, D, HK)
    grads = b * T * D
    dq_ptr += grads
    dk_ptr += grads
    dv_ptr += grads
    other_tiles += b * n_tiles * 3 * D
    cm, ca, cb, om, oa, ob = _chunk_start(main_chunks + b * n_chunks * 3 * D, other_chunks + b * n_chunks * 3 * D,
                                          chunk, n_chunks, chans, D, True, CAUSAL, GLOBAL)
    first = chunk * tiles_per_chunk
    count = tl.minimum(tiles_per_chunk, n_tiles - first)
    for i in range(count):
        tile = first + count - 1 - i
        rows = tile * BLOCK_T + tl.arange(0, BLOCK_T)
        key = _tile(k_ptr, rows, chans // GROUP, T, HK, NEG)
        value = _tile(v_ptr, rows, chans, T, D, 0.0)
        if GLOBAL:
            m, a, s, cm, ca, cb = _outside(cm, ca, cb, om, oa, ob, other_tiles, tile, rows, main_shift, other_shift,
                                           q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, dout_ptr, chans, T, D, HK,
                                           GROUP, GATED, True, CAUSAL)
            scale = tl.exp(key + m)
            dv = scale * a
            dk = scale * (value * a - s)
        else:
            dv = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
            dk = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        if PRODUCTS:
            dk, dv = _band_products_backward(dk, dv, key, value, q_ptr, out_ptr, lse_ptr, dout_ptr, bias_ptr, dbias_ptr,
                                             tile * BLOCK_T, chans, T, D, window, band_lo, W,
                                             GATED, BIAS_GRAD, PRECISION, BLOCK_T)
        else:
            for offset in range(band_lo, window):
                queries = rows + offset
                neg_lse, d_avg, delta = _query_terms(q_ptr, out_ptr, lse_ptr, dout_ptr, queries, chans, T, D, GATED)
                col = offset - band_lo
                p = tl.exp(key + _band(bias_ptr, queries, chans, col, T, D, W, GROUP, PER_HEAD) + neg_lse)
                dk, dv, r = _add_band_term(dk, dv, p, value, d_avg, delta)
                if BIAS_GRAD:
                    if PER_HEAD:
                        tl.atomic_add(dbias_ptr + chans * W + col, tl.sum(r, 0), mask=chans < D)
                    else:
                        tl.atomic_add(dbias_ptr + queries * W + col, tl.sum(r, 1), mask=(queries >= 0) & (queries < T))
        mask = (rows < T)[:, None] & (chans < D)[None, :]
        _store_gradients(q_ptr, out_ptr, dout_ptr, dq_ptr, dk_ptr, dv_ptr, rows[:, None] * D + chans[None, :], mask,
                         dk, dv, GATED)


# ------------------------------------------------------------- the band as tile products
#
# For a bias over positions (AFT-local) the band terms of a tile of rows and a tile of keys
# separate: exp(K[t', c] + w[t, t']) = exp(w[t, t'] - r[t]) exp(K[t', c] - k[c]) exp(r[t] + k[c])
# with r the tile's largest bias per row and k its largest key per channel, so their sums
# are two matrix products of a (BLOCK_T, BLOCK_T) tile of exp(w - r) with (BLOCK_T, BLOCK_D)
# tiles of exp(K - k) and exp(K - k) V: BLOCK_T / BLOCK_D + 1 exponentials per (row,
# channel) and key tile instead of BLOCK_T. A product whose terms were all far below its
# shift r + k (a large bias where the key is small) may have lost them to float32
# underflow; such a pair of tiles is summed term by term instead, exactly.

MIN_PRODUCT = tl.constexpr(2.0**-60)  # forward: a shifted sum below this falls back to the terms
MAX_EXPONENT = tl.constexpr(40.0)  # backward: a shift above lse by more than this falls back


@triton.jit
def _band_tile(bias_ptr, t, key, T, W, window, band_lo):
    """``(w[t, key], inside)`` for broadcastable position tensors ``t`` and ``key``: the band
    entries of a ``(T, W)`` band over positions as float32, ``NEG`` outside the band or ``[0, T)``."""
    offset = t - key
    inside = (offset >= band_lo) & (offset < window) & (t >= 0) & (t < T) & (key >= 0) & (key < T)
    w = tl.load(bias_ptr + t * W + (offset - band_lo), mask=inside, other=0.0).to(tl.float32)
    return tl.where(inside, w, NEG), inside


@triton.jit
def _shifted_rows(w, inside):
    """``(exp(w - r), r)``: each row's largest entry ``r`` (``NEG`` for an empty row), 0 outside."""
    row_max = tl.max(w, 1)
    return tl.where(inside, tl.exp(w - row_max[:, None]), 0.0), row_max


@triton.jit
def _any(mask):
    """Whether any entry of a boolean tile is set (a scalar)."""
    return tl.max(mask.to(tl.int32)) > 0


@triton.jit
def _band_products_forward(m, a, s, k_ptr, v_ptr, bias_ptr, first, chans, T, D, HK, window, band_lo, W,
                           GROUP: tl.constexpr, PRECISION: tl.constexpr, BLOCK_T: tl.constexpr):
    """Merge the band terms of rows ``first + arange(BLOCK_T)`` into their states ``(m, a, s)``,
    one key tile at a time: ``den = exp(w - r) @ exp(K - k)``, ``num = exp(w - r) @ (exp(K - k) V)``
    at shift ``r + k``, or term by term where ``den < MIN_PRODUCT``."""
    rows = first + tl.arange(0, BLOCK_T)
    for start in range(tl.maximum(first - window + 1, 0), tl.minimum(first + BLOCK_T - band_lo, T), BLOCK_T):
        keys = start + tl.arange(0, BLOCK_T)
        w, inside = _band_tile(bias_ptr, rows[:, None], keys[None, :], T, W, window, band_lo)
        ew, row_max = _shifted_rows(w, inside)
        key = _tile(k_ptr, keys, chans // GROUP, T, HK, NEG)
        key_max = tl.max(key, 0)
        ek = tl.exp(key - key_max[None, :])
        den = tl.dot(ew, ek, input_precision=PRECISION)
        if _any((den < MIN_PRODUCT) & (row_max > NEG)[:, None] & (chans < D)[None, :]):
            m, a, s = _pair_terms_forward(m, a, s, k_ptr, v_ptr, bias_ptr, rows, start, chans, T, D, HK,
                                          window, band_lo, W, GROUP, BLOCK_T)
        else:
            num = tl.dot(ew, ek * _tile(v_ptr, keys, chans, T, D, 0.0), input_precision=PRECISION)
            m, a, s = online.merge(m, a, s, row_max[:, None] + key_max[None, :], den, num)
    return m, a, s


@triton.jit
def _pair_terms_forward(m, a, s, k_ptr, v_ptr, bias_ptr, rows, start, chans, T, D, HK, window, band_lo, W,
                        GROUP: tl.constexpr, BLOCK_T: tl.constexpr):
    """Push the band terms of ``rows`` with keys ``start + arange(BLOCK_T)`` onto their states
    ``(m, a, s)`` one by one."""
    for j in range(BLOCK_T):
        key = start + j + tl.arange(0, 1)
        logit, x, y = _key_terms(k_ptr, v_ptr, key, chans, T, D, HK, GROUP)  # (1, BLOCK_D)
        w, inside = _band_tile(bias_ptr, rows, key, T, W, window, band_lo)  # (BLOCK_T,)
        keep = inside.to(tl.float32)[:, None]
        m, a, s = online.push(m, a, s, logit + w[:, None], x * keep, y * keep)
    return m, a, s


@triton.jit
def _band_products_backward(dk, dv, key, value, q_ptr, out_ptr, lse_ptr, dout_ptr, bias_ptr, dbias_ptr, first,
                            chans, T, D, window, band_lo, W,
                            GATED: tl.constexpr, BIAS_GRAD: tl.constexpr, PRECISION: tl.constexpr,
                            BLOCK_T: tl.constexpr):
    """Add the band's share to ``dk, dv`` of keys ``first + arange(BLOCK_T)`` (and to the band
    gradient), one query tile at a time: with ``p = exp(w - r) exp(K - k) e``, ``e = exp(r + k - lse)``::

        dV = exp(K - k) (exp(w - r)^T @ (G e)),  dK = exp(K - k) (V (exp(w - r)^T @ (G e)) - exp(w - r)^T @ (delta e))
        dw = exp(w - r) ((G e) @ (exp(K - k) V)^T - (delta e) @ exp(K - k)^T)

    or term by term where ``r + k - lse > MAX_EXPONENT``."""
    keys = first + tl.arange(0, BLOCK_T)
    key_max = tl.max(key, 0)
    ek = tl.exp(key - key_max[None, :])
    for start in range(tl.maximum(first + band_lo, 0), tl.minimum(first + BLOCK_T + window - 1, T), BLOCK_T):
        queries = start + tl.arange(0, BLOCK_T)
        w, inside = _band_tile(bias_ptr, queries[:, None], keys[None, :], T, W, window, band_lo)
        ew, row_max = _shifted_rows(w, inside)
        neg_lse, d_avg, delta = _query_terms(q_ptr, out_ptr, lse_ptr, dout_ptr, queries, chans, T, D, GATED)
        exponent = row_max[:, None] + key_max[None, :] + neg_lse
        if _any((exponent > MAX_EXPONENT) & (row_max > NEG)[:, None] & (chans < D)[None, :]):
            dk, dv = _pair_terms_backward(dk, dv, key, value, q_ptr, out_ptr, lse_ptr, dout_ptr, bias_ptr, dbias_ptr,
                                          keys, start, chans, T, D, window, band_lo, W, GATED, BIAS_GRAD, BLOCK_T)
        else:
            scale = tl.exp(exponent)
            g, e = d_avg * scale, delta * scale
            ew_t = tl.trans(ew)
            dv_band = tl.dot(ew_t, g, input_precision=PRECISION)
            dv += ek * dv_band
            dk += ek * (value * dv_band - tl.dot(ew_t, e, input_precision=PRECISION))
            if BIAS_GRAD:
                dw = ew * (tl.dot(g, tl.trans(ek * value), input_precision=PRECISION)
                           - tl.dot(e, tl.trans(ek), input_precision=PRECISION))
                offset = queries[:, None] - keys[None, :]
                tl.atomic_add(dbias_ptr + queries[:, None] * W + (offset - band_lo), dw, mask=inside)
    return dk, dv


@triton.jit
def _pair_terms_backward(dk, dv, key, value, q_ptr, out_ptr, lse_ptr, dout_ptr, bias_ptr, dbias_ptr, keys, start,
                         chans, T, D, window, band_lo, W,
                         GATED: tl.constexpr, BIAS_GRAD: tl.constexpr, BLOCK_T: tl.constexpr):
    """The band's share from queries ``start + arange(BLOCK_T)``, term by term."""
    for j in range(BLOCK_T):
        query = start + j + tl.arange(0, 1)
        neg_lse, d_avg, delta = _query_terms(q_ptr, out_ptr, lse_ptr, dout_ptr, query, chans, T, D, GATED)  # (1, BLOCK_D)
        w, inside = _band_tile(bias_ptr, query, keys, T, W, window, band_lo)  # (BLOCK_T,)
        p = tl.where(inside[:, None], tl.exp(key + w[:, None] + neg_lse), 0.0)
        dk, dv, r = _add_band_term(dk, dv, p, value, d_avg, delta)
        if BIAS_GRAD:
            tl.atomic_add(dbias_ptr + query * W + (query - keys - band_lo), tl.sum(r, 1), mask=inside)
    return dk, dv


# ------------------------------------------------------------------------------ launch


@dataclass(frozen=True)
class Band:
    """The bias pattern: band offsets ``band_lo <= t - t' < window``.

    ``global_connectivity``: bias 0 outside the band (Eq. 4, 6), else ``-inf``.
    ``per_head``: band rows are key heads ``(Hk, W)`` (AFT-conv1d), else positions ``(T, W)``.
    """

    window: int
    causal: bool
    global_connectivity: bool = True
    per_head: bool = False

    @property
    def lo(self) -> int:
        return 0 if self.causal else 1 - self.window

    @property
    def width(self) -> int:
        """``W``, the band's number of columns (offsets)."""
        return max(self.window - self.lo, 0)


@dataclass(frozen=True)
class Blocks:
    """Launch shape: ``t`` rows per tile, ``d`` channels per program, row ``chunks`` swept
    in parallel per channel block (``None``: enough to fill the device), ``warps``, and
    whether a band over positions (AFT-local) is summed as ``t x t`` tile ``products``
    (``tl.dot``; ``t, d >= 16``) rather than term by term."""

    t: int = 32
    d: int = 32
    chunks: int | None = None
    warps: int = 4
    products: bool = False


@dataclass(frozen=True)
class _Launch:
    blocks: Blocks
    n_tiles: int
    tiles_per_chunk: int
    n_chunks: int
    grid: tuple[int, int]
    precision: str  # of tl.dot, fixed at the forward pass (:func:`_dot_precision`)


def default_blocks(v: Tensor, band: Band, band_products: bool = False) -> Blocks:
    """Small tiles on the CPU (interpreter); on CUDA 32 x 32, chunked to fill the device.
    Tile products (at 8 warps) for a band over positions if ``band_products``
    (``aft.ops.use(band_products=True)``).

    On an H100 (B=4, T=16384, D in 256, 1024, causal) 32 x 32 tiles in chunks of about
    two programs per multiprocessor beat 16- and 64-wide channel blocks, 16- and 64-row
    tiles and unchunked sweeps (about 2x slower), forward and backward (term by term).
    """
    size = 32 if v.device.type == "cuda" else 16
    if band_products and band.width > 0 and not band.per_head:
        return Blocks(t=size, d=size, warps=8, products=True)  # 4 warps spill registers (compile_kernels.py)
    return Blocks(t=size, d=size)


def _check_blocks(blocks: Blocks, band: Band) -> None:
    if blocks.products and band.per_head:
        raise ValueError("Blocks(products=True) sums a band over positions (AFT-local); use products=False here")
    if blocks.products and min(blocks.t, blocks.d) < 16:
        raise ValueError(f"Blocks(products=True) needs t and d >= 16 (tl.dot), got t={blocks.t}, d={blocks.d}")


def _dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s precision for inputs of ``dtype``: IEEE float32 for float32 inputs unless
    PyTorch allows TF32 for their matrix products (``torch.set_float32_matmul_precision``);
    TF32 for float16 and bfloat16 inputs, whose own rounding is coarser."""
    full = dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"
    return "ieee" if full else "tf32"


def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _launch(v: Tensor, blocks: Blocks) -> _Launch:
    B, T, D = v.shape
    n_tiles = triton.cdiv(T, blocks.t)
    programs = B * triton.cdiv(D, blocks.d)
    chunks = blocks.chunks
    if chunks is None:
        target = 2 * _multiprocessors(v.device) if v.device.type == "cuda" else 1
        chunks = math.ceil(target / programs)
    tiles_per_chunk = triton.cdiv(n_tiles, max(1, min(chunks, n_tiles)))
    n_chunks = triton.cdiv(n_tiles, tiles_per_chunk)
    return _Launch(blocks, n_tiles, tiles_per_chunk, n_chunks, (programs, n_chunks), _dot_precision(v.dtype))


def _shifts(band: Band, backward: bool) -> tuple[int, int]:
    """Row shifts of the outside terms on the sweep's side and on the other side.

    Forward (keys, ascending): ``t' <= t - window`` and ``t' >= t + max(window, 1)``.
    Backward (queries, descending): ``t >= t' + window`` and ``t <= t' - max(window, 1)``.
    """
    near, far = band.window, max(band.window, 1)
    return (near, -far) if backward else (-near, far)


def _summaries(
    feeds: tuple[Tensor, ...], D: int, HK: int, band: Band, launch: _Launch, gated: bool, backward: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """``(main_chunks, other_tiles, other_chunks)`` for a sweep (see ``_summary_kernel``);
    one the sweep does not need is :func:`_unused`."""
    v = feeds[2]
    B, T = v.shape[:2]
    unused = _unused(v)
    main_chunks = other_tiles = other_chunks = unused
    if not band.global_connectivity:
        return main_chunks, other_tiles, other_chunks
    main_shift, other_shift = _shifts(band, backward)

    def states(n: int) -> Tensor:
        return v.new_empty(B, n, 3, D, dtype=torch.float32)

    def summarize(tiles: Tensor, chunks: Tensor, shift: int, reverse: bool, store_tiles: bool) -> None:
        blocks = launch.blocks
        _summary_kernel[launch.grid](
            *feeds, tiles, chunks, T, D, HK, shift, launch.tiles_per_chunk,
            GROUP=D // HK, GATED=gated, QUERIES=backward, REVERSE=reverse, STORE_TILES=store_tiles,
            BLOCK_T=blocks.t, BLOCK_D=blocks.d, num_warps=blocks.warps,
        )

    if launch.n_chunks > 1:
        main_chunks = states(launch.n_chunks)
        summarize(unused, main_chunks, main_shift, backward, False)
    if not band.causal:
        other_tiles, other_chunks = states(launch.n_tiles), states(launch.n_chunks)
        summarize(other_tiles, other_chunks, other_shift, not backward, True)
    return main_chunks, other_tiles, other_chunks


def _unused(v: Tensor) -> Tensor:
    """A 1-element float32 buffer for a kernel pointer argument that a launch never touches
    (Triton takes a tensor for every pointer; ``constexpr`` flags switch its use off)."""
    return v.new_empty(1, dtype=torch.float32)


def _device(t: Tensor) -> contextlib.AbstractContextManager:
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _forward(
    q: Tensor | None, k: Tensor, v: Tensor, bias: Tensor, band: Band, launch: _Launch, store_lse: bool
) -> tuple[Tensor, Tensor]:
    """``(out, lse)``; ``lse`` is :func:`_unused` unless ``store_lse``."""
    B, T, D = v.shape
    HK = k.shape[-1]
    out = torch.empty_like(v)
    lse = v.new_empty(B, T, D, dtype=torch.float32) if store_lse else _unused(v)
    gate = v if q is None else q
    feeds = (gate, k, v, out, lse, out)
    summaries = _summaries(feeds, D, HK, band, launch, q is not None, backward=False)
    blocks = launch.blocks
    _forward_kernel[launch.grid](
        gate, k, v, bias, out, lse, *summaries,
        T, D, HK, band.window, band.lo, band.width, *_shifts(band, False), launch.tiles_per_chunk,
        GROUP=D // HK, CAUSAL=band.causal, GATED=q is not None, GLOBAL=band.global_connectivity,
        PER_HEAD=band.per_head, STORE_LSE=store_lse, PRODUCTS=blocks.products, PRECISION=launch.precision,
        BLOCK_T=blocks.t, BLOCK_D=blocks.d, num_warps=blocks.warps,
    )
    return out, lse


def _backward(
    q: Tensor | None, k: Tensor, v: Tensor, bias: Tensor, out: Tensor, lse: Tensor, dout: Tensor,
    band: Band, launch: _Launch, bias_grad: bool,
) -> tuple[Tensor | None, Tensor, Tensor, Tensor | None]:
    B, T, D = v.shape
    HK = k.shape[-1]
    gate = v if q is None else q
    dq = _unused(v) if q is None else torch.empty_like(q)
    dk = torch.empty_like(k) if HK == D else torch.empty(B, T, D, dtype=torch.float32, device=k.device)
    dv = torch.empty_like(v)
    dbias = _unused(v)
    if bias_grad:  # per channel when per head, summed over each head's channels below
        dbias = torch.zeros(D if band.per_head else T, band.width, dtype=torch.float32, device=v.device)
    feeds = (gate, k, v, out, lse, dout)
    summaries = _summaries(feeds, D, HK, band, launch, q is not None, backward=True)
    blocks = launch.blocks
    _backward_kernel[launch.grid](
        gate, k, v, bias, out, lse, dout, *summaries, dq, dk, dv, dbias,
        T, D, HK, band.window, band.lo, band.width, *_shifts(band, True), launch.tiles_per_chunk,
        GROUP=D // HK, CAUSAL=band.causal, GATED=q is not None, GLOBAL=band.global_connectivity,
        PER_HEAD=band.per_head, BIAS_GRAD=bias_grad, PRODUCTS=blocks.products, PRECISION=launch.precision,
        BLOCK_T=blocks.t, BLOCK_D=blocks.d, num_warps=blocks.warps,
    )
    if HK != D:
        dk = dk.view(B, T, HK, D // HK).sum(-1).to(k.dtype)
    if not bias_grad:
        return (None if q is None else dq), dk, dv, None
    if band.per_head:
        dbias = dbias.view(HK, D // HK, -1).sum(1)
    return (None if q is None else dq), dk, dv, dbias.to(bias.dtype)


@torch.library.custom_op("aft::triton_banded", mutates_args=())
def _banded_op(
    q: Tensor | None, k: Tensor, v: Tensor, bias: Tensor, window: int, causal: bool, global_connectivity: bool,
    per_head: bool, tile_t: int, tile_d: int, chunks: int | None, warps: int, products: bool, store_lse: bool,
    bias_grad: bool,
) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` of the forward kernels; ``lse`` ``(B, T, D)`` float32 if ``store_lse``
    (for the backward), else a 1-element placeholder. ``bias_grad`` is for the backward."""
    band = Band(window, causal, global_connectivity, per_head)
    launch = _launch(v, Blocks(tile_t, tile_d, chunks, warps, products))
    with _device(v):
        return _forward(q, k, v, bias, band, launch, store_lse)


@_banded_op.register_fake
def _(q, k, v, bias, window, causal, global_connectivity, per_head, tile_t, tile_d, chunks, warps, products, store_lse, bias_grad):
    lse = v.new_empty(v.shape, dtype=torch.float32) if store_lse else v.new_empty(1, dtype=torch.float32)
    return torch.empty_like(v), lse


@torch.library.custom_op("aft::triton_banded_backward", mutates_args=())
def _banded_backward_op(
    dout: Tensor, q: Tensor | None, k: Tensor, v: Tensor, bias: Tensor, out: Tensor, lse: Tensor, window: int,
    causal: bool, global_connectivity: bool, per_head: bool, tile_t: int, tile_d: int, chunks: int | None,
    warps: int, products: bool, store_lse: bool, bias_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dq, dk, dv, dbias)``: ``dq`` empty without ``q``, ``dbias`` zeros unless ``bias_grad``."""
    band = Band(window, causal, global_connectivity, per_head)
    launch = _launch(v, Blocks(tile_t, tile_d, chunks, warps, products))
    with _device(v):
        dq, dk, dv, dbias = _backward(q, k, v, bias, out, lse, dout, band, launch, bias_grad)
    return (dout.new_empty(0) if dq is None else dq), dk, dv, (torch.zeros_like(bias) if dbias is None else dbias)


connect(_banded_op, _banded_backward_op, tensors=4)


def banded_aft(
    q: Tensor | None, k: Tensor, v: Tensor, bias: Tensor, band: Band, blocks: Blocks | None = None,
    band_products: bool = False,
) -> Tensor:
    """``sigmoid(q) * avg`` (Eq. 2) with a banded bias, see the module docstring.

    Args:
        q, v: ``(B, T, D)``; ``q=None`` drops the query gate.
        k: ``(B, T, Hk)``, ``Hk`` divides ``D``.
        bias: ``(T, band.width)`` or, ``band.per_head``, ``(Hk, band.width)``; its entries
            whose key ``t - o`` lies outside ``[0, T)`` are ignored.
        band: the bias pattern.
        blocks: launch shape; default :func:`default_blocks` (with ``band_products``).

    Returns:
        ``(B, T, D)`` in ``v``'s dtype.
    """
    blocks = blocks or default_blocks(v, band, band_products)
    _check_blocks(blocks, band)
    q = None if q is None else q.contiguous()
    k, v, bias = k.contiguous(), v.contiguous(), bias.contiguous()
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias))
    out, _ = _banded_op(
        q, k, v, bias, band.window, band.causal, band.global_connectivity, band.per_head,
        blocks.t, blocks.d, blocks.chunks, blocks.warps, blocks.products, grad, grad and bias.requires_grad,
    )
    return out
