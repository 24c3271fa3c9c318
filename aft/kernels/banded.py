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

Arguments (:mod:`aft.kernels.common`). A forward launch takes the :class:`Keys`, the gate,
the band, ``out``, ``lse`` (``None`` unless a backward will run) and the sweep's
:class:`Summaries`; a backward launch the :class:`Keys`, the :class:`Queries`, the band, its
summaries and the :class:`Gradients`; a summary launch the terms it sums, :class:`Keys`
forward, :class:`Queries` backward.

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

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from aft.kernels import online
from aft.kernels.common import (
    Blocks,
    Gradients,
    Keys,
    Queries,
    add_band_term,
    bias_column,
    gradients_at,
    key_terms,
    keys_at,
    moved,
    on_device,
    program,
    queries_at,
    query_terms,
    store_gradients,
    store_output,
    terms,
    terms_at,
    tile,
)
from aft.kernels.online import NEG
from aft.ops.library import connect


class Summaries(NamedTuple):
    """A sweep's state buffers (``_summary_kernel``), each ``(B, n, 3, D)`` float32; ``None``
    where the sweep reads none: ``main_chunks`` (one per chunk) of the terms on the sweep's
    side, ``other_tiles`` (one per tile) and ``other_chunks`` of those on the other side."""

    main_chunks: Tensor | None
    other_tiles: Tensor | None
    other_chunks: Tensor | None


# ------------------------------------------------------------------------------ kernels


