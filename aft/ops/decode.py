"""One-token decoding of the causal AFT operators: Eq. 2 at the newest position from a cache.

For position ``t`` the cache holds the last ``L`` keys ``(B, L, Hk)`` and values ``(B, L, D)``
(all of them for AFT-full) and a running log-sum-exp state of the positions that left the
window, where the bias is 0 (Eq. 4)::

    avg[t] = (sum_cached exp(k + w) v + exp(out_max) out_num) / (sum_cached exp(k + w) + exp(out_max) out_den)

O(window * D) state for AFT-local and AFT-conv1d, O(D) for AFT-simple, O(t * D) for AFT-full.
Runs in float32 with autocast off (:func:`aft.ops.dispatch.decode_step`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class DecodeCache:
    """Incremental-decoding state of one causal AFT layer.

    ``keys`` ``(B, L, Hk)`` and ``values`` ``(B, L, D)`` hold the last ``L`` positions (all of
    them for AFT-full); positions that left the window are folded into the running
    log-sum-exp state ``out_max`` ``(B, Hk)``, ``out_num`` ``(B, D)``, ``out_den`` ``(B, Hk)``
    (bias 0 there, Eq. 4). ``t`` is the number of positions seen.
    """

    keys: Tensor
    values: Tensor
    out_max: Tensor
    out_num: Tensor
    out_den: Tensor
    t: int = 0


def push(cache: DecodeCache | None, k: Tensor, v: Tensor, window: int | None) -> DecodeCache:
    """Add position ``cache.t``'s key ``(B, Hk)`` and value ``(B, D)``; fold the oldest out past ``window``."""
    if cache is None:
        B, Hk, D = k.shape[0], k.shape[-1], v.shape[-1]
        cache = DecodeCache(
            keys=k.new_zeros(B, 0, Hk),
            values=v.new_zeros(B, 0, D),
            out_max=k.new_full((B, Hk), float("-inf")),
            out_num=v.new_zeros(B, D),
            out_den=k.new_zeros(B, Hk),
        )
    cache.keys = torch.cat([cache.keys, k.unsqueeze(1)], dim=1)
    cache.values = torch.cat([cache.values, v.unsqueeze(1)], dim=1)
    if window is not None and cache.keys.shape[1] > window:
        _fold_oldest(cache)
    return cache


def _fold_oldest(cache: DecodeCache) -> None:
    """Move the oldest cached position out of the window into the running sums."""
    k, v = cache.keys[:, 0], cache.values[:, 0]
    group = v.shape[-1] // k.shape[-1]
    new_max = torch.maximum(cache.out_max, k)
    decay, weight = torch.exp(cache.out_max - new_max), torch.exp(k - new_max)
    cache.out_den = cache.out_den * decay + weight
    cache.out_num = cache.out_num * decay.repeat_interleave(group, -1) + weight.repeat_interleave(group, -1) * v
    cache.out_max = new_max
    cache.keys, cache.values = cache.keys[:, 1:], cache.values[:, 1:]


def cached_average(cache: DecodeCache, bias: Tensor) -> Tensor:
    """Eq. 2 at the newest position from the cache: ``(B, D)``.

    Args:
        bias: ``(Hb, L)`` biases of the cached positions, ``Hb`` in ``{1, Hk}``.
    """
    group = cache.values.shape[-1] // cache.keys.shape[-1]
    logits = cache.keys + bias.T.unsqueeze(0)  # (B, L, Hk)
    top = cache.out_max if logits.shape[1] == 0 else torch.maximum(logits.amax(dim=1), cache.out_max)
    weights = torch.exp(logits - top.unsqueeze(1))
    outside = torch.exp(cache.out_max - top)
    den = weights.sum(dim=1) + cache.out_den * outside
    num = (weights.repeat_interleave(group, -1) * cache.values).sum(dim=1)
    num = num + cache.out_num * outside.repeat_interleave(group, -1)
    return num / den.repeat_interleave(group, -1)
