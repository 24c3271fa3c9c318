"""Dense Synthesizer attention (Tay et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aft.baselines._common import check_heads, merge_heads, split_heads


class DenseSynthesizerAttention(nn.Module):
    """Dense Synthesizer, "Synthesizer: Rethinking Self-Attention in Transformer Models" (Tay et al., 2020), §3.1.

    Each token predicts its own row of attention logits over the ``seq_len`` positions with a
    two-layer MLP, Bᵢ = W₂ ReLU(W₁ xᵢ + b₁) + b₂ (their Eq. 1), and Y = softmax(B) G(X) with
    G a linear value projection (Eq. 2); no query–key dot products. Multi-head: W₁ ∈ ℝ^{d×d}
    is shared and W₂ ∈ ℝ^{d×(heads·seq_len)} gives every head its own logits; the heads'
    outputs are concatenated and projected as in MHA. Parameters: 3·d² + 3·d + heads·seq_len·(d + 1)
    (4,990,464 for d = 512, 8 heads, seq_len = 1024 as in the AFT paper's Table 4).

    For an input of length T ≤ seq_len the first T logit columns are used (so a prefix of a
    sequence gets the same causal outputs as the full sequence); ``causal`` masks j > i before the
    softmax; ``dropout`` drops attention probabilities in training.

    Shapes: x (B, T, dim), T ≤ seq_len -> (B, T, dim).
    """

    def __init__(
        self, dim: int, *, heads: int = 8, seq_len: int = 1024, causal: bool = True, dropout: float = 0.0
    ) -> None:
        super().__init__()
        check_heads(dim, heads)
        self.heads = heads
        self.seq_len = seq_len
        self.causal = causal
        self.dropout = dropout
        self.hidden = nn.Linear(dim, dim)
        self.logits = nn.Linear(dim, heads * seq_len)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        if t > self.seq_len:
            raise ValueError(f"sequence length {t} exceeds the synthesizer's seq_len = {self.seq_len}")
        logits = self.logits(F.relu(self.hidden(x))).view(b, t, self.heads, self.seq_len)
        logits = logits[..., :t].transpose(1, 2)  # (B, H, T, T)
        if self.causal:
            future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            logits = logits.masked_fill(future, -torch.inf)
        probs = F.dropout(logits.softmax(-1), self.dropout, self.training)
        return self.proj(merge_heads(probs @ split_heads(self.value(x), self.heads)))
