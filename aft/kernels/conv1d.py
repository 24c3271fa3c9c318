"""AFT-conv1d (Eq. 6) with the banded-bias kernels: a Toeplitz bias per key head.

Eq. 6 is evaluated as positive sums, ``exp(k + w)`` inside the kernel and ``exp(k)``
outside it, never through ``exp(w) - 1``. The kernel ``w`` ``(H, S)`` is the band itself:
causal, ``w[h, j]`` is the bias of offset ``o = t - t' = j``; non-causal, of
``o = S // 2 - j``, i.e. the band is ``w`` flipped.
"""

from __future__ import annotations

from torch import Tensor

from aft.kernels.banded import Band, banded_aft
from aft.kernels.common import Blocks


def aft_conv1d(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    causal: bool = False,
    global_connectivity: bool = True,
    blocks: Blocks | None = None,
) -> Tensor:
    """AFT-conv1d, Eq. 6; arguments as :func:`aft.functional.aft_conv1d`.

    Args:
        q, v: ``(B, T, D)``; ``q=None`` drops the query gate.
        k: ``(B, T, H)``, one key channel per head (``H | D``).
        w: ``(H, S)``; ``S`` odd unless causal.
        causal: restrict the sums to ``t' <= t``.
        global_connectivity: ``False`` puts ``-inf`` outside the kernel (§5.3 ablation).
        blocks: launch shape (:class:`aft.kernels.common.Blocks`).

    Returns:
        ``(B, T, D)`` in ``v``'s dtype.
    """
    S = w.shape[1]
    window = S if causal else S // 2 + 1
    band = Band(window, causal, global_connectivity, per_head=True)
    return banded_aft(q, k, v, w if causal else w.flip(-1), band, blocks)
