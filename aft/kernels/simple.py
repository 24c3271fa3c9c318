"""AFT-simple (Eq. 5) with the banded-bias kernels: the band is empty (``window = 0``).

Causal: a running log-sum-exp over ``t' <= t``; non-causal: the same sweep plus the
per-tile summaries of the keys after each tile, so ``avg[t]`` is one softmax over all
keys for every ``t``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aft.kernels.banded import Band, banded_aft
from aft.kernels.common import Blocks


def aft_simple(q: Tensor | None, k: Tensor, v: Tensor, causal: bool = False, blocks: Blocks | None = None) -> Tensor:
    """``sigmoid(q) * sum_t' softmax(k)_t' * v_t'`` over ``t' <= t`` if causal.

    Args:
        q, k, v: ``(B, T, D)``; ``q=None`` drops the query gate.
        causal: restrict the sums to ``t' <= t``.
        blocks: launch shape (:class:`aft.kernels.common.Blocks`).

    Returns:
        ``(B, T, D)`` in ``v``'s dtype.
    """
    no_bias = v.new_zeros(1, 1, dtype=torch.float32)
    return banded_aft(q, k, v, no_bias, Band(window=0, causal=causal), blocks)
