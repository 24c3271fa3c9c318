"""AFT-simple (causal), AFT-local and AFT-conv1d on the PyTorch path: a band bias plus global sums.

Eq. 4 and 6 split each sum over keys into the band ``|t - t'| < window`` (causal:
``0 <= t - t' < window``), where the bias is ``w[t, t']``, and the rest, where it is 0
(global connectivity; ``-inf`` in the §5.3 ablation)::

    avg[t] = (sum_band exp(k + w) v + sum_out exp(k) v) / (sum_band exp(k + w) + sum_out exp(k))

Inside the band: per row block of ``C`` positions, matrix products of shifted exponentials
``exp(w - shift) @ exp(k - shift)`` against the block's ``Wd`` band columns. Outside it:
the float64 prefix sums of :mod:`aft.ops.prefix`. Causal AFT-simple is the empty band.

A band bias is stored in row blocks ``(Hb, n_blocks or 1, C, Wd)`` with ``Hb`` = 1 (one
bias for all channels, AFT-local) or ``Hk`` (one per key head, AFT-conv1d; the same
Toeplitz block for every row block). Row ``i`` of block ``n`` is position ``t = n C + i``;
column ``j`` is key ``t' = n C + j - (window - 1)``. Entries outside the band or with
``t'`` outside ``[0, T)`` are ``-inf``.

Registered as the custom ops ``aft::banded`` / ``aft::banded_backward`` and
``aft::simple_causal`` / ``aft::simple_causal_backward``: each saves ``k``, ``v``, the band,
the average and the per-head log-normalizer ``lse`` ``(B, T, Hk)``, no ``T x window x D``
tensor; a failed check sends the call to :mod:`aft.ops.exact`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from aft.ops import exact
from aft.ops.casting import FactorizedBias, autocast_off
from aft.ops.exact import BiasRows
from aft.ops.library import connect, fake_flag, flag
from aft.ops.prefix import (
    MIN_SHIFTED_DENOMINATOR,
    NEG,
    Underflow,
    check_key_range,
    global_exp,
    outside_window_sums,
    per_channel,
    query_factors,
    query_sums,
)


def block_size(window: int) -> int:
    return max(window, 64)


def band_geometry(T: int, window: int, causal: bool) -> tuple[int, int, int]:
    """``(C, n_blocks, Wd)``: block size, number of row blocks and band columns."""
    C = block_size(window)
    n = math.ceil(T / C)
    width = C + window - 1 if causal else C + 2 * (window - 1)
    return C, n, width


def band_offsets(C: int, width: int, window: int, device: torch.device) -> Tensor:
    """``(C, Wd)`` offsets ``t' - t`` of the band columns of a block."""
    i = torch.arange(C, device=device).unsqueeze(1)
    j = torch.arange(width, device=device).unsqueeze(0)
    return j - i - (window - 1)


def in_band(offsets: Tensor, window: int, causal: bool) -> Tensor:
    return (offsets <= 0) & (offsets > -window) if causal else offsets.abs() < window


def local_band_blocks(bias: Tensor | FactorizedBias, T: int, window: int, causal: bool) -> Tensor:
    """AFT-local band bias ``(1, n, C, Wd)`` from a dense or factorized ``w``."""
    C, n, width = band_geometry(T, window, causal)
    device = bias[0].device if isinstance(bias, tuple) else bias.device
    offsets = band_offsets(C, width, window, device)
    rows = torch.arange(n, device=device).view(n, 1, 1) * C + torch.arange(C, device=device).view(1, C, 1)
    cols = rows + offsets  # (n, C, Wd) absolute key positions
    valid = in_band(offsets, window, causal) & (rows < T) & (cols >= 0) & (cols < T)
    if isinstance(bias, tuple):
        u, v = bias
        u_blocks = F.pad(u, (0, 0, 0, n * C - T)).view(n, C, -1)
        values = u_blocks @ band_columns(v, 0, window, causal)  # (n, C, d') @ (n, d', Wd)
    else:
        values = bias[rows.clamp(max=T - 1), cols.clamp(0, T - 1)]
    return values.masked_fill(~valid, -math.inf).unsqueeze(0)


def conv1d_band_blocks(w: Tensor, window: int, causal: bool) -> Tensor:
    """AFT-conv1d band bias ``(H, 1, C, Wd)``: the same Toeplitz block for every block."""
    C, _, width = band_geometry(1, window, causal)
    offsets = band_offsets(C, width, window, w.device)
    index = (-offsets if causal else offsets + window - 1).clamp(0, w.shape[1] - 1)
    values = w[:, index]  # (H, C, Wd)
    values = values.masked_fill(~in_band(offsets, window, causal), -math.inf)
    return values.unsqueeze(1)


