"""AFT-conv2d (Eq. 6 on a 2-d grid, non-causal), forward and backward in Triton.

For query ``(y, x)`` and channel ``c`` of key head ``h = c // (D // H)`` (Eq. 2)::

    avg[y, x, c] = sum exp(K[y', x', h] + w'[y', x']) V[y', x', c] / sum exp(K[y', x', h] + w'[y', x'])

over every key ``(y', x')`` of the grid, with ``w' = w[h, y' - y + r, x' - x + r]`` inside
the ``S x S`` box ``|y' - y| <= r, |x' - x| <= r`` (``r = S // 2``) and, outside it, 0 with
global connectivity or ``-inf`` without. Eq. 6 is evaluated as positive sums, ``exp(K + w)``
inside the box and ``exp(K)`` outside it, never through ``exp(w) - 1``.

Shapes: ``q, v, out``: ``(B, Y, X, D)``; ``k``: ``(B, Y, X, H)``, ``H | D``; ``w``:
``(H, S, S)``, ``S`` odd.

Algorithm. A program owns one grid row ``y``, a block of channels and one batch element:
a ``(BLOCK_X, BLOCK_D)`` tile, ``BLOCK_X >= X``. It holds an online log-sum-exp state
(:mod:`aft.kernels.online`) per ``(x, c)`` of

* the rows above and below the box: per-row totals written by a summary kernel, merged
  into prefix and suffix states over rows by a second one (``above[y]``: rows ``< y``,
  ``below[y]``: rows ``> y``), read at ``y - r`` and ``y + r``;
* in the box's rows, the columns left of ``x - r`` and right of ``x + r``: each column's
  terms over the box rows, loaded shifted by ``r + 1`` and scanned along the row
  (``tl.associative_scan`` with :func:`aft.kernels.online.merge`);
* the ``S * S`` box terms ``K + w``, pushed one by one with the exact running maximum.

Nothing ``(YX)^2`` or ``Y X S^2 D`` is formed; every pass reads and writes ``O(Y X D)``
bytes plus ``O(Y D)`` of row states. The kernels take their arrays as the pointer groups of
:mod:`aft.kernels.common`, as those of :mod:`aft.kernels.banded` do: the forward pass reads
:class:`Keys`, the backward pass :class:`Queries` too and writes :class:`Gradients`.

Backward. Autograd keeps the inputs, ``out`` and the float32 ``lse`` ``(B, Y, X, D)``. The
gradients are those of :mod:`aft.kernels.banded` with ``t = (y, x)``: for key ``t'`` the
query terms ``(-lse[t], G[t], delta[t])`` are swept with the same structure (the box is
symmetric; inside it the queries are at ``(y' - dy, x' - dx)`` with bias
``w[h, dy + r, dx + r]``) and multiplied by ``exp(K[t'] + m)``, giving ``dV`` and
``dK`` (summed over each head's channels); ``dw`` collects the box terms by atomic adds,
per channel, summed over each head's channels afterwards. Everything is computed in
float32 whatever the input dtype; ``out`` has ``v``'s dtype, each gradient its input's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from aft.kernels import MAX_GRID_COLUMNS, online
from aft.kernels.common import (
    Blocks,
    Gradients,
    Keys,
    Queries,
    add_band_term,
    bias_column,
    gradients_at,
    keys_at,
    moved,
    on_device,
    program,
    queries_at,
    store_gradients,
    store_output,
    terms,
    terms_at,
    tile,
)
from aft.kernels.online import NEG
from aft.ops.library import connect

# ------------------------------------------------------------------------------ kernels


@triton.jit
def _row_terms(source, row, cols, chans, X, D, HK, GROUP: tl.constexpr, GATED: tl.constexpr, QUERIES: tl.constexpr):
    """Terms at ``(row, cols)`` of one batch element's grid, ``(BLOCK_X, BLOCK_D)``: query
    terms (``QUERIES``, ``source`` :class:`Queries`) or key terms (:class:`Keys`); empty
    outside ``[0, X)``."""
    logit, x, y = terms(terms_at(source, row * X, D, HK, QUERIES), cols, chans, X, D, HK, GROUP, GATED, QUERIES)
    return logit, x, y


@triton.jit
def _outside(
    source,
    above_ptr,
    below_ptr,
    y,
    cols,
    chans,
    Y,
    X,
    D,
    HK,
    RADIUS: tl.constexpr,
    GROUP: tl.constexpr,
    GATED: tl.constexpr,
    QUERIES: tl.constexpr,
    BLOCK_X: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """State of the terms outside the box around each ``(y, cols)`` (bias 0), ``(BLOCK_X, BLOCK_D)``.

    Rows above and below the box from the row states; within the box's rows, the columns
    ``<= x - r - 1`` from a scan of the terms at ``cols - r - 1`` and those ``>= x + r + 1``
    from a reverse scan of the terms at ``cols + r + 1``.
    """
    m, a, s = online.load(above_ptr, tl.maximum(y - RADIUS, 0), chans, D)
    bm, ba, bs = online.load(below_ptr, tl.minimum(y + RADIUS, Y - 1), chans, D)
    m, a, s = online.merge(m, a, s, bm, ba, bs)
    lm, la, ls = online.empty_like(tl.zeros((BLOCK_X, BLOCK_D), dtype=tl.float32))
    rm, ra, rs = lm, la, ls
    for row in range(tl.maximum(y - RADIUS, 0), tl.minimum(y + RADIUS + 1, Y)):
        logit, x, v = _row_terms(source, row, cols - (RADIUS + 1), chans, X, D, HK, GROUP, GATED, QUERIES)
        lm, la, ls = online.push(lm, la, ls, logit, x, v)
        logit, x, v = _row_terms(source, row, cols + (RADIUS + 1), chans, X, D, HK, GROUP, GATED, QUERIES)
        rm, ra, rs = online.push(rm, ra, rs, logit, x, v)
    lm, la, ls = tl.associative_scan((lm, la, ls), 0, online.merge)
    rm, ra, rs = tl.associative_scan((rm, ra, rs), 0, online.merge, reverse=True)
    lm, la, ls = online.merge(lm, la, ls, rm, ra, rs)
    m, a, s = online.merge(m[None, :], a[None, :], s[None, :], lm, la, ls)
    return m, a, s


@triton.jit
def _row_totals_kernel(
    source,
    rows_ptr,
    Y,
    X,
    D,
    HK,
    GROUP: tl.constexpr,
    GATED: tl.constexpr,
    QUERIES: tl.constexpr,
    BLOCK_X: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``rows[b, y]``: the state of all terms of grid row ``y`` of ``source`` (:class:`Queries`
    if ``QUERIES``, else :class:`Keys`); ``(B, Y, 3, D)`` float32."""
    b, chans = program(D, BLOCK_D)
    y = tl.program_id(1)
    source = terms_at(source, b * (Y * X), D, HK, QUERIES)
    logit, x, v = _row_terms(source, y, tl.arange(0, BLOCK_X), chans, X, D, HK, GROUP, GATED, QUERIES)
    m, a, s = online.total(logit, x, v)
    online.store(rows_ptr + b * Y * 3 * D, y, chans, D, m, a, s)


