"""Standard multi-head softmax attention (Vaswani et al., 2017)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from aft.baselines._common import check_heads, merge_heads, split_heads


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention, "Attention Is All You Need" (Vaswani et al., 2017), §3.2.

    ``y = W_o concat_h softmax(Q_h K_hᵀ / √E + M) V_h + b_o`` with ``E = dim // heads`` and ``M``
    the causal mask when ``causal``. Computed by ``torch.nn.functional.scaled_dot_product_attention``
    (``is_causal`` for the mask), so no T×T tensor is materialised on fused backends.

    Parameters: a fused biased QKV projection and a biased output projection, 4·d² + 4·d in total,
    as timm's ``Attention`` with ``qkv_bias=True`` (the DeiT setting).

    Shapes: x (B, T, dim) -> (B, T, dim).
    """

    def __init__(self, dim: int, *, heads: int = 8, causal: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        check_heads(dim, heads)
        self.heads = heads
        self.causal = causal
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(x).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal
        )
        return self.proj(merge_heads(out))