@triton.jit
def _outside(
    cm,
    ca,
    cb,
    om,
    oa,
    ob,
    other_tiles,
    tile_index,
    rows,
    main_shift,
    other_shift,
    source,
    chans,
    T,
    D,
    HK,
    GROUP: tl.constexpr,
    GATED: tl.constexpr,
    BACKWARD: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """State of each row's terms outside the window (bias 0), and the updated carry.

    Terms on the sweep's side (``rows + main_shift``) come from the carry ``c*`` and an
    in-tile scan; unless causal, those on the other side (``rows + other_shift``) from the
    tile's summary, the chunks after this one (``o*``) and an in-tile scan the other way.
    ``source``: the :class:`Queries` (backward) or :class:`Keys` of the terms.
    """
    logit, x, y = terms(source, rows + main_shift, chans, T, D, HK, GROUP, GATED, BACKWARD)
    m, a, b, cm, ca, cb = online.scan_tile(cm, ca, cb, logit, x, y, BACKWARD)
    if not CAUSAL:
        tm, ta, tb = online.load(other_tiles, tile_index, chans, D)
        tm, ta, tb = online.merge(tm, ta, tb, om, oa, ob)
        logit, x, y = terms(source, rows + other_shift, chans, T, D, HK, GROUP, GATED, BACKWARD)
        m2, a2, b2, _, _, _ = online.scan_tile(tm, ta, tb, logit, x, y, not BACKWARD)
        m, a, b = online.merge(m, a, b, m2, a2, b2)
    return m, a, b, cm, ca, cb


@triton.jit
def _chunk_start(
    main_chunks,
    other_chunks,
    chunk,
    n_chunks,
    chans,
    D,
    BACKWARD: tl.constexpr,
    CAUSAL: tl.constexpr,
    GLOBAL: tl.constexpr,
):
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
    source,
    tiles_ptr,
    chunks_ptr,
    T,
    D,
    HK,
    shift,
    tiles_per_chunk,
    GROUP: tl.constexpr,
    GATED: tl.constexpr,
    QUERIES: tl.constexpr,
    REVERSE: tl.constexpr,
    STORE_TILES: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Summaries of the terms at ``rows + shift`` of ``source`` (:class:`Queries` if
    ``QUERIES``, else :class:`Keys`), swept per chunk (descending if ``REVERSE``).

    ``chunks[b, j]``: the state of all terms of chunk ``j``. ``tiles[b, n]`` (if
    ``STORE_TILES``, else ``None``): the state of the terms of the tiles of ``n``'s chunk
    swept before ``n``. Both ``(B, n, 3, D)`` float32.
    """
    b, chans = program(D, BLOCK_D)
    chunk = tl.program_id(1)
    n_tiles = tl.cdiv(T, BLOCK_T)
    source = terms_at(source, b * T, D, HK, QUERIES)
    tiles_ptr = moved(tiles_ptr, b * n_tiles * 3 * D)
    chunks_ptr += b * tl.num_programs(1) * 3 * D
    first = chunk * tiles_per_chunk
    count = tl.minimum(tiles_per_chunk, n_tiles - first)
    cm, ca, cb = online.empty_like(chans)
    for i in range(count):
        if REVERSE:
            tile_index = first + count - 1 - i
        else:
            tile_index = first + i
        if STORE_TILES:
            online.store(tiles_ptr, tile_index, chans, D, cm, ca, cb)
        rows = tile_index * BLOCK_T + tl.arange(0, BLOCK_T) + shift
        logit, x, y = terms(source, rows, chans, T, D, HK, GROUP, GATED, QUERIES)
        tm, ta, tb = online.total(logit, x, y)
        cm, ca, cb = online.merge(cm, ca, cb, tm, ta, tb)
    online.store(chunks_ptr, chunk, chans, D, cm, ca, cb)


@triton.jit
def _forward_kernel(
    keys,
    q_ptr,
    bias_ptr,
    out_ptr,
    lse_ptr,
    summaries,
    T,
    D,
    HK,
    window,
    band_lo,
    W,
    main_shift,
    other_shift,
    tiles_per_chunk,
    GROUP: tl.constexpr,
    CAUSAL: tl.constexpr,
    GATED: tl.constexpr,
    GLOBAL: tl.constexpr,
    PER_HEAD: tl.constexpr,
    STORE_LSE: tl.constexpr,
    PRODUCTS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``out = sigmoid(q) * avg`` and (``STORE_LSE``) ``lse``, sweeping the chunk's tiles in
    ascending order; the band term by term, or (``PRODUCTS``) as tile products. ``q`` is
    ``None`` unless ``GATED``, ``lse`` unless ``STORE_LSE``."""
    b, chans = program(D, BLOCK_D)
    chunk = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    n_tiles = tl.cdiv(T, BLOCK_T)
    keys = keys_at(keys, b * T, D, HK)
    at = b * T * D
    q_ptr, out_ptr, lse_ptr = moved(q_ptr, at), out_ptr + at, moved(lse_ptr, at)
    other_tiles = moved(summaries.other_tiles, b * n_tiles * 3 * D)
    per_chunk = b * n_chunks * 3 * D
    cm, ca, cb, om, oa, ob = _chunk_start(
        moved(summaries.main_chunks, per_chunk),
        moved(summaries.other_chunks, per_chunk),
        chunk,
        n_chunks,
        chans,
        D,
        False,
        CAUSAL,
        GLOBAL,
    )
    first = chunk * tiles_per_chunk
    for tile_index in range(first, tl.minimum(first + tiles_per_chunk, n_tiles)):
        rows = tile_index * BLOCK_T + tl.arange(0, BLOCK_T)
        if GLOBAL:
            m, a, s, cm, ca, cb = _outside(
                cm,
                ca,
                cb,
                om,
                oa,
                ob,
                other_tiles,
                tile_index,
                rows,
                main_shift,
                other_shift,
                keys,
                chans,
                T,
                D,
                HK,
                GROUP,
                GATED,
                False,
                CAUSAL,
            )
        else:
            m, a, s = online.empty_like(tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32))
        if PRODUCTS:
            m, a, s = _band_products_forward(
                m,
                a,
                s,
                keys,
                bias_ptr,
                tile_index * BLOCK_T,
                chans,
                T,
                D,
                HK,
                window,
                band_lo,
                W,
                GROUP,
                PRECISION,
                BLOCK_T,
            )
        else:
            for offset in range(band_lo, window):
                logit, x, y = key_terms(keys, rows - offset, chans, T, D, HK, GROUP)
                bias = bias_column(bias_ptr, rows, chans, offset - band_lo, T, D, W, GROUP, PER_HEAD)
                m, a, s = online.push(m, a, s, logit + bias, x, y)
        mask = (rows < T)[:, None] & (chans < D)[None, :]
        store_output(q_ptr, out_ptr, lse_ptr, rows[:, None] * D + chans[None, :], mask, m, a, s, GATED, STORE_LSE)


