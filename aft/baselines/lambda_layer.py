"""Lambda layer (Bello, 2021) in full-context mode, as configured for Table 7 of the AFT paper."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aft.baselines._common import check_heads


class LambdaLayer(nn.Module):
    """Multi-query lambda layer (Bello, 2021), §3–4.

    "LambdaNetworks: Modeling Long-Range Interactions Without Attention", ICLR 2021.

    For every position n of the (Y, X) grid, with queries qₙ ∈ ℝ^{heads×|k|}, keys K ∈ ℝ^{|m|×|k|}
    and values V ∈ ℝ^{|m|×|v|} (intra-depth |u| = 1):

    * content lambda λᶜ = softmax_m(K)ᵀ V ∈ ℝ^{|k|×|v|}, shared by all positions;
    * position lambdas λᵖₙ = Eₙᵀ V with Eₙₘ ∈ ℝ^{|k|} a learned embedding of the relative offset
      m − n, over the whole grid ("global context": a table of (2Y−1)·(2X−1) offsets);
    * yₙ = concat_h qₙₕᵀ (λᶜ + λᵖₙ) ∈ ℝ^{heads·|v|}, followed by an output projection.

    Configuration of the AFT paper §5.3: full context mode, |k| = ``key_dim`` = 16, |u| = 1,
    |v| = dim // heads, and BatchNorm on the query and key projections as the AFT text states
    (lucidrains' lambda-networks, the implementation it used, normalises queries and values). The
    query/key/value projections are bias-free 1×1 maps as in the LambdaNetworks code; the output
    projection (biased, d×d) makes the mixer a drop-in for DeiT's attention and is what brings
    the DeiT-style models to Table 7's sizes (73,424 mixer parameters at d = 192, 3 heads and
    227,312 at d = 384, 6 heads, on a 14×14 grid). Relative-position embeddings are initialised
    from N(0, 0.02²), like timm's position embeddings.

    ``grid_size`` fixes the largest grid: any Y' ≤ Y, X' ≤ X works (its offsets are a centred
    sub-table), larger grids raise. The lambdas are materialised per position (memory
    O(B·Y·X·|k|·|v|)), as in the reference implementation that Table 7 measured.

    Shapes: x (B, Y', X', dim) -> (B, Y', X', dim).
    """

    def __init__(self, dim: int, *, heads: int = 4, key_dim: int = 16, grid_size: tuple[int, int] = (14, 14)) -> None:
        super().__init__()
        self.heads = heads
        self.key_dim = key_dim
        self.value_dim = check_heads(dim, heads)
        self.grid_size = tuple(grid_size)
        self.to_q = nn.Linear(dim, heads * key_dim, bias=False)
        self.to_k = nn.Linear(dim, key_dim, bias=False)
        self.to_v = nn.Linear(dim, self.value_dim, bias=False)
        self.norm_q = nn.BatchNorm1d(heads * key_dim)
        self.norm_k = nn.BatchNorm1d(key_dim)
        height, width = self.grid_size
        self.rel_pos_emb = nn.Parameter(torch.empty(2 * height - 1, 2 * width - 1, key_dim))
        nn.init.trunc_normal_(self.rel_pos_emb, std=0.02)
        self.proj = nn.Linear(dim, dim)

    def position_embeddings(self, height: int, width: int) -> Tensor:
        """Embeddings Eₙₘ of the offsets between all pairs of grid positions, (N, N, |k|), N = height·width."""
        max_height, max_width = self.grid_size
        if height > max_height or width > max_width:
            raise ValueError(f"grid {(height, width)} exceeds the configured grid_size {self.grid_size}")
        device = self.rel_pos_emb.device
        ys, xs = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        dy = ys[None, :] - ys[:, None] + max_height - 1  # offset of m relative to n, row n, column m
        dx = xs[None, :] - xs[:, None] + max_width - 1
        return self.rel_pos_emb[dy, dx]

    def forward(self, x: Tensor) -> Tensor:
        b, height, width, d = x.shape
        tokens = x.reshape(b * height * width, d)
        q = self.norm_q(self.to_q(tokens)).view(b, -1, self.heads, self.key_dim)  # (B, N, h, k)
        k = self.norm_k(self.to_k(tokens)).view(b, -1, self.key_dim)  # (B, M, k)
        v = self.to_v(tokens).view(b, -1, self.value_dim)  # (B, M, v)
        content_lambda = torch.einsum("bmk,bmv->bkv", k.softmax(dim=1), v)
        position_lambdas = torch.einsum("nmk,bmv->bnkv", self.position_embeddings(height, width), v)
        out = torch.einsum("bnhk,bkv->bnhv", q, content_lambda)
        out = out + torch.einsum("bnhk,bnkv->bnhv", q, position_lambdas)
        return self.proj(out.reshape(b, height, width, d))