def _forward(
    k: Tensor, v: Tensor, bias: Tensor, window: int, causal: bool, global_connectivity: bool
) -> tuple[Tensor, Tensor]:
    """``(avg (B, T, D), lse (B, T, Hk))`` of a band bias; raises :class:`Underflow`.

    Inside the band: ``sum exp(k + w) v`` per row block as matrix products against the
    block's keys. Outside it (bias 0): float64 prefix (and suffix) sums of ``exp(k - max k)``
    and of ``exp(k - max k) v`` (:func:`global_exp`, :func:`outside_window_sums`). Both are
    merged per position against the larger of their shifts, in float64.

    Raises :class:`Underflow` when the band's sum underflowed where it matters (its largest
    term ~57 nats under its shift and not outweighed by the sum outside the band) or when a
    normalizer lies more than ``MAX_KEY_RANGE`` under the keys' maximum.
    """
    B, T, Hk = k.shape
    D = v.shape[-1]
    G = D // Hk
    C, n, width = band_geometry(T, window, causal)
    ek, key_shift = _key_blocks(k, window, causal)
    ew, bias_shift = _shifted_exp(bias)
    ekv = per_channel(ek, G, dim=2) * band_columns(v, 1, window, causal)  # (B, n, D, Wd)
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
        ek_all, key_max = global_exp(k)  # (B, T, Hk), (B, 1, Hk)
        den_out = outside_window_sums(ek_all, window, causal)
        num_out = outside_window_sums(per_channel(ek_all, G) * v, window, causal)
    else:
        key_max, den_out = torch.full_like(shift[:, :1], -math.inf), 0.0
    ref = torch.maximum(shift, key_max)
    in_scale, out_scale = torch.exp(shift - ref), torch.exp(key_max - ref)
    den_out = den_out * out_scale
    total = den * in_scale + den_out
    if not bool((total >= MIN_SHIFTED_DENOMINATOR * torch.maximum(in_scale, den_out)).all()):
        raise Underflow
    lse = torch.log(total) + ref
    check_key_range(lse, key_max)
    avg = num * per_channel((in_scale / total).to(num.dtype), G)  # factors <= 1 / MIN_SHIFTED_DENOMINATOR
    if global_connectivity:  # float64 factors up to e^MAX_KEY_RANGE
        avg = avg + (num_out * per_channel(out_scale / total, G)).to(num.dtype)
    return avg, lse.to(k.dtype)


def band_columns(x: Tensor, dim: int, window: int, causal: bool, fill: float = 0.0) -> Tensor:
    """Each row block's band of ``x`` along ``dim`` (a view): block ``n``, column ``j`` is
    position ``n C + j - (window - 1)``, ``fill`` outside ``[0, T)``. ``dim`` becomes the
    block index and a last dimension of ``Wd`` columns is added: ``(B, T, F) -> (B, n, F, Wd)``
    for ``dim=1``, ``(T, F) -> (n, F, Wd)`` for ``dim=0``."""
    T = x.shape[dim]
    C, n, width = band_geometry(T, window, causal)
    pad = [0, 0] * (x.dim() - 1 - dim) + [window - 1, n * C - T + (0 if causal else window - 1)]
    return F.pad(x, pad, value=fill).unfold(dim, width, C)


def _key_blocks(k: Tensor, window: int, causal: bool) -> tuple[Tensor, Tensor]:
    """Shifted ``exp`` of each row block's keys, ``(B, n, Hk, Wd)``, and the shifts ``(B, n, Hk, 1)``."""
    blocks = band_columns(k, 1, window, causal, fill=NEG)
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
    C = block_size(window)
    pieces = math.ceil(width / C)
    blocks = F.pad(blocks, (0, 0, 0, pieces * C - width))
    out = blocks.new_zeros(B, (n + pieces - 1) * C, features)
    for i in range(pieces):
        out[:, i * C : (i + n) * C] += blocks[:, :, i * C : (i + 1) * C].reshape(B, n * C, features)
    return out[:, window - 1 : window - 1 + T]