@triton.jit
def _backward_kernel(
    keys,
    queries,
    bias_ptr,
    summaries,
    grads,
    T,
    D,
    HK,
    window,
    band_lo,
    W,
    main_shift,
    other_shift,
    tiles_per_chunk,
    GROUP: tl.constexpr,
    CAUSAL: tl.constexpr,
    GATED: tl.constexpr,
    GLOBAL: tl.constexpr,
    PER_HEAD: tl.constexpr,
    BIAS_GRAD: tl.constexpr,
    PRODUCTS: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """:class:`Gradients`: ``dq``, per-channel ``dk`` (``(B, T, D)``), ``dv`` and (atomically)
    the band gradient, sweeping the chunk's tiles, here *keys* ``t'``, in descending order;
    the band term by term, or (``PRODUCTS``) as tile products."""
    b, chans = program(D, BLOCK_D)
    chunk = tl.program_id(1)
    n_chunks = tl.num_programs(1)
    n_tiles = tl.cdiv(T, BLOCK_T)
    keys = keys_at(keys, b * T, D, HK)
    queries = queries_at(queries, b * T, D)
    grads = gradients_at(grads, b * T, D)
    other_tiles = moved(summaries.other_tiles, b * n_tiles * 3 * D)
    per_chunk = b * n_chunks * 3 * D
    cm, ca, cb, om, oa, ob = _chunk_start(
        moved(summaries.main_chunks, per_chunk),
        moved(summaries.other_chunks, per_chunk),
        chunk,
        n_chunks,
        chans,
        D,
        True,
        CAUSAL,
        GLOBAL,
    )
    first = chunk * tiles_per_chunk
    count = tl.minimum(tiles_per_chunk, n_tiles - first)
    for i in range(count):
        tile_index = first + count - 1 - i
        rows = tile_index * BLOCK_T + tl.arange(0, BLOCK_T)
        key = tile(keys.k, rows, chans // GROUP, T, HK, NEG)
        value = tile(keys.v, rows, chans, T, D, 0.0)
        if GLOBAL:
            m, a, s, cm, ca, cb = _outside(
                cm,
                ca,
                cb,
                om,
                oa,
                ob,
                other_tiles,
                tile_index,
                rows,
                main_shift,
                other_shift,
                queries,
                chans,
                T,
                D,
                HK,
                GROUP,
                GATED,
                True,
                CAUSAL,
            )
            scale = tl.exp(key + m)
            dv = scale * a
            dk = scale * (value * a - s)
        else:
            dv = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
            dk = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        if PRODUCTS:
            dk, dv = _band_products_backward(
                dk,
                dv,
                key,
                value,
                queries,
                bias_ptr,
                grads.bias,
                tile_index * BLOCK_T,
                chans,
                T,
                D,
                window,
                band_lo,
                W,
                GATED,
                BIAS_GRAD,
                PRECISION,
                BLOCK_T,
            )
        else:
            for offset in range(band_lo, window):
                query_rows = rows + offset
                neg_lse, d_avg, delta = query_terms(queries, query_rows, chans, T, D, GATED)
                col = offset - band_lo
                p = tl.exp(key + bias_column(bias_ptr, query_rows, chans, col, T, D, W, GROUP, PER_HEAD) + neg_lse)
                dk, dv, r = add_band_term(dk, dv, p, value, d_avg, delta)
                if BIAS_GRAD:
                    if PER_HEAD:
                        tl.atomic_add(grads.bias + chans * W + col, tl.sum(r, 0), mask=chans < D)
                    else:
                        tl.atomic_add(
                            grads.bias + query_rows * W + col, tl.sum(r, 1), mask=(query_rows >= 0) & (query_rows < T)
                        )
        mask = (rows < T)[:, None] & (chans < D)[None, :]
        store_gradients(queries, grads, rows[:, None] * D + chans[None, :], mask, dk, dv, GATED)


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
def _band_products_forward(
    m,
    a,
    s,
    keys,
    bias_ptr,
    first,
    chans,
    T,
    D,
    HK,
    window,
    band_lo,
    W,
    GROUP: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Merge the band terms of rows ``first + arange(BLOCK_T)`` into their states ``(m, a, s)``,
    one key tile at a time: ``den = exp(w - r) @ exp(K - k)``, ``num = exp(w - r) @ (exp(K - k) V)``
    at shift ``r + k``, or term by term where ``den < MIN_PRODUCT``."""
    rows = first + tl.arange(0, BLOCK_T)
    for start in range(tl.maximum(first - window + 1, 0), tl.minimum(first + BLOCK_T - band_lo, T), BLOCK_T):
        key_rows = start + tl.arange(0, BLOCK_T)
        w, inside = _band_tile(bias_ptr, rows[:, None], key_rows[None, :], T, W, window, band_lo)
        ew, row_max = _shifted_rows(w, inside)
        key = tile(keys.k, key_rows, chans // GROUP, T, HK, NEG)
        key_max = tl.max(key, 0)
        ek = tl.exp(key - key_max[None, :])
        den = tl.dot(ew, ek, input_precision=PRECISION)
        if _any((den < MIN_PRODUCT) & (row_max > NEG)[:, None] & (chans < D)[None, :]):
            m, a, s = _pair_terms_forward(
                m, a, s, keys, bias_ptr, rows, start, chans, T, D, HK, window, band_lo, W, GROUP, BLOCK_T
            )
        else:
            num = tl.dot(ew, ek * tile(keys.v, key_rows, chans, T, D, 0.0), input_precision=PRECISION)
            m, a, s = online.merge(m, a, s, row_max[:, None] + key_max[None, :], den, num)
    return m, a, s


@triton.jit
def _pair_terms_forward(
    m,
    a,
    s,
    keys,
    bias_ptr,
    rows,
    start,
    chans,
    T,
    D,
    HK,
    window,
    band_lo,
    W,
    GROUP: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Push the band terms of ``rows`` with keys ``start + arange(BLOCK_T)`` onto their states
    ``(m, a, s)`` one by one."""
    for j in range(BLOCK_T):
        key = start + j + tl.arange(0, 1)
        logit, x, y = key_terms(keys, key, chans, T, D, HK, GROUP)  # (1, BLOCK_D)
        w, inside = _band_tile(bias_ptr, rows, key, T, W, window, band_lo)  # (BLOCK_T,)
        keep = inside.to(tl.float32)[:, None]
        m, a, s = online.push(m, a, s, logit + w[:, None], x * keep, y * keep)
    return m, a, s


@triton.jit
def _band_products_backward(
    dk,
    dv,
    key,
    value,
    queries,
    bias_ptr,
    dbias_ptr,
    first,
    chans,
    T,
    D,
    window,
    band_lo,
    W,
    GATED: tl.constexpr,
    BIAS_GRAD: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Add the band's share to ``dk, dv`` of keys ``first + arange(BLOCK_T)`` (and to the band
    gradient), one query tile at a time: with ``p = exp(w - r) exp(K - k) e``, ``e = exp(r + k - lse)``::

        dV = exp(K - k) (exp(w - r)^T @ (G e)),  dK = exp(K - k) (V (exp(w - r)^T @ (G e)) - exp(w - r)^T @ (delta e))
        dw = exp(w - r) ((G e) @ (exp(K - k) V)^T - (delta e) @ exp(K - k)^T)

    or term by term where ``r + k - lse > MAX_EXPONENT``."""
    key_rows = first + tl.arange(0, BLOCK_T)
    key_max = tl.max(key, 0)
    ek = tl.exp(key - key_max[None, :])
    for start in range(tl.maximum(first + band_lo, 0), tl.minimum(first + BLOCK_T + window - 1, T), BLOCK_T):
        query_rows = start + tl.arange(0, BLOCK_T)
        w, inside = _band_tile(bias_ptr, query_rows[:, None], key_rows[None, :], T, W, window, band_lo)
        ew, row_max = _shifted_rows(w, inside)
        neg_lse, d_avg, delta = query_terms(queries, query_rows, chans, T, D, GATED)
        exponent = row_max[:, None] + key_max[None, :] + neg_lse
        if _any((exponent > MAX_EXPONENT) & (row_max > NEG)[:, None] & (chans < D)[None, :]):
            dk, dv = _pair_terms_backward(
                dk,
                dv,
                key,
                value,
                queries,
                bias_ptr,
                dbias_ptr,
                key_rows,
                start,
                chans,
                T,
                D,
                window,
                band_lo,
                W,
                GATED,
                BIAS_GRAD,
                BLOCK_T,
            )
        else:
            scale = tl.exp(exponent)
            g, e = d_avg * scale, delta * scale
            ew_t = tl.trans(ew)
            dv_band = tl.dot(ew_t, g, input_precision=PRECISION)
            dv += ek * dv_band
            dk += ek * (value * dv_band - tl.dot(ew_t, e, input_precision=PRECISION))
            if BIAS_GRAD:
                dw = ew * (
                    tl.dot(g, tl.trans(ek * value), input_precision=PRECISION)
                    - tl.dot(e, tl.trans(ek), input_precision=PRECISION)
                )
                offset = query_rows[:, None] - key_rows[None, :]
                tl.atomic_add(dbias_ptr + query_rows[:, None] * W + (offset - band_lo), dw, mask=inside)
    return dk, dv


@triton.jit
def _pair_terms_backward(
    dk,
    dv,
    key,
    value,
    queries,
    bias_ptr,
    dbias_ptr,
    key_rows,
    start,
    chans,
    T,
    D,
    window,
    band_lo,
    W,
    GATED: tl.constexpr,
    BIAS_GRAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """The band's share from queries ``start + arange(BLOCK_T)``, term by term."""
    for j in range(BLOCK_T):
        query = start + j + tl.arange(0, 1)
        neg_lse, d_avg, delta = query_terms(queries, query, chans, T, D, GATED)  # (1, BLOCK_D)
        w, inside = _band_tile(bias_ptr, query, key_rows, T, W, window, band_lo)  # (BLOCK_T,)
        p = tl.where(inside[:, None], tl.exp(key + w[:, None] + neg_lse), 0.0)
        dk, dv, r = add_band_term(dk, dv, p, value, d_avg, delta)
        if BIAS_GRAD:
            tl.atomic_add(dbias_ptr + query * W + (query - key_rows - band_lo), tl.sum(r, 1), mask=inside)
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


def _summaries(v: Tensor, source: Keys | Queries, HK: int, band: Band, launch: _Launch, gated: bool) -> Summaries:
    """The :class:`Summaries` of the terms of ``source`` for a sweep (see ``_summary_kernel``):
    the forward pass's (:class:`Keys`) or the backward pass's (:class:`Queries`).

    ``main_chunks`` is filled only with more than one chunk (a single chunk has none before it).
    """
    if not band.global_connectivity:
        return Summaries(None, None, None)
    B, T, D = v.shape
    backward = isinstance(source, Queries)
    main_shift, other_shift = _shifts(band, backward)

    def states(n: int) -> Tensor:
        return v.new_empty(B, n, 3, D, dtype=torch.float32)

    def summarize(tiles: Tensor | None, chunks: Tensor, shift: int, reverse: bool) -> None:
        blocks = launch.blocks
        _summary_kernel[launch.grid](
            source,
            tiles,
            chunks,
            T,
            D,
            HK,
            shift,
            launch.tiles_per_chunk,
            GROUP=D // HK,
            GATED=gated,
            QUERIES=backward,
            REVERSE=reverse,
            STORE_TILES=tiles is not None,
            BLOCK_T=blocks.t,
            BLOCK_D=blocks.d,
            num_warps=blocks.warps,
        )

    main_chunks = states(launch.n_chunks)
    if launch.n_chunks > 1:
        summarize(None, main_chunks, main_shift, backward)
    if band.causal:
        return Summaries(main_chunks, None, None)
    other_tiles, other_chunks = states(launch.n_tiles), states(launch.n_chunks)
    summarize(other_tiles, other_chunks, other_shift, not backward)
    return Summaries(main_chunks, other_tiles, other_chunks)


def _forward(
    q: Tensor | None, k: Tensor, v: Tensor, bias: Tensor, band: Band, launch: _Launch, store_lse: bool
) -> tuple[Tensor, Tensor | None]:
    """``(out, lse)``; ``lse`` is ``None`` unless ``store_lse``."""
    B, T, D = v.shape
    HK = k.shape[-1]
    out = torch.empty_like(v)
    lse = v.new_empty(B, T, D, dtype=torch.float32) if store_lse else None
    keys = Keys(k, v)
    summaries = _summaries(v, keys, HK, band, launch, q is not None)
    blocks = launch.blocks
    _forward_kernel[launch.grid](
        keys,
        q,
        bias,
        out,
        lse,
        summaries,
        T,
        D,
        HK,
        band.window,
        band.lo,
        band.width,
        *_shifts(band, False),
        launch.tiles_per_chunk,
        GROUP=D // HK,
        CAUSAL=band.causal,
        GATED=q is not None,
        GLOBAL=band.global_connectivity,
        PER_HEAD=band.per_head,
        STORE_LSE=store_lse,
        PRODUCTS=blocks.products,
        PRECISION=launch.precision,
        BLOCK_T=blocks.t,
        BLOCK_D=blocks.d,
        num_warps=blocks.warps,
    )
    return out, lse


def _backward(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    bias: Tensor,
    out: Tensor,
    lse: Tensor,
    dout: Tensor,
    band: Band,
    launch: _Launch,
    bias_grad: bool,
) -> tuple[Tensor | None, Tensor, Tensor, Tensor | None]:
    B, T, D = v.shape
    HK = k.shape[-1]
    dk = torch.empty_like(k) if HK == D else torch.empty(B, T, D, dtype=torch.float32, device=k.device)
    dbias = None
    if bias_grad:  # per channel when per head, summed over each head's channels below
        dbias = torch.zeros(D if band.per_head else T, band.width, dtype=torch.float32, device=v.device)
    grads = Gradients(None if q is None else torch.empty_like(q), dk, torch.empty_like(v), dbias)
    queries = Queries(q, out, lse, dout)
    summaries = _summaries(v, queries, HK, band, launch, q is not None)
    blocks = launch.blocks
    _backward_kernel[launch.grid](
        Keys(k, v),
        queries,
        bias,
        summaries,
        grads,
        T,
        D,
        HK,
        band.window,
        band.lo,
        band.width,
        *_shifts(band, True),
        launch.tiles_per_chunk,
        GROUP=D // HK,
        CAUSAL=band.causal,
        GATED=q is not None,
        GLOBAL=band.global_connectivity,
        PER_HEAD=band.per_head,
        BIAS_GRAD=bias_grad,
        PRODUCTS=blocks.products,
        PRECISION=launch.precision,
        BLOCK_T=blocks.t,
        BLOCK_D=blocks.d,
        num_warps=blocks.warps,
    )
    dk = grads.k if HK == D else grads.k.view(B, T, HK, D // HK).sum(-1).to(k.dtype)
    if dbias is None:
        return grads.q, dk, grads.v, None
    if band.per_head:
        dbias = dbias.view(HK, D // HK, -1).sum(1)
    return grads.q, dk, grads.v, dbias.to(bias.dtype)


@torch.library.custom_op("aft::triton_banded", mutates_args=())
def _banded_op(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    bias: Tensor,
    window: int,
    causal: bool,
    global_connectivity: bool,
    per_head: bool,
    tile_t: int,
    tile_d: int,
    chunks: int | None,
    warps: int,
    products: bool,
    store_lse: bool,
    bias_grad: bool,
) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` of the forward kernels; ``lse`` ``(B, T, D)`` float32 if ``store_lse``
    (for the backward), else empty. ``bias_grad`` is for the backward."""
    band = Band(window, causal, global_connectivity, per_head)
    launch = _launch(v, Blocks(tile_t, tile_d, chunks, warps, products))
    with on_device(v):
        out, lse = _forward(q, k, v, bias, band, launch, store_lse)
    return out, (v.new_empty(0, dtype=torch.float32) if lse is None else lse)


@_banded_op.register_fake
def _(
    q,
    k,
    v,
    bias,
    window,
    causal,
    global_connectivity,
    per_head,
    tile_t,
    tile_d,
    chunks,
    warps,
    products,
    store_lse,
    bias_grad,
):
    return torch.empty_like(v), v.new_empty(v.shape if store_lse else 0, dtype=torch.float32)


@torch.library.custom_op("aft::triton_banded_backward", mutates_args=())
def _banded_backward_op(
    dout: Tensor,
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    bias: Tensor,
    out: Tensor,
    lse: Tensor,
    window: int,
    causal: bool,
    global_connectivity: bool,
    per_head: bool,
    tile_t: int,
    tile_d: int,
    chunks: int | None,
    warps: int,
    products: bool,
    store_lse: bool,
    bias_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dq, dk, dv, dbias)``: ``dq`` empty without ``q``, ``dbias`` zeros unless ``bias_grad``."""
    band = Band(window, causal, global_connectivity, per_head)
    launch = _launch(v, Blocks(tile_t, tile_d, chunks, warps, products))
    with on_device(v):
        dq, dk, dv, dbias = _backward(q, k, v, bias, out, lse, dout, band, launch, bias_grad)
    return (dout.new_empty(0) if dq is None else dq), dk, dv, (torch.zeros_like(bias) if dbias is None else dbias)


connect(_banded_op, _banded_backward_op, tensors=4)


def banded_aft(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    bias: Tensor,
    band: Band,
    blocks: Blocks | None = None,
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
        q,
        k,
        v,
        bias,
        band.window,
        band.causal,
        band.global_connectivity,
        band.per_head,
        blocks.t,
        blocks.d,
        blocks.chunks,
        blocks.warps,
        blocks.products,
        grad,
        grad and bias.requires_grad,
    )
    return out
