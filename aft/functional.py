"""The AFT operations of Zhai et al. (2021), §3, as pure functions.

Every function returns ``sigmoid(q) * avg`` (Eq. 2), where for position ``t`` and
channel ``c``::

    avg[t, c] = sum_t' exp(k[t', c] + w[t, t']) v[t', c] / sum_t' exp(k[t', c] + w[t, t'])

(``q=None`` returns ``avg`` itself, the "w/o q" ablation of Table 12). In causal mode
the sums run over ``t' <= t`` only.

Variants and how they are computed (memory for autograd in brackets):

* :func:`aft_full`    Eq. 2. Two matrix products ``exp(w) @ (exp(k) * v)`` and
  ``exp(w) @ exp(k)`` [O(T^2 + T d)], in a few row blocks when causal.
* :func:`aft_simple`  Eq. 5. A softmax over time, or prefix sums when causal, with its own
  backward [O(T d)].
* :func:`aft_local`   Eq. 4. Positive terms only: prefix (and suffix) sums over the
  positions outside the window plus a banded ``exp(k + w)`` sum inside it, computed block by
  block with matrix products, with its own backward [O(T d + T s)].
* :func:`aft_conv1d`  Eq. 6 with a Toeplitz bias per head; the same banded machinery.
* :func:`aft_conv2d`  Eq. 6 on a 2-d grid: a depthwise ``conv2d`` inside the kernel plus
  global sums over the rows above/below and the columns left/right of it, with its own
  backward [O(Y X d)].

Numerics. Exponentials are taken after subtracting separable shifts (a row max of the
bias, a per-channel max of the keys per block), so nothing overflows; float32 products of
two shifted exponentials are exact unless the largest term of a sum is below ~e^-57 of
its shift. The prefix and suffix sums over whole sequences (bias 0) run in float64 against
each channel's largest key, exact unless a sum lies ``_MAX_KEY_RANGE`` = 500 nats below it.
Both are checked on the computed denominators: if one fails (keys and biases both of
magnitude ~1e2 can do it) the call is recomputed by :func:`_exact_rows`, a row-chunked
log-sum-exp that is exact for any scale and saves no T x T x d tensor.
Under autocast the core runs in float32 and the result is cast back to ``v``'s dtype.

Triton. :func:`aft_simple`, :func:`aft_local`, :func:`aft_conv1d` and :func:`aft_conv2d`
run the Triton kernels of :mod:`aft.kernels` (forward and backward, O(T d) memory, exact for
any scale) whenever :func:`aft.kernels.supports` their tensors: CUDA tensors of a float16,
bfloat16 or float32 dtype (CPU tensors under ``TRITON_INTERPRET=1``); otherwise the PyTorch
code below.

The ``exp(w) - 1`` form of Eq. 6 is never used: it subtracts when ``w < 0`` and loses
precision; AFT-local and AFT-conv sum ``exp(k)`` outside the window and ``exp(k + w)``
inside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from aft import kernels

# A computed (shifted) denominator below this means the largest term lay ~57 nats under
# its shift: float32 products may have flushed to zero, so recompute exactly.
_MIN_SHIFTED_DENOMINATOR = 1e-25
# Elements of the (B, chunk, T, channels) logits tensor of the exact path.
_EXACT_CHUNK_ELEMENTS = 1 << 22
_NEG = -1e30  # "minus infinity" for padded keys that keeps x - max finite
# Largest gap (nats) between a channel's largest key and a sum of the global float64 scans
# (:func:`_global_exp`); wider-spread keys take the exact path.
_MAX_KEY_RANGE = 500.0

FactorizedBias = tuple[Tensor, Tensor]
"""``(u, v)`` with shapes ``(T, d')`` each, standing for ``w = u @ v.T`` (Eq. 7)."""

BiasRows = Callable[[int, int], Tensor]
"""``rows(r0, r1) -> (Hb, r1 - r0, T)``: bias rows, ``-inf`` where a pair is excluded."""


# --------------------------------------------------------------------------- public API


def aft_full(
    q: Tensor | None, k: Tensor, v: Tensor, w: Tensor, causal: bool = False
) -> Tensor:
    """AFT-full, Eq. 2.

    Args:
        q, k, v: ``(B, T, D)``; ``q=None`` drops the query gate.
        w: ``(T, T)`` pair-wise position bias, ``w[t, t']``.
        causal: restrict the sums to ``t' <= t``.

    Returns:
        ``(B, T, D)``.
    """
    _check_same_shape(k, v, "k", "v")
    T = k.shape[1]
    _check_shape(w, (T, T), "w")
    with _float32_core(k) as cast:
        k32, v32, w32 = cast(k), cast(v), cast(w)
        avg = _full_matmul(k32, v32, w32, causal)
        if avg is None:
            avg = _exact_rows(k32, v32, lambda r0, r1: w32[r0:r1].unsqueeze(0), causal)
    return _gate(q, avg, v)


def aft_simple(q: Tensor | None, k: Tensor, v: Tensor, causal: bool = False) -> Tensor:
    """AFT-simple, Eq. 5: ``sigmoid(q) * sum_t' softmax(k)_t' * v_t'``.

    Args:
        q, k, v: ``(B, T, D)``; ``q=None`` drops the query gate.
        causal: restrict the sums to ``t' <= t`` (float64 prefix sums, O(T D) time and
            memory; keys spread over more than 500 nats take the exact path).

    Returns:
        ``(B, T, D)``.
    """
    _check_same_shape(k, v, "k", "v")
    if _kernels_take(q, v, k):
        return kernels.aft_simple(q, k, v, causal)
    with _float32_core(k) as cast:
        k32, v32 = cast(k), cast(v)
        if causal:
            try:
                avg = _CausalSimpleAverage.apply(k32, v32)
            except _Underflow:
                avg = _exact_rows(k32, v32, lambda r0, r1: k32.new_zeros(1, r1 - r0, k32.shape[1]), causal)
        else:
            avg = (torch.softmax(k32, dim=1) * v32).sum(dim=1, keepdim=True)
            avg = avg.expand_as(v32)
    return _gate(q, avg, v)


def aft_local(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    w: Tensor | FactorizedBias,
    window: int,
    causal: bool = False,
) -> Tensor:
    """AFT-local, Eq. 4: ``w[t, t']`` is used where ``|t - t'| < window`` and is 0 elsewhere.

    Positions outside the window still contribute with bias 0 (global connectivity);
    ``window=0`` is AFT-simple.

    Args:
        q, k, v: ``(B, T, D)``; ``q=None`` drops the query gate.
        w: ``(T, T)`` dense bias, or a pair ``(u, v)`` of ``(T, d')`` factors with
            ``w = u v^T`` (Eq. 7), which is never materialized as ``T x T``.
        window: the local window size ``s`` of Eq. 4.
        causal: restrict the sums to ``t' <= t``; the window is then ``t - s < t' <= t``.

    Returns:
        ``(B, T, D)``.
    """
    _check_same_shape(k, v, "k", "v")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    T = k.shape[1]
    if window == 0:
        return aft_simple(q, k, v, causal=causal)
    factorized = isinstance(w, (tuple, list))
    if factorized:
        _check_shape(w[0], (T, w[0].shape[-1]), "w[0] (u)")
        _check_shape(w[1], (T, w[0].shape[-1]), "w[1] (v)")
    else:
        _check_shape(w, (T, T), "w")
    if _kernels_take(q, v, k, *(w if factorized else (w,))):
        return kernels.aft_local(q, k, v, w, window, causal)
    with _float32_core(k) as cast:
        k32, v32 = cast(k), cast(v)
        bias = (cast(w[0]), cast(w[1])) if factorized else cast(w)
        band = _local_band_blocks(bias, T, window, causal)
        avg = _banded(k32, v32, band, window, causal, global_connectivity=True)
        if avg is None:
            rows = _local_bias_rows(bias, T, window)
            avg = _exact_rows(k32, v32, rows, causal)
    return _gate(q, avg, v)


def aft_conv1d(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    causal: bool = False,
    global_connectivity: bool = True,
) -> Tensor:
    """AFT-conv on a 1-d sequence, Eq. 6 (computed as positive sums, see module doc).

    Channel ``c`` of ``D`` belongs to head ``c // (D // H)``. Non-causal: ``w[h, j]`` is the
    bias for ``t' = t + j - S//2`` (``S`` odd). Causal: ``w[h, j]`` is the bias for
    ``t' = t - j``. Outside the kernel the bias is 0 (global sums), so the result equals
    :func:`aft_full` with a Toeplitz bias per head.

    Args:
        q, v: ``(B, T, D)``; ``q=None`` drops the query gate.
        k: ``(B, T, H)``, one key channel per head.
        w: ``(H, S)`` kernel of position biases.
        causal: restrict the sums to ``t' <= t``.
        global_connectivity: ``False`` gives the degenerate variant of §5.3 with bias
            ``-inf`` outside the kernel.

    Returns:
        ``(B, T, D)``.
    """
    H, S = _check_heads(k, v, w, ndim=1)
    if not causal and S % 2 == 0:
        raise ValueError(f"non-causal aft_conv1d needs an odd kernel size, got S={S}")
    if _kernels_take(q, v, k, w):
        return kernels.aft_conv1d(q, k, v, w, causal, global_connectivity)
    T = k.shape[1]
    window = S if causal else S // 2 + 1
    with _float32_core(k) as cast:
        k32, v32, w32 = cast(k), cast(v), cast(w)
        band = _conv1d_band_blocks(w32, window, causal)
        avg = _banded(k32, v32, band, window, causal, global_connectivity)
        if avg is None:
            rows = _conv1d_bias_rows(w32, T, causal, global_connectivity)
            avg = _exact_rows(k32, v32, rows, causal)
    return _gate(q, avg, v)


def aft_conv2d(
    q: Tensor | None, k: Tensor, v: Tensor, w: Tensor, global_connectivity: bool = True
) -> Tensor:
    """AFT-conv on a 2-d grid, Eq. 6 (non-causal), for any grid size ``Y x X``.

    ``w[h, a, b]`` is the bias for ``(y + a - S//2, x + b - S//2)``: cross-correlation as in
    ``torch.nn.functional.conv2d`` with padding ``S//2``. Outside the kernel the bias is 0
    (global sums over the whole grid), so the result equals :func:`aft_full` over the
    raster-ordered grid with a 2-d Toeplitz bias per head.

    Args:
        q, v: ``(B, Y, X, D)``; ``q=None`` drops the query gate.
        k: ``(B, Y, X, H)``, one key channel per head.
        w: ``(H, S, S)`` kernel of position biases, ``S`` odd.
        global_connectivity: ``False`` puts ``-inf`` outside the kernel (§5.3 ablation).

    Returns:
        ``(B, Y, X, D)``.
    """
    H, S = _check_heads(k, v, w, ndim=2)
    if S % 2 == 0:
        raise ValueError(f"aft_conv2d needs an odd kernel size, got S={S}")
    B, Y, X, D = v.shape
    if X <= kernels.MAX_GRID_COLUMNS and _kernels_take(q, v, k, w):
        return kernels.aft_conv2d(q, k, v, w, global_connectivity)
    with _float32_core(k) as cast:
        k32, v32, w32 = cast(k), cast(v), cast(w)
        avg = _conv2d_sums(k32, v32, w32, global_connectivity)
        if avg is None:
            rows = _conv2d_bias_rows(w32, Y, X, global_connectivity)
            flat = _exact_rows(k32.reshape(B, Y * X, H), v32.reshape(B, Y * X, D), rows, False)
            avg = flat.reshape(B, Y, X, D)
    return _gate(q, avg, v)


def position_bias_entropy(w: Tensor) -> Tensor:
    """Sparsity regularizer of Eq. 9: ``sum_h entropy(softmax(w[h]))``.

    Args:
        w: ``(H, ...)`` position biases; the softmax runs over all entries of a head.

    Returns:
        A scalar.
    """
    logits = w.reshape(w.shape[0], -1).float()
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum()


# ------------------------------------------------------------------------------ helpers


def upcast(t: Tensor) -> Tensor:
    """float16/bfloat16 to float32 (the dtype of the AFT core); other dtypes unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


class _float32_core:
    """Context that disables autocast and casts tensors to float32 (the AFT core)."""

    def __init__(self, like: Tensor) -> None:
        self._autocast = torch.autocast(like.device.type, enabled=False)

    def __enter__(self) -> Callable[[Tensor], Tensor]:
        self._autocast.__enter__()
        return upcast

    def __exit__(self, *exc: object) -> None:
        self._autocast.__exit__(*exc)


def _kernels_take(q: Tensor | None, v: Tensor, *tensors: Tensor) -> bool:
    """Whether this call goes to the Triton kernels (which gate with ``q`` themselves)."""
    if q is not None:
        _check_same_shape(q, v, "q", "v")
    return kernels.supports(q, v, *tensors)


def _gate(q: Tensor | None, avg: Tensor, v: Tensor) -> Tensor:
    """``sigmoid(q) * avg`` (Eq. 2) or ``avg`` alone, in ``v``'s dtype."""
    if q is not None:
        _check_same_shape(q, v, "q", "v")
        avg = torch.sigmoid(q.to(avg.dtype)) * avg
    return avg.to(v.dtype)


def _check_shape(t: Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _check_same_shape(a: Tensor, b: Tensor, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_heads(k: Tensor, v: Tensor, w: Tensor, ndim: int) -> tuple[int, int]:
    """Validate AFT-conv shapes; returns ``(H, S)``."""
    if k.shape[:-1] != v.shape[:-1] or k.dim() != ndim + 2:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must share (B, *grid) with {ndim}-d grid")
    H, D = k.shape[-1], v.shape[-1]
    if w.dim() != ndim + 1 or w.shape[0] != H or len(set(w.shape[1:])) != 1:
        raise ValueError(f"w must have shape (H={H}{', S' * ndim}), got {tuple(w.shape)}")
    if D % H:
        raise ValueError(f"heads H={H} must divide the value dim D={D}")
    return H, w.shape[1]


class _CausalSimpleAverage(torch.autograd.Function):
    """Causal AFT-simple average, ``avg[t] = sum_{t' <= t} exp(k[t'] - lse[t]) v[t']``, ``(B, T, D)``.

    Raises :class:`_Underflow` when the keys span more than ``_MAX_KEY_RANGE`` (see
    :func:`_global_exp`). ``lse`` is the log of ``sum_{t' <= t} exp(k[t'])``. Saves ``k``,
    ``v``, ``lse`` and ``avg`` (four ``(B, T, D)`` tensors) instead of autograd's graph of
    the scans. With ``p[t, t'] = exp(k[t'] - lse[t])`` (``t' <= t``) and ``G = dL/davg``::

        dv[t'] = exp(k[t']) sum_{t >= t'} exp(-lse[t]) G[t]
        dk[t'] = v[t'] dv[t'] - exp(k[t']) sum_{t >= t'} exp(-lse[t]) G[t] avg[t]

    Forward and backward sums are float64 prefix (suffix) sums (:func:`_query_sums`).
    """

    @staticmethod
    def forward(ctx, k: Tensor, v: Tensor) -> Tensor:  # noqa: D102
        ek, key_max = _global_exp(k)
        den = ek.cumsum(dim=1)
        lse = torch.log(den) + key_max
        _check_key_range(lse, key_max)
        avg = ((ek * v).cumsum(dim=1) / den).to(v.dtype)
        lse = lse.to(k.dtype)
        ctx.save_for_backward(k, v, lse, avg)
        return avg

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        k, v, lse, avg = ctx.saved_tensors
        factors = _query_factors(k, lse)
        dv = _query_sums(grad, *factors, 0, causal=True)
        return v * dv - _query_sums(grad * avg, *factors, 0, causal=True), dv


def _global_exp(k: Tensor) -> tuple[Tensor, Tensor]:
    """``exp(k - max_t k)`` in float64 ``(B, T, C)`` and its shift ``(B, 1, C)``, one per channel.

    Every term is ``<= 1``. float64 holds ``e^-708``, so a sum whose largest term is within
    ``_MAX_KEY_RANGE`` of the shift is exact to float32 precision, and a term it drops to 0
    was below ``e^-208`` of that sum. Callers check the range on their sums.
    """
    key_max = k.amax(dim=1, keepdim=True).double()
    return torch.exp(k.double() - key_max), key_max


def _full_matmul(k: Tensor, v: Tensor, w: Tensor, causal: bool) -> Tensor | None:
    """AFT-full with shifted exponentials and matrix products; ``None`` if underflowed.

    Causal mode runs a few row blocks, each with a key shift over the keys it can see,
    so that keys growing along the sequence do not flush the early rows to zero.
    """
    B, T, D = k.shape
    n_blocks = min(8, math.ceil(T / 128)) if causal else 1
    size = math.ceil(T / n_blocks)
    outputs = []
    for r0 in range(0, T, size):
        r1 = min(T, r0 + size)
        c1 = r1 if causal else T
        rows = w[r0:r1, :c1]
        if causal:
            future = torch.ones(r1 - r0, c1, dtype=torch.bool, device=w.device).triu(r0 + 1)
            rows = rows.masked_fill(future, -math.inf)
        ew = torch.exp(rows - rows.detach().amax(dim=1, keepdim=True))  # (R, C)
        ek = torch.exp(k[:, :c1] - k[:, :c1].detach().amax(dim=1, keepdim=True))  # (B, C, D)
        den = ew @ ek
        if not bool((den >= _MIN_SHIFTED_DENOMINATOR).all()):
            return None
        outputs.append((ew @ (ek * v[:, :c1])) / den)
    return torch.cat(outputs, dim=1)


# ---------------------------------------------------------------- banded (local, conv1d)
#
# A band bias is stored in row blocks, ``(Hb, n_blocks or 1, C, Wd)`` with ``Hb`` = 1 (one
# bias for all channels, AFT-local) or ``Hk`` (one per key head, AFT-conv1d; the same
# Toeplitz block for every row block). Row ``i`` of block ``n`` is position ``t = n C + i``;
# column ``j`` is key ``t' = n C + j - (window - 1)``. Entries outside the band or with
# ``t'`` outside ``[0, T)`` are ``-inf``.


def _block_size(window: int) -> int:
    return max(window, 64)


def _band_geometry(T: int, window: int, causal: bool) -> tuple[int, int, int]:
    """``(C, n_blocks, Wd)``: block size, number of row blocks and band columns."""
    C = _block_size(window)
    n = math.ceil(T / C)
    width = C + window - 1 if causal else C + 2 * (window - 1)
    return C, n, width


def _band_offsets(C: int, width: int, window: int, device: torch.device) -> Tensor:
    """``(C, Wd)`` offsets ``t' - t`` of the band columns of a block."""
    i = torch.arange(C, device=device).unsqueeze(1)
    j = torch.arange(width, device=device).unsqueeze(0)
    return j - i - (window - 1)


def _in_band(offsets: Tensor, window: int, causal: bool) -> Tensor:
    return (offsets <= 0) & (offsets > -window) if causal else offsets.abs() < window


def _local_band_blocks(bias: Tensor | FactorizedBias, T: int, window: int, causal: bool) -> Tensor:
    """AFT-local band bias ``(1, n, C, Wd)`` from a dense or factorized ``w``."""
    C, n, width = _band_geometry(T, window, causal)
    device = bias[0].device if isinstance(bias, tuple) else bias.device
    offsets = _band_offsets(C, width, window, device)
    rows = torch.arange(n, device=device).view(n, 1, 1) * C + torch.arange(C, device=device).view(1, C, 1)
    cols = rows + offsets  # (n, C, Wd) absolute key positions
    valid = _in_band(offsets, window, causal) & (rows < T) & (cols >= 0) & (cols < T)
    if isinstance(bias, tuple):
        u, v = bias
        u_blocks = F.pad(u, (0, 0, 0, n * C - T)).view(n, C, -1)
        values = u_blocks @ _band_columns(v, 0, window, causal)  # (n, C, d') @ (n, d', Wd)
    else:
        values = bias[rows.clamp(max=T - 1), cols.clamp(0, T - 1)]
    return values.masked_fill(~valid, -math.inf).unsqueeze(0)


def _conv1d_band_blocks(w: Tensor, window: int, causal: bool) -> Tensor:
    """AFT-conv1d band bias ``(H, 1, C, Wd)``: the same Toeplitz block for every block."""
    C, _, width = _band_geometry(1, window, causal)
    offsets = _band_offsets(C, width, window, w.device)
    index = (-offsets if causal else offsets + window - 1).clamp(0, w.shape[1] - 1)
    values = w[:, index]  # (H, C, Wd)
    values = values.masked_fill(~_in_band(offsets, window, causal), -math.inf)
    return values.unsqueeze(1)


def _banded(
    k: Tensor, v: Tensor, bias: Tensor, window: int, causal: bool, global_connectivity: bool
) -> Tensor | None:
    """Weighted average with a banded bias (AFT-local, AFT-conv1d); ``None`` if underflowed.

    Args:
        k: ``(B, T, Hk)`` keys, ``Hk`` divides ``D``; channel ``c`` uses key ``c // (D // Hk)``.
        v: ``(B, T, D)``.
        bias: band bias blocks (see above), ``Hb`` = 1 or ``Hk``.

    Returns:
        ``(B, T, D)``, differentiable in ``k``, ``v`` and ``bias`` (:class:`_BandedAverage`).
    """
    try:
        return _BandedAverage.apply(k, v, bias, window, causal, global_connectivity)
    except _Underflow:
        return None


class _Underflow(Exception):
    """A shifted denominator fell below ``_MIN_SHIFTED_DENOMINATOR``: recompute exactly."""


class _BandedAverage(torch.autograd.Function):
    """Weighted average with a banded bias, ``(B, T, D)``; raises :class:`_Underflow`.

    Saves ``k``, ``v``, the band, the average and the per-head log-normalizer ``lse``
    ``(B, T, Hk)``: no ``T x window x D`` tensor. With ``p[t, t'] = exp(k[t'] + w[t, t'] -
    lse[t])`` and ``G = dL/davg``::

        dv[t']    = sum_t p[t, t'] G[t]
        dk[t']    = sum_(c in head) v[t'] dv[t'] - sum_t p[t, t'] sum_(c in head) G[t] avg[t]
        dw[t, t'] = sum_c p[t, t'] G[t] (v[t'] - avg[t])     (band entries only)

    Outside the band (bias 0) the sums over ``t`` are float64 suffix (and prefix) sums
    (:func:`_query_sums`); inside it, block matrix products of the same shifted
    exponentials as the forward pass, times ``exp(shift[t] - lse[t])``. That factor is at
    most ``1 / _MIN_SHIFTED_DENOMINATOR`` (the forward pass checked it), so nothing
    overflows, and a product that underflows stands for ``p < 1e-13``.
    """

    @staticmethod
    def forward(ctx, k: Tensor, v: Tensor, bias: Tensor, window: int, causal: bool, global_connectivity: bool) -> Tensor:  # noqa: D102
        avg, lse = _banded_forward(k, v, bias, window, causal, global_connectivity)
        ctx.save_for_backward(k, v, bias, avg, lse)
        ctx.band = (window, causal, global_connectivity)
        return avg

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        k, v, bias, avg, lse = ctx.saved_tensors
        window, causal, global_connectivity = ctx.band
        B, T, Hk = k.shape
        D = v.shape[-1]
        G = D // Hk
        C, n, width = _band_geometry(T, window, causal)
        weighted = (grad * avg).view(B, T, Hk, G).sum(-1)  # per key head
        if global_connectivity:
            factors = _query_factors(k, lse)
            dv = _query_sums(grad, *factors, window, causal)
            d_avg = _query_sums(weighted, *factors, window, causal)
        else:
            dv, d_avg = torch.zeros_like(v), torch.zeros_like(k)

        ek, key_shift = _key_blocks(k, window, causal)  # (B, n, Hk, Wd), (B, n, Hk, 1)
        ew, bias_shift = _shifted_exp(bias)

        def rows(x: Tensor, fill: float = 0.0) -> Tensor:
            """``(B, T, F) -> (B, n, C, F)``, ``fill`` past ``T``."""
            return F.pad(x, (0, 0, 0, n * C - T), value=fill).view(B, n, C, -1)

        scale = torch.exp(_block_shift(bias_shift, key_shift) - rows(lse, -_NEG))  # (B, n, C, Hk)
        r_grad, r_avg = _per_channel(scale, G) * rows(grad), scale * rows(weighted)
        ek_c = _per_channel(ek, G, dim=2).transpose(-1, -2)  # (B, n, Wd, D)
        ekv = ek_c * _band_columns(v, 1, window, causal).transpose(-1, -2)
        if bias.shape[0] == 1:
            e = ew[0].transpose(-1, -2)  # (n or 1, Wd, C)
            s_grad, s_avg = e @ r_grad, e @ r_avg  # (B, n, Wd, D), (B, n, Wd, Hk)
            dbias = ew[0] * (r_grad @ ekv.transpose(-1, -2) - r_avg @ ek)
            dbias = dbias.sum(0, keepdim=True)
        else:
            e = ew.expand(-1, n, -1, -1)
            r_grad = r_grad.view(B, n, C, Hk, G)
            s_grad = torch.einsum("hncw,bnchg->bnwhg", e, r_grad).reshape(B, n, width, D)
            s_avg = torch.einsum("hncw,bnch->bnwh", e, r_avg)
            dbias = e * (
                torch.einsum("bnchg,bnwhg->hncw", r_grad, ekv.view(B, n, width, Hk, G))
                - torch.einsum("bnch,bnhw->hncw", r_avg, ek)
            )
        if dbias.shape[1] != bias.shape[1]:
            dbias = dbias.sum(1, keepdim=True)
        dv = dv + _overlap_add(ek_c * s_grad, T, window)
        d_avg = d_avg + _overlap_add(ek.transpose(-1, -2) * s_avg, T, window)
        dk = (v * dv).view(B, T, Hk, G).sum(-1) - d_avg
        return dk, dv, dbias if ctx.needs_input_grad[2] else None, None, None, None


def _banded_forward(
    k: Tensor, v: Tensor, bias: Tensor, window: int, causal: bool, global_connectivity: bool
) -> tuple[Tensor, Tensor]:
    """``(avg (B, T, D), lse (B, T, Hk))`` of :func:`_banded`; raises :class:`_Underflow`.

    Inside the band: ``sum exp(k + w) v`` per row block as matrix products against the
    block's keys. Outside it (bias 0): float64 prefix (and suffix) sums of ``exp(k - max k)``
    and of ``exp(k - max k) v`` (:func:`_global_exp`, :func:`_outside_window_sums`). Both are
    merged per position against the larger of their shifts, in float64.

    Raises :class:`_Underflow` when the band's sum underflowed where it matters (its largest
    term ~57 nats under its shift and not outweighed by the sum outside the band) or when a
    normalizer lies more than ``_MAX_KEY_RANGE`` under the keys' maximum.
    """
    B, T, Hk = k.shape
    D = v.shape[-1]
    G = D // Hk
    C, n, width = _band_geometry(T, window, causal)
    ek, key_shift = _key_blocks(k, window, causal)
    ew, bias_shift = _shifted_exp(bias)
    ekv = _per_channel(ek, G, dim=2) * _band_columns(v, 1, window, causal)  # (B, n, D, Wd)
    if bias.shape[0] == 1:
        num = ew[0] @ ekv.transpose(-1, -2)  # (B, n, C, D)
        den = ew[0] @ ek.transpose(-1, -2)  # (B, n, C, Hk)
    else:
        e = ew.expand(-1, n, -1, -1)
        num = torch.einsum("hncw,bnhgw->bnchg", e, ekv.view(B, n, Hk, G, width)).reshape(B, n, C, D)
        den = torch.einsum("hncw,bnhw->bnch", e, ek)
    shift = _block_shift(bias_shift, key_shift)
    num, den, shift = (x.reshape(B, n * C, -1)[:, :T] for x in (num, den, shift))
    shift = shift.double()
    if global_connectivity:
        ek_all, key_max = _global_exp(k)  # (B, T, Hk), (B, 1, Hk)
        den_out = _outside_window_sums(ek_all, window, causal)
        num_out = _outside_window_sums(_per_channel(ek_all, G) * v, window, causal)
    else:
        key_max, den_out = torch.full_like(shift[:, :1], -math.inf), 0.0
    ref = torch.maximum(shift, key_max)
    in_scale, out_scale = torch.exp(shift - ref), torch.exp(key_max - ref)
    den_out = den_out * out_scale
    total = den * in_scale + den_out
    if not bool((total >= _MIN_SHIFTED_DENOMINATOR * torch.maximum(in_scale, den_out)).all()):
        raise _Underflow
    lse = torch.log(total) + ref
    _check_key_range(lse, key_max)
    avg = num * _per_channel((in_scale / total).to(num.dtype), G)  # factors <= 1 / _MIN_SHIFTED_DENOMINATOR
    if global_connectivity:  # float64 factors up to e^_MAX_KEY_RANGE
        avg = avg + (num_out * _per_channel(out_scale / total, G)).to(num.dtype)
    return avg, lse.to(k.dtype)


def _band_columns(x: Tensor, dim: int, window: int, causal: bool, fill: float = 0.0) -> Tensor:
    """Each row block's band of ``x`` along ``dim`` (a view): block ``n``, column ``j`` is
    position ``n C + j - (window - 1)``, ``fill`` outside ``[0, T)``. ``dim`` becomes the
    block index and a last dimension of ``Wd`` columns is added: ``(B, T, F) -> (B, n, F, Wd)``
    for ``dim=1``, ``(T, F) -> (n, F, Wd)`` for ``dim=0``."""
    T = x.shape[dim]
    C, n, width = _band_geometry(T, window, causal)
    pad = [0, 0] * (x.dim() - 1 - dim) + [window - 1, n * C - T + (0 if causal else window - 1)]
    return F.pad(x, pad, value=fill).unfold(dim, width, C)


def _key_blocks(k: Tensor, window: int, causal: bool) -> tuple[Tensor, Tensor]:
    """Shifted ``exp`` of each row block's keys, ``(B, n, Hk, Wd)``, and the shifts ``(B, n, Hk, 1)``."""
    blocks = _band_columns(k, 1, window, causal, fill=_NEG)
    shift = blocks.amax(dim=-1, keepdim=True)
    return torch.exp(blocks - shift), shift


def _shifted_exp(bias: Tensor) -> tuple[Tensor, Tensor]:
    """``exp(bias - shift)`` with ``shift`` each row's largest entry (0 for a row of ``-inf``)."""
    shift = bias.amax(dim=-1, keepdim=True)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    return torch.exp(bias - shift), shift


def _block_shift(bias_shift: Tensor, key_shift: Tensor) -> Tensor:
    """``(B, n, C, Hk)`` log-scale of a block's products: row bias shift plus key shift."""
    if bias_shift.shape[0] == 1:
        return bias_shift[0] + key_shift.transpose(-1, -2)
    return bias_shift.squeeze(-1).permute(1, 2, 0) + key_shift.squeeze(-1).unsqueeze(2)


def _overlap_add(blocks: Tensor, T: int, window: int) -> Tensor:
    """Sum per-block band columns onto key positions, ``(B, n, Wd, F) -> (B, T, F)``.

    Column ``j`` of block ``n`` is key ``n C + j - (window - 1)``; the bands of consecutive
    blocks overlap, so each key collects from up to ``ceil(Wd / C)`` blocks.
    """
    B, n, width, features = blocks.shape
    C = _block_size(window)
    pieces = math.ceil(width / C)
    blocks = F.pad(blocks, (0, 0, 0, pieces * C - width))
    out = blocks.new_zeros(B, (n + pieces - 1) * C, features)
    for i in range(pieces):
        out[:, i * C : (i + n) * C] += blocks[:, :, i * C : (i + 1) * C].reshape(B, n * C, features)
    return out[:, window - 1 : window - 1 + T]


def _check_key_range(lse: Tensor, key_max: Tensor) -> None:
    """Raise :class:`_Underflow` if a log-normalizer lies more than ``_MAX_KEY_RANGE`` under
    its channel's key maximum: past the reach of the float64 sums of :func:`_global_exp`."""
    if not bool((lse - key_max >= -_MAX_KEY_RANGE).all()):
        raise _Underflow


def _query_factors(k: Tensor, lse: Tensor) -> tuple[Tensor, Tensor]:
    """``exp(k[t'] - lse[t])`` as ``ek[t'] * weight[t]``, both float64 ``(B, T, Hk)``.

    ``ek = exp(k - max k)`` (:func:`_global_exp`) and ``weight = exp(max k - lse)``; the
    forward pass checked ``max k - lse <= _MAX_KEY_RANGE``, so neither overflows.
    """
    ek, key_max = _global_exp(k)
    return ek, torch.exp(key_max - lse.double())


def _query_sums(x: Tensor, ek: Tensor, weight: Tensor, window: int, causal: bool) -> Tensor:
    """``exp(k[t']) sum_t exp(-lse[t]) x[t]`` over the queries ``t`` that take key ``t'`` with bias 0.

    Those are ``t >= t' + window`` (and ``t <= t' - window`` unless causal); causal
    ``window = 0`` gives all ``t >= t'``. float64 suffix (and prefix) sums.

    Args:
        x: ``(B, T, D)`` or per key head ``(B, T, Hk)``.
        ek, weight: ``(B, T, Hk)`` from :func:`_query_factors`.

    Returns:
        ``x``'s shape and dtype.
    """
    G = x.shape[-1] // ek.shape[-1]
    sums = _outside_window_sums((_per_channel(weight, G) * x).flip(1), window, causal).flip(1)
    return (_per_channel(ek, G) * sums).to(x.dtype)


def _per_channel(x: Tensor, group: int, dim: int = -1) -> Tensor:
    """Repeat each key head ``group`` times along ``dim`` so it lines up with ``D`` channels."""
    return x if group == 1 else x.repeat_interleave(group, dim=dim)


def _outside_window_sums(x: Tensor, window: int, causal: bool, dim: int = 1) -> Tensor:
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


# ------------------------------------------------------------------------------ conv2d


def _conv2d_sums(k: Tensor, v: Tensor, w: Tensor, global_connectivity: bool) -> Tensor | None:
    """AFT-conv2d weighted average ``(B, Y, X, D)``; ``None`` if underflowed.

    Differentiable in ``k``, ``v`` and ``w`` through :class:`_Conv2dAverage`.
    """
    try:
        return _Conv2dAverage.apply(k, v, w, global_connectivity)
    except _Underflow:
        return None


class _Conv2dAverage(torch.autograd.Function):
    """AFT-conv2d weighted average, ``(B, Y, X, D)``; raises :class:`_Underflow`.

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
    """

    @staticmethod
    def forward(ctx, k: Tensor, v: Tensor, w: Tensor, global_connectivity: bool) -> Tensor:  # noqa: D102
        H, S, G = w.shape[0], w.shape[-1], v.shape[-1] // w.shape[0]
        ek, ew, inside, outside = _conv2d_factors(k, w, global_connectivity)
        ekv = _per_channel(ek, G, dim=1) * v.permute(0, 3, 1, 2)
        num = F.conv2d(ekv, _per_channel(ew, G, dim=0), padding=S // 2, groups=v.shape[-1])
        den = F.conv2d(ek, ew, padding=S // 2, groups=H) * inside
        num = num * _per_channel(inside, G, 1)
        if global_connectivity:
            den = den + _outside_kernel_sums(ek, S // 2) * outside
            num = num + _outside_kernel_sums(ekv, S // 2) * _per_channel(outside, G, 1)
        if not bool((den >= _MIN_SHIFTED_DENOMINATOR).all()):
            raise _Underflow
        avg = (num / _per_channel(den, G, dim=1)).permute(0, 2, 3, 1)
        ctx.save_for_backward(k, v, w, avg, den)
        ctx.global_connectivity = global_connectivity
        return avg

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        k, v, w, avg, den = ctx.saved_tensors
        B, Y, X, D = v.shape
        H, S = w.shape[0], w.shape[-1]
        G, r = D // H, S // 2
        ek, ew, inside, outside = _conv2d_factors(k, w, ctx.global_connectivity)
        grad_c, avg_c, v_c = (x.permute(0, 3, 1, 2) for x in (grad, avg, v))  # (B, D, Y, X)
        r_grad = grad_c / _per_channel(den, G, dim=1)  # dL/dnum
        r_avg = (grad_c * avg_c).reshape(B, H, G, Y, X).sum(2) / den  # -dL/dden
        ew_c = _per_channel(ew, G, dim=0)  # (D, 1, S, S)

        def adjoint(x: Tensor, kernel: Tensor, inside: Tensor, outside: Tensor) -> Tensor:
            """``A^T x`` for ``x`` ``(B, channels, Y, X)`` and a ``(channels, 1, S, S)`` kernel."""
            out = F.conv2d(x, kernel.flip(-1, -2), padding=r, groups=x.shape[1]) * inside
            if ctx.global_connectivity:
                out = out + _outside_kernel_sums(x, r) * outside
            return out

        dv = _per_channel(ek, G, dim=1) * adjoint(r_grad, ew_c, _per_channel(inside, G, 1), _per_channel(outside, G, 1))
        dk = (v_c * dv).reshape(B, H, G, Y, X).sum(2) - ek * adjoint(r_avg, ew, inside, outside)
        dw = None
        if ctx.needs_input_grad[2]:
            ekv = _per_channel(ek, G, dim=1) * v_c
            d_num = torch.nn.grad.conv2d_weight(ekv, ew_c.shape, r_grad, padding=r, groups=D)
            d_den = torch.nn.grad.conv2d_weight(ek, ew.shape, r_avg, padding=r, groups=H)
            dw = (ew * inside[0, :, :, :, None] * (d_num.view(H, G, S, S).sum(1, keepdim=True) - d_den)).squeeze(1)
        return dk.permute(0, 2, 3, 1), dv.permute(0, 2, 3, 1), dw, None


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
    above_below = _outside_window_sums(x.sum(dim=-1), radius + 1, causal=False, dim=-1)  # (B, C, Y)
    left_right = _outside_window_sums(x, radius + 1, causal=False, dim=-1)
    band = F.avg_pool2d(left_right, (size, 1), stride=1, padding=(radius, 0)) * size
    return above_below.unsqueeze(-1) + band


# ------------------------------------------------------------------------ exact fallback


def _exact_rows(k: Tensor, v: Tensor, rows: BiasRows, causal: bool) -> Tensor:
    """Exact weighted average for any scale: a softmax over ``t'`` per row chunk.

    Each chunk builds ``(B, chunk, T, Hk)`` logits inside a checkpoint, so autograd keeps
    only the inputs; the chunk is sized to ``_EXACT_CHUNK_ELEMENTS``. O(T^2 d) time.

    Args:
        k: ``(B, T, Hk)``; v: ``(B, T, D)``; rows: see :data:`BiasRows`.
    """
    B, T, Hk = k.shape
    chunk = max(1, _EXACT_CHUNK_ELEMENTS // (B * T * Hk))
    out = [
        checkpoint(_exact_chunk, k, v, rows, r0, min(T, r0 + chunk), causal, use_reentrant=False)
        for r0 in range(0, T, chunk)
    ]
    return torch.cat(out, dim=1)


def _exact_chunk(k: Tensor, v: Tensor, rows: BiasRows, r0: int, r1: int, causal: bool) -> Tensor:
    B, T, Hk = k.shape
    D = v.shape[-1]
    bias = rows(r0, r1).permute(1, 2, 0)  # (R, T, Hb)
    if causal:
        future = torch.arange(T, device=k.device) > torch.arange(r0, r1, device=k.device).unsqueeze(1)
        bias = bias.masked_fill(future.unsqueeze(-1), -math.inf)
    weights = torch.softmax(k.unsqueeze(1) + bias, dim=2)  # (B, R, T, Hk)
    out = torch.einsum("brth,bthg->brhg", weights, v.reshape(B, T, Hk, D // Hk))
    return out.reshape(B, r1 - r0, D)


def _local_bias_rows(bias: Tensor | FactorizedBias, T: int, window: int) -> BiasRows:
    """Rows of the AFT-local bias: ``w`` inside ``|t - t'| < window``, 0 outside."""

    def rows(r0: int, r1: int) -> Tensor:
        values = bias[0][r0:r1] @ bias[1].T if isinstance(bias, tuple) else bias[r0:r1]
        offsets = torch.arange(T, device=values.device) - torch.arange(r0, r1, device=values.device).unsqueeze(1)
        return values.masked_fill(offsets.abs() >= window, 0.0).unsqueeze(0)

    return rows


def _conv1d_bias_rows(w: Tensor, T: int, causal: bool, global_connectivity: bool) -> BiasRows:
    """Rows of the Toeplitz bias of AFT-conv1d, ``(H, R, T)``."""
    S = w.shape[1]

    def rows(r0: int, r1: int) -> Tensor:
        offsets = torch.arange(T, device=w.device) - torch.arange(r0, r1, device=w.device).unsqueeze(1)
        index = -offsets if causal else offsets + S // 2
        inside = (index >= 0) & (index < S)
        return _kernel_values(w[:, index.clamp(0, S - 1)], inside, global_connectivity)

    return rows


def _conv2d_bias_rows(w: Tensor, Y: int, X: int, global_connectivity: bool) -> BiasRows:
    """Rows of the 2-d Toeplitz bias of AFT-conv2d over the raster-ordered grid."""
    S = w.shape[-1]
    r = S // 2
    ys, xs = torch.arange(Y * X, device=w.device).div(X, rounding_mode="floor"), torch.arange(Y * X, device=w.device) % X

    def rows(r0: int, r1: int) -> Tensor:
        dy = ys.unsqueeze(0) - ys[r0:r1].unsqueeze(1) + r
        dx = xs.unsqueeze(0) - xs[r0:r1].unsqueeze(1) + r
        inside = (dy >= 0) & (dy < S) & (dx >= 0) & (dx < S)
        return _kernel_values(w[:, dy.clamp(0, S - 1), dx.clamp(0, S - 1)], inside, global_connectivity)

    return rows


def _kernel_values(values: Tensor, inside: Tensor, global_connectivity: bool) -> Tensor:
    """Kernel biases inside, 0 (global connectivity) or ``-inf`` outside the kernel."""
    return values.masked_fill(~inside, 0.0 if global_connectivity else -math.inf)