def _backward(
    grad: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor,
    avg: Tensor,
    lse: Tensor,
    window: int,
    causal: bool,
    global_connectivity: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients ``(dk, dv, dbias)`` of :func:`_forward`. With ``p[t, t'] = exp(k[t'] + w[t, t'] - lse[t])``
    and ``G = dL/davg``::

        dv[t']    = sum_t p[t, t'] G[t]
        dk[t']    = sum_(c in head) v[t'] dv[t'] - sum_t p[t, t'] sum_(c in head) G[t] avg[t]
        dw[t, t'] = sum_c p[t, t'] G[t] (v[t'] - avg[t])     (band entries only)

    Outside the band (bias 0) the sums over ``t`` are float64 suffix (and prefix) sums
    (:func:`aft.ops.prefix.query_sums`); inside it, block matrix products of the same shifted
    exponentials as the forward pass, times ``exp(shift[t] - lse[t])``. That factor is at
    most ``1 / MIN_SHIFTED_DENOMINATOR`` (the forward pass checked it), so nothing
    overflows, and a product that underflows stands for ``p < 1e-13``.
    """
    B, T, Hk = k.shape
    D = v.shape[-1]
    G = D // Hk
    C, n, width = band_geometry(T, window, causal)
    weighted = (grad * avg).view(B, T, Hk, G).sum(-1)  # per key head
    if global_connectivity:
        factors = query_factors(k, lse)
        dv = query_sums(grad, *factors, window, causal)
        d_avg = query_sums(weighted, *factors, window, causal)
    else:
        dv, d_avg = torch.zeros_like(v), torch.zeros_like(k)

    ek, key_shift = _key_blocks(k, window, causal)  # (B, n, Hk, Wd), (B, n, Hk, 1)
    ew, bias_shift = _shifted_exp(bias)

    def rows(x: Tensor, fill: float = 0.0) -> Tensor:
        """``(B, T, F) -> (B, n, C, F)``, ``fill`` past ``T``."""
        return F.pad(x, (0, 0, 0, n * C - T), value=fill).view(B, n, C, -1)

    scale = torch.exp(_block_shift(bias_shift, key_shift) - rows(lse, -NEG))  # (B, n, C, Hk)
    r_grad, r_avg = per_channel(scale, G) * rows(grad), scale * rows(weighted)
    ek_c = per_channel(ek, G, dim=2).transpose(-1, -2)  # (B, n, Wd, D)
    ekv = ek_c * band_columns(v, 1, window, causal).transpose(-1, -2)
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
    return dk, dv, dbias


# ------------------------------------------------------------------ entry points and ops


def local_average(k: Tensor, v: Tensor, w: Tensor | FactorizedBias, window: int, causal: bool) -> Tensor:
    """AFT-local's weighted average ``(B, T, D)`` (Eq. 4), ``window >= 1``; ``w`` dense ``(T, T)``
    or factors ``(u, v)`` (Eq. 7), never formed as ``T x T``."""
    bias = tuple(w) if isinstance(w, (tuple, list)) else w
    band = local_band_blocks(bias, k.shape[1], window, causal)
    return _banded(k, v, band, window, causal, True)[0]


def conv1d_average(k: Tensor, v: Tensor, w: Tensor, causal: bool, global_connectivity: bool) -> Tensor:
    """AFT-conv1d's weighted average ``(B, T, D)`` (Eq. 6) for ``k`` ``(B, T, H)``, ``w`` ``(H, S)``."""
    window = w.shape[1] if causal else w.shape[1] // 2 + 1
    band = conv1d_band_blocks(w, window, causal)
    return _banded(k, v, band, window, causal, global_connectivity)[0]


def simple_causal_average(k: Tensor, v: Tensor) -> Tensor:
    """Causal AFT-simple's average ``avg[t] = sum_{t' <= t} exp(k[t'] - lse[t]) v[t']`` ``(B, T, D)``."""
    return _simple_causal(k, v)[0]


def _simple_forward(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``(avg, lse)``: float64 prefix sums of ``exp(k - max k)``; raises :class:`Underflow`
    when the keys span more than ``MAX_KEY_RANGE``."""
    ek, key_max = global_exp(k)
    den = ek.cumsum(dim=1)
    lse = torch.log(den) + key_max
    check_key_range(lse, key_max)
    return ((ek * v).cumsum(dim=1) / den).to(v.dtype), lse.to(k.dtype)


def _simple_backward(grad: Tensor, k: Tensor, v: Tensor, avg: Tensor, lse: Tensor) -> tuple[Tensor, Tensor]:
    """With ``G = dL/davg``: ``dv[t'] = exp(k[t']) sum_{t >= t'} exp(-lse[t]) G[t]`` and
    ``dk[t'] = v[t'] dv[t'] - exp(k[t']) sum_{t >= t'} exp(-lse[t]) G[t] avg[t]`` (float64 suffix sums)."""
    factors = query_factors(k, lse)
    dv = query_sums(grad, *factors, 0, causal=True)
    return v * dv - query_sums(grad * avg, *factors, 0, causal=True), dv


def _zero_rows(k: Tensor) -> BiasRows:
    """Rows of AFT-simple's zero bias for keys ``k`` ``(B, T, Hk)``; takes no parameters."""
    return lambda params, r0, r1: k.new_zeros(1, r1 - r0, k.shape[1])


def _band_rows(T: int, window: int, causal: bool, global_connectivity: bool) -> BiasRows:
    """Rows of a band bias from its row blocks ``params[0]``: the band inside, 0 (global
    connectivity) or ``-inf`` outside, for :mod:`aft.ops.exact`."""
    C, n, width = band_geometry(T, window, causal)
    fill = 0.0 if global_connectivity else -math.inf

    def rows(params: tuple[Tensor, ...], r0: int, r1: int) -> Tensor:
        bias = params[0]
        inside = in_band(band_offsets(C, width, window, bias.device), window, causal)
        n0, n1 = r0 // C, math.ceil(r1 / C)
        padded = n * C + width  # column p of a padded row is key p - (window - 1)
        blocks = [
            F.pad(
                bias[:, b if bias.shape[1] > 1 else 0].masked_fill(~inside, fill),
                (b * C, padded - b * C - width),
                value=fill,
            )
            for b in range(n0, n1)
        ]
        return torch.cat(blocks, dim=1)[:, r0 - n0 * C : r1 - n0 * C, window - 1 : window - 1 + T]

    return rows


@torch.library.custom_op("aft::banded", mutates_args=())
def _banded(
    k: Tensor, v: Tensor, bias: Tensor, window: int, causal: bool, global_connectivity: bool
) -> tuple[Tensor, Tensor, Tensor]:
    with autocast_off(k.device):
        try:
            avg, lse = _forward(k, v, bias, window, causal, global_connectivity)
            return avg.contiguous(), lse.contiguous(), flag(False, k)
        except Underflow:
            rows = _band_rows(k.shape[1], window, causal, global_connectivity)
            return exact.average(k, v, (bias,), rows, causal), torch.zeros_like(k), flag(True, k)


@_banded.register_fake
def _(
    k: Tensor, v: Tensor, bias: Tensor, window: int, causal: bool, global_connectivity: bool
) -> tuple[Tensor, Tensor, Tensor]:
    return v.new_empty(v.shape), k.new_empty(k.shape), fake_flag(k)


@torch.library.custom_op("aft::banded_backward", mutates_args=())
def _banded_backward_op(
    grad: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor,
    avg: Tensor,
    lse: Tensor,
    was_exact: Tensor,
    window: int,
    causal: bool,
    global_connectivity: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    with autocast_off(k.device):
        if bool(was_exact):
            rows = _band_rows(k.shape[1], window, causal, global_connectivity)
            return exact.average_backward(grad, k, v, (bias,), rows, causal)
        return _backward(grad, k, v, bias, avg, lse, window, causal, global_connectivity)


connect(_banded, _banded_backward_op, tensors=3)


@torch.library.custom_op("aft::simple_causal", mutates_args=())
def _simple_causal(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    with autocast_off(k.device):
        try:
            avg, lse = _simple_forward(k, v)
            return avg, lse, flag(False, k)
        except Underflow:
            return exact.average(k, v, (), _zero_rows(k), True), torch.zeros_like(k), flag(True, k)


@_simple_causal.register_fake
def _(k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return v.new_empty(v.shape), k.new_empty(k.shape), fake_flag(k)


@torch.library.custom_op("aft::simple_causal_backward", mutates_args=())
def _simple_causal_backward(
    grad: Tensor, k: Tensor, v: Tensor, avg: Tensor, lse: Tensor, was_exact: Tensor
) -> tuple[Tensor, Tensor]:
    with autocast_off(k.device):
        if bool(was_exact):
            return exact.average_backward(grad, k, v, (), _zero_rows(k), True)
        return _simple_backward(grad, k, v, avg, lse)


connect(_simple_causal, _simple_causal_backward, tensors=2)
