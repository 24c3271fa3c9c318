"""Linear Transformer attention (Katharopoulos et al., 2020)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from aft.baselines._common import check_heads, merge_heads, split_heads
from aft.baselines._linear_attention import causal_linear_attention, linear_attention


def elu_feature_map(x: Tensor) -> Tensor:
    """φ(x) = elu(x) + 1 (Katharopoulos et al., 2020, Eq. 7), elementwise and positive."""
    return F.elu(x) + 1.0


class LinearAttention(nn.Module):
    """Linear attention, "Transformers are RNNs" (Katharopoulos et al., 2020), §3.2–3.3.

    ``yᵢ = φ(qᵢ)ᵀ Σⱼ φ(kⱼ)vⱼᵀ / (φ(qᵢ)ᵀ Σⱼ φ(kⱼ) + eps)`` per head with φ = elu + 1 (Eq. 6–7);
    j runs over all positions, or over j ≤ i when ``causal`` (Eq. 9–12), computed exactly by
    chunked prefix sums (chunks of ``chunk_size``; memory O(T·chunk + (T/chunk)·E²) per head
    instead of the paper's CUDA recurrence). ``eps = 1e-6`` as in the authors' fast-transformers
    library. There are no attention probabilities, hence no attention dropout.

    Shapes: x (B, T, dim) -> (B, T, dim).
    """

    def __init__(
        self, dim: int, *, heads: int = 8, causal: bool = True, chunk_size: int = 128, eps: float = 1e-6
    ) -> None:
        super().__init__()
        check_heads(dim, heads)
        self.heads = heads
        self.causal = causal
        self.chunk_size = chunk_size
        self.eps = eps
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        q, k = elu_feature_map(q), elu_feature_map(k)
        if self.causal:
            out = causal_linear_attention(q, k, v, eps=self.eps, chunk_size=self.chunk_size)
        else:
            out = linear_attention(q, k, v, eps=self.eps)
        return self.proj(merge_heads(out))
