"""AFT-local (Eq. 4) with the banded-bias kernels.

The bias ``w[t, t']`` is used where ``|t - t'| < s`` (causal: ``0 <= t - t' < s``) and is 0
elsewhere (global connectivity). The kernels read it as a band ``(T, W)``,
``band[t, o - lo] = w[t, t - o]`` for offsets ``lo <= o < s`` (``lo = 0`` causal, ``1 - s``
otherwise, ``W = s - lo``), built here from the factors of Eq. 7 without forming
``T x T``, or gathered from a dense ``w``; autograd carries the band's gradient back to
``u, v`` or ``w``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aft.kernels.banded import Band, banded_aft
from aft.kernels.common import Blocks
from aft.ops.casting import FactorizedBias, autocast_off, upcast

_ROW_BLOCK = 64  # rows per block of the factorized band product


def aft_local(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    w: Tensor | FactorizedBias,
    window: int,
    causal: bool = False,
    blocks: Blocks | None = None,
    band_products: bool = False,
) -> Tensor:
    """AFT-local, Eq. 4.

    Args:
        q, k, v: ``(B, T, D)``; ``q=None`` drops the query gate.
        w: ``(T, T)`` dense bias, or factors ``(u, v)``, each ``(T, d')``, of ``w = u v^T``.
        window: the local window size ``s >= 1``.
        causal: restrict the sums to ``t' <= t``.
        blocks: launch shape (:class:`aft.kernels.common.Blocks`).
        band_products: by default, sum the band as tile products (see :func:`default_blocks`).

    Returns:
        ``(B, T, D)`` in ``v``'s dtype.
    """
    T = k.shape[1]
    band = Band(window=min(window, T), causal=causal)
    with autocast_off(k.device):
        if isinstance(w, (tuple, list)):
            bias = band_from_factors(upcast(w[0]), upcast(w[1]), band)
        else:
            bias = band_from_dense(upcast(w), band)
    return banded_aft(q, k, v, bias, band, blocks, band_products)


def band_from_factors(u: Tensor, f: Tensor, band: Band) -> Tensor:
    """``band[t, o - lo] = u[t] . f[t - o]`` (Eq. 7), ``(T, W)``; 0 where ``t - o`` is outside ``[0, T)``.

    Row blocks of ``C`` positions take one ``(C, d') @ (d', C + W - 1)`` product against
    the keys they can see, and the band is read off its diagonals: ``O(T (C + W))`` memory.
    """
    T = u.shape[0]
    C, W = _ROW_BLOCK, band.width
    n = -(-T // C)
    u_blocks = torch.nn.functional.pad(u, (0, 0, 0, n * C - T)).view(n, C, -1)
    keys = torch.nn.functional.pad(f, (0, 0, band.window - 1, n * C - T - band.lo))  # key t' at row t' + s - 1
    products = u_blocks @ keys.unfold(0, C + W - 1, C)  # (n, C, C + W - 1): column x is key n C + x - s + 1
    diagonal = torch.arange(C, device=u.device)[:, None] + (W - 1) - torch.arange(W, device=u.device)
    return products.gather(2, diagonal.expand(n, C, W)).reshape(n * C, W)[:T]


def band_from_dense(w: Tensor, band: Band) -> Tensor:
    """``band[t, o - lo] = w[t, t - o]``, ``(T, W)``; 0 where ``t - o`` is outside ``[0, T)``."""
    T = w.shape[0]
    keys = torch.arange(T, device=w.device)[:, None] - band.lo - torch.arange(band.width, device=w.device)
    inside = (keys >= 0) & (keys < T)
    return w.gather(1, keys.clamp(0, T - 1)).masked_fill(~inside, 0.0)
