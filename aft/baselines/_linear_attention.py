"""Kernelised (linear) attention given feature maps, shared by the Linear Transformer and Performer.

Both methods compute, for feature maps φ (Katharopoulos et al., 2020, Eq. 4–6 and 8–12;
Choromanski et al., 2021, Eq. 6 / §2.8 "prefix sums"),

    yᵢ = Σⱼ (φ(qᵢ)·φ(kⱼ)) vⱼ / (Σⱼ φ(qᵢ)·φ(kⱼ) + eps),

with j over all positions (non-causal) or j ≤ i (causal). Key features are passed in factored
form φ(kⱼ) = ψⱼ · exp(ℓⱼ) with ψⱼ bounded (ℓⱼ = 0 for the Linear Transformer, a log-scale for
FAVOR+), so that large exponents never overflow: every weight is evaluated as
ψⱼ · exp(ℓⱼ − m) with m ≥ ℓⱼ a shift shared by all keys a query sees, which cancels between
numerator and denominator (up to the ``eps`` guard). In the causal case the shift of query i is
the running maximum of ℓ over keys ≤ i, so no quantity used at position i depends on later
positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def linear_attention(
    q_feat: Tensor, k_feat: Tensor, v: Tensor, k_log_scale: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    """Non-causal linear attention in O(T·M·E).

    Shapes: q_feat (..., T, M), k_feat (..., S, M), v (..., S, E), k_log_scale (..., S) or None
    (meaning 0) -> (..., T, E).
    """
    if k_log_scale is not None:
        k_feat = k_feat * torch.exp(k_log_scale - k_log_scale.amax(-1, keepdim=True))[..., None]
    kv = k_feat.transpose(-2, -1) @ v  # (..., M, E)
    numerator = q_feat @ kv
    denominator = q_feat @ k_feat.sum(-2)[..., None]
    return numerator / (denominator + eps)


def causal_linear_attention(
    q_feat: Tensor,
    k_feat: Tensor,
    v: Tensor,
    k_log_scale: Tensor | None = None,
    eps: float = 1e-6,
    chunk_size: int = 128,
) -> Tensor:
    """Causal linear attention by chunked prefix sums, exact (no approximation beyond the features).

    The sequence is cut into chunks of C positions. Within a chunk the masked C×C weights are
    formed explicitly; across chunks the prefix sums Sₙ = Σ φ(kⱼ)vⱼᵀ and zₙ = Σ φ(kⱼ) of all
    earlier chunks are carried, each chunk's contribution rescaled to the running maximum of the
    key log-scales. Memory O(T·C + (T/C)·M·E) per (batch, head); compute O(T·(C + M)·E).

    Shapes: q_feat (..., T, M), k_feat (..., T, M), v (..., T, E), k_log_scale (..., T) or None
    -> (..., T, E).
    """
    t = q_feat.shape[-2]
    if k_log_scale is None:
        k_log_scale = q_feat.new_zeros(q_feat.shape[:-1])
    pad = -t % chunk_size
    q, k, val = (_chunks(F.pad(z, (0, 0, 0, pad)), chunk_size) for z in (q_feat, k_feat, v))
    log_scale = F.pad(k_log_scale, (0, pad)).unflatten(-1, (-1, chunk_size))  # (..., N, C)

    chunk_max = log_scale.amax(-1)  # (..., N)
    before = torch.cat([torch.full_like(chunk_max[..., :1], -torch.inf), chunk_max.cummax(-1).values[..., :-1]], -1)
    running = torch.maximum(log_scale.cummax(-1).values, before[..., None])  # shift m of each query

    # Sum of each chunk relative to its own maximum, then prefix-summed over earlier chunks.
    k_chunk = k * torch.exp(log_scale - chunk_max[..., None])[..., None]
    chunk_kv = k_chunk.transpose(-2, -1) @ val  # (..., N, M, E)
    chunk_k = k_chunk.sum(-2)  # (..., N, M)
    n = chunk_max.shape[-1]
    earlier = torch.ones(n, n, dtype=torch.bool, device=q.device).tril(-1)
    carry = torch.exp((chunk_max[..., None, :] - before[..., :, None]).masked_fill(~earlier, -torch.inf))
    prefix_kv = (carry @ chunk_kv.flatten(-2)).unflatten(-1, chunk_kv.shape[-2:])  # (..., N, M, E)
    prefix_k = carry @ chunk_k  # (..., N, M)
    inter_scale = torch.exp(before[..., None] - running)[..., None]  # (..., N, C, 1)
    numerator = (q @ prefix_kv) * inter_scale
    denominator = (q @ prefix_k[..., None]) * inter_scale

    # Within-chunk causal weights.
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).tril()
    intra_scale = torch.exp((log_scale[..., None, :] - running[..., :, None]).masked_fill(~causal, -torch.inf))
    weights = (q @ k.transpose(-2, -1)) * intra_scale  # (..., N, C, C)
    numerator = numerator + weights @ val
    denominator = denominator + weights.sum(-1, keepdim=True)
    return (numerator / (denominator + eps)).flatten(-3, -2)[..., :t, :]


def _chunks(z: Tensor, chunk_size: int) -> Tensor:
    """(..., T, F) with T a multiple of C -> (..., T / C, C, F)."""
    return z.unflatten(-2, (-1, chunk_size))