@triton.jit
def _exclusive_scan_rows(rows_ptr, states_ptr, Y, chans, D, REVERSE: tl.constexpr):
    """``states[y]``: the merged ``rows[y'']`` of ``y'' < y`` (``y'' > y`` if ``REVERSE``)."""
    m, a, s = online.empty_like(chans)
    for i in range(Y):
        if REVERSE:
            y = Y - 1 - i
        else:
            y = i
        online.store(states_ptr, y, chans, D, m, a, s)
        rm, ra, rs = online.load(rows_ptr, y, chans, D)
        m, a, s = online.merge(m, a, s, rm, ra, rs)


@triton.jit
def _row_prefix_kernel(rows_ptr, above_ptr, below_ptr, Y, D, BLOCK_D: tl.constexpr):
    """``above[b, y]``: the state of rows ``< y``; ``below[b, y]``: of rows ``> y``. All
    ``(B, Y, 3, D)`` float32."""
    b, chans = program(D, BLOCK_D)
    offset = b * Y * 3 * D
    _exclusive_scan_rows(rows_ptr + offset, above_ptr + offset, Y, chans, D, False)
    _exclusive_scan_rows(rows_ptr + offset, below_ptr + offset, Y, chans, D, True)


@triton.jit
def _forward_kernel(
    keys,
    q_ptr,
    w_ptr,
    out_ptr,
    lse_ptr,
    above_ptr,
    below_ptr,
    Y,
    X,
    D,
    HK,
    RADIUS: tl.constexpr,
    GROUP: tl.constexpr,
    GATED: tl.constexpr,
    GLOBAL: tl.constexpr,
    STORE_LSE: tl.constexpr,
    BLOCK_X: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``out = sigmoid(q) * avg`` and (``STORE_LSE``) ``lse`` of grid row ``program_id(1)``;
    ``q`` is ``None`` unless ``GATED``, ``lse`` unless ``STORE_LSE``, the row states unless ``GLOBAL``."""
    b, chans = program(D, BLOCK_D)
    y = tl.program_id(1)
    keys = keys_at(keys, b * (Y * X), D, HK)
    at = b * (Y * X) * D
    q_ptr, out_ptr, lse_ptr = moved(q_ptr, at), out_ptr + at, moved(lse_ptr, at)
    cols = tl.arange(0, BLOCK_X)
    if GLOBAL:
        row_states = b * Y * 3 * D
        m, a, s = _outside(
            keys,
            above_ptr + row_states,
            below_ptr + row_states,
            y,
            cols,
            chans,
            Y,
            X,
            D,
            HK,
            RADIUS,
            GROUP,
            GATED,
            False,
            BLOCK_X,
            BLOCK_D,
        )
    else:
        m, a, s = online.empty_like(tl.zeros((BLOCK_X, BLOCK_D), dtype=tl.float32))
    SIZE: tl.constexpr = 2 * RADIUS + 1
    for row in range(tl.maximum(y - RADIUS, 0), tl.minimum(y + RADIUS + 1, Y)):
        for dx in range(-RADIUS, RADIUS + 1):
            logit, x, v = _row_terms(keys, row, cols + dx, chans, X, D, HK, GROUP, GATED, False)
            bias = bias_column(
                w_ptr, cols, chans, (row - y + RADIUS) * SIZE + dx + RADIUS, X, D, SIZE * SIZE, GROUP, True
            )
            m, a, s = online.push(m, a, s, logit + bias, x, v)
    mask = (cols < X)[:, None] & (chans < D)[None, :]
    store_output(q_ptr, out_ptr, lse_ptr, (y * X + cols)[:, None] * D + chans[None, :], mask, m, a, s, GATED, STORE_LSE)


@triton.jit
def _backward_kernel(
    keys,
    queries,
    w_ptr,
    above_ptr,
    below_ptr,
    grads,
    Y,
    X,
    D,
    HK,
    RADIUS: tl.constexpr,
    GROUP: tl.constexpr,
    GATED: tl.constexpr,
    GLOBAL: tl.constexpr,
    W_GRAD: tl.constexpr,
    BLOCK_X: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """:class:`Gradients`: ``dq``, per-channel ``dk`` (``(B, Y, X, D)``), ``dv`` of the keys of
    grid row ``program_id(1)`` and (atomically) the per-channel kernel gradient ``(D, S * S)``."""
    b, chans = program(D, BLOCK_D)
    y = tl.program_id(1)
    keys = keys_at(keys, b * (Y * X), D, HK)
    queries = queries_at(queries, b * (Y * X), D)
    grads = gradients_at(grads, b * (Y * X), D)
    cols = tl.arange(0, BLOCK_X)
    key = tile(keys.k + y * X * HK, cols, chans // GROUP, X, HK, NEG)
    value = tile(keys.v + y * X * D, cols, chans, X, D, 0.0)
    if GLOBAL:
        row_states = b * Y * 3 * D
        m, a, s = _outside(
            queries,
            above_ptr + row_states,
            below_ptr + row_states,
            y,
            cols,
            chans,
            Y,
            X,
            D,
            HK,
            RADIUS,
            GROUP,
            GATED,
            True,
            BLOCK_X,
            BLOCK_D,
        )
        scale = tl.exp(key + m)
        dv = scale * a
        dk = scale * (value * a - s)
    else:
        dv = tl.zeros((BLOCK_X, BLOCK_D), dtype=tl.float32)
        dk = tl.zeros((BLOCK_X, BLOCK_D), dtype=tl.float32)
    SIZE: tl.constexpr = 2 * RADIUS + 1
    for row in range(tl.maximum(y - RADIUS, 0), tl.minimum(y + RADIUS + 1, Y)):  # query rows
        for dx in range(-RADIUS, RADIUS + 1):  # queries at x' - dx
            neg_lse, d_avg, delta = _row_terms(queries, row, cols - dx, chans, X, D, HK, GROUP, GATED, True)
            tap = (y - row + RADIUS) * SIZE + dx + RADIUS
            p = tl.exp(key + bias_column(w_ptr, cols, chans, tap, X, D, SIZE * SIZE, GROUP, True) + neg_lse)
            dk, dv, r = add_band_term(dk, dv, p, value, d_avg, delta)
            if W_GRAD:
                tl.atomic_add(grads.bias + chans * SIZE * SIZE + tap, tl.sum(r, 0), mask=chans < D)
    mask = (cols < X)[:, None] & (chans < D)[None, :]
    store_gradients(queries, grads, (y * X + cols)[:, None] * D + chans[None, :], mask, dk, dv, GATED)


# ------------------------------------------------------------------------------ launch


@dataclass(frozen=True)
class _Launch:
    """``block_x``: the tile's columns (a whole grid row); ``grid``: (batch x channel blocks, rows)."""

    blocks: Blocks
    block_x: int
    radius: int
    global_connectivity: bool
    grid: tuple[int, int]


def default_blocks(v: Tensor) -> Blocks:
    """Channels per program: 16 on the CPU (interpreter); on CUDA a tile of about 512
    elements, at most 32 channels wide. Not yet timed on a GPU; compiled for sm_90
    (``python scripts/compile_kernels.py``), such tiles keep every register from 32 to 512
    grid columns, while 1024-element tiles spill them (32 columns x 32 channels, forward)."""
    if v.device.type != "cuda":
        return Blocks(d=16)
    return Blocks(d=max(1, min(32, 512 // triton.next_power_of_2(v.shape[2]))))


def _launch(v: Tensor, w: Tensor, global_connectivity: bool, blocks: Blocks) -> _Launch:
    B, Y, X, D = v.shape
    if X > MAX_GRID_COLUMNS:
        raise ValueError(
            f"the AFT-conv2d kernel holds a grid row in one tile: X={X} > {MAX_GRID_COLUMNS} columns "
            "(aft.ops.aft_conv2d takes the PyTorch path for such grids)"
        )
    grid = (B * triton.cdiv(D, blocks.d), Y)
    return _Launch(blocks, triton.next_power_of_2(X), w.shape[-1] // 2, global_connectivity, grid)


def _row_states(
    v: Tensor, source: Keys | Queries, HK: int, launch: _Launch, gated: bool
) -> tuple[Tensor | None, Tensor | None]:
    """``(above, below)`` (see ``_row_prefix_kernel``) of the terms of ``source``: the forward
    pass's (:class:`Keys`) or the backward pass's (:class:`Queries`); ``None`` without global
    connectivity."""
    if not launch.global_connectivity:
        return None, None
    B, Y, X, D = v.shape
    rows, above, below = (v.new_empty(B, Y, 3, D, dtype=torch.float32) for _ in range(3))
    blocks = launch.blocks
    _row_totals_kernel[launch.grid](
        source,
        rows,
        Y,
        X,
        D,
        HK,
        GROUP=D // HK,
        GATED=gated,
        QUERIES=isinstance(source, Queries),
        BLOCK_X=launch.block_x,
        BLOCK_D=blocks.d,
        num_warps=blocks.warps,
    )
    _row_prefix_kernel[launch.grid[:1]](rows, above, below, Y, D, BLOCK_D=blocks.d, num_warps=blocks.warps)
    return above, below


def _forward(
    q: Tensor | None, k: Tensor, v: Tensor, w: Tensor, launch: _Launch, store_lse: bool
) -> tuple[Tensor, Tensor | None]:
    """``(out, lse)``; ``lse`` is ``None`` unless ``store_lse``."""
    B, Y, X, D = v.shape
    HK = k.shape[-1]
    out = torch.empty_like(v)
    lse = v.new_empty(B, Y, X, D, dtype=torch.float32) if store_lse else None
    keys = Keys(k, v)
    above, below = _row_states(v, keys, HK, launch, q is not None)
    blocks = launch.blocks
    _forward_kernel[launch.grid](
        keys,
        q,
        w,
        out,
        lse,
        above,
        below,
        Y,
        X,
        D,
        HK,
        RADIUS=launch.radius,
        GROUP=D // HK,
        GATED=q is not None,
        GLOBAL=launch.global_connectivity,
        STORE_LSE=store_lse,
        BLOCK_X=launch.block_x,
        BLOCK_D=blocks.d,
        num_warps=blocks.warps,
    )
    return out, lse


def _backward(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    out: Tensor,
    lse: Tensor,
    dout: Tensor,
    launch: _Launch,
    w_grad: bool,
) -> tuple[Tensor | None, Tensor, Tensor, Tensor | None]:
    """``(dq, dk, dv, dw)``; ``dq`` is ``None`` without ``q``, ``dw`` unless ``w_grad``."""
    B, Y, X, D = v.shape
    HK, S = k.shape[-1], w.shape[-1]
    dk = torch.empty_like(k) if HK == D else k.new_empty(B, Y, X, D, dtype=torch.float32)
    dw = v.new_zeros(D, S * S, dtype=torch.float32) if w_grad else None
    grads = Gradients(None if q is None else torch.empty_like(q), dk, torch.empty_like(v), dw)
    queries = Queries(q, out, lse, dout)
    above, below = _row_states(v, queries, HK, launch, q is not None)
    blocks = launch.blocks
    _backward_kernel[launch.grid](
        Keys(k, v),
        queries,
        w,
        above,
        below,
        grads,
        Y,
        X,
        D,
        HK,
        RADIUS=launch.radius,
        GROUP=D // HK,
        GATED=q is not None,
        GLOBAL=launch.global_connectivity,
        W_GRAD=w_grad,
        BLOCK_X=launch.block_x,
        BLOCK_D=blocks.d,
        num_warps=blocks.warps,
    )
    dk = grads.k if HK == D else grads.k.view(B, Y, X, HK, D // HK).sum(-1).to(k.dtype)
    dw = None if dw is None else dw.view(HK, D // HK, S, S).sum(1).to(w.dtype)
    return grads.q, dk, grads.v, dw


@torch.library.custom_op("aft::triton_conv2d", mutates_args=())
def _conv2d_op(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    global_connectivity: bool,
    tile_d: int,
    warps: int,
    store_lse: bool,
    w_grad: bool,
) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` of the forward kernels; ``lse`` ``(B, Y, X, D)`` float32 if ``store_lse``,
    else empty. ``w_grad`` is for the backward."""
    launch = _launch(v, w, global_connectivity, Blocks(d=tile_d, warps=warps))
    with on_device(v):
        out, lse = _forward(q, k, v, w, launch, store_lse)
    return out, (v.new_empty(0, dtype=torch.float32) if lse is None else lse)


@_conv2d_op.register_fake
def _(q, k, v, w, global_connectivity, tile_d, warps, store_lse, w_grad):
    return torch.empty_like(v), v.new_empty(v.shape if store_lse else 0, dtype=torch.float32)


@torch.library.custom_op("aft::triton_conv2d_backward", mutates_args=())
def _conv2d_backward_op(
    dout: Tensor,
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    out: Tensor,
    lse: Tensor,
    global_connectivity: bool,
    tile_d: int,
    warps: int,
    store_lse: bool,
    w_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dq, dk, dv, dw)``: ``dq`` empty without ``q``, ``dw`` zeros unless ``w_grad``."""
    launch = _launch(v, w, global_connectivity, Blocks(d=tile_d, warps=warps))
    with on_device(v):
        dq, dk, dv, dw = _backward(q, k, v, w, out, lse, dout, launch, w_grad)
    return (dout.new_empty(0) if dq is None else dq), dk, dv, (torch.zeros_like(w) if dw is None else dw)


connect(_conv2d_op, _conv2d_backward_op, tensors=4)


def aft_conv2d(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    global_connectivity: bool = True,
    blocks: Blocks | None = None,
) -> Tensor:
    """AFT-conv2d, Eq. 6 (non-causal); arguments as :func:`aft.ops.aft_conv2d`.

    Args:
        q, v: ``(B, Y, X, D)``; ``q=None`` drops the query gate.
        k: ``(B, Y, X, H)``, one key channel per head (``H | D``), ``X <= MAX_GRID_COLUMNS``.
        w: ``(H, S, S)`` kernel of position biases, ``S`` odd; ``w[h, a, b]`` is the bias
            of key ``(y + a - S//2, x + b - S//2)``.
        global_connectivity: ``False`` puts ``-inf`` outside the kernel (§5.3 ablation).
        blocks: launch shape (:class:`aft.kernels.common.Blocks`): only ``d`` channels per
            program and ``warps`` apply, a tile holds a whole grid row; default
            :func:`default_blocks`.

    Returns:
        ``(B, Y, X, D)`` in ``v``'s dtype.
    """
    blocks = blocks or default_blocks(v)
    q = None if q is None else q.contiguous()
    k, v, w = k.contiguous(), v.contiguous(), w.contiguous()
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, w))
    out, _ = _conv2d_op(q, k, v, w, global_connectivity, blocks.d, blocks.warps, grad, grad and w.requires_grad)
    return out
