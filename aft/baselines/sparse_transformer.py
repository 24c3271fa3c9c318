"""Sparse Transformer attention with the strided factorisation (Child et al., 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aft.baselines._common import check_heads, look_around, merge_heads, split_heads


class StridedSparseAttention(nn.Module):
    """Strided sparse attention, "Generating Long Sequences with Sparse Transformers" (Child et al., 2019), §4.

    With stride l, the strided factorisation (Child et al. §4.2) has two connectivity patterns

    * A⁽¹⁾ᵢ = {j : max(0, i − l) ≤ j ≤ i}, the previous l positions and i itself, and
    * A⁽²⁾ᵢ = {j ≤ i : (i − j) mod l = 0}, every l-th earlier position,

    assigned to heads as in the multi-head variant of §4.3: the first ``heads // 2`` heads attend
    with A⁽¹⁾, the remaining ``heads // 2`` with A⁽²⁾ (``heads`` must be even; Table 2 of the AFT
    paper uses 2 heads, one per pattern). With ``causal=False`` the condition j ≤ i is dropped
    (|i − j| ≤ l and (i − j) mod l = 0).

    Implementation: exact block-sparse attention through dense SDPA on gathered blocks — the
    "strided transpose" trick of the Sparse Transformer kernels. The sequence is zero-padded to a
    multiple of l and cut into rows of l positions. A⁽¹⁾ heads attend from each row to that row and
    the previous one (and the next one when non-causal) under the exact band mask; A⁽²⁾ heads
    attend along columns of the (T/l, l) layout, where keys with the same residue mod l are
    contiguous, under a causal mask over rows. Cost O(T·l + T²/l) instead of O(T²); the default
    stride 96 is one row of CIFAR-10 sub-pixels (32 pixels × RGB), so A⁽²⁾ looks straight up the
    image column as Child et al. §4.1 suggests for data whose structure aligns with the stride,
    and 96 ≈ √3072 up to a factor 2, as their choice l ≈ √n.

    Query-key width: ``qk_ratio`` scales the query and key projections to ``qk_dim = dim ·
    qk_ratio`` (Child et al. §6: "sometimes we halve the size of the query and key
    transformations", 0.5 in their CIFAR-10 model, §7.1); values and the output keep ``dim``.
    Scores are scaled by 1/√(qk_dim / heads), their Eq. 3.

    Shapes: x (B, T, dim) -> (B, T, dim); any T.
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 2,
        causal: bool = True,
        dropout: float = 0.0,
        stride: int = 96,
        qk_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        check_heads(dim, heads)
        if heads % 2:
            raise ValueError(f"heads={heads} must be even: half use each strided pattern")
        self.qk_dim = round(dim * qk_ratio)
        if self.qk_dim < heads or self.qk_dim % heads:
            raise ValueError(
                f"model.mixer.qk_ratio={qk_ratio}: query-key width {self.qk_dim} is no multiple of {heads} heads"
            )
        self.heads = heads
        self.causal = causal
        self.dropout = dropout
        self.stride = stride
        self.qkv = nn.Linear(dim, 2 * self.qk_dim + dim)
        self.proj = nn.Linear(dim, dim)

    def local_mask(self, rows: int, length: int, device: torch.device) -> Tensor:
        """A⁽¹⁾ as a (rows, l, window) mask over each row's gathered neighbour rows."""
        stride = self.stride
        query = torch.arange(rows * stride, device=device).view(rows, stride)
        key = look_around(query, 0, before=1, after=0 if self.causal else 1, pad_value=-1)
        query, key = query[:, :, None], key[:, None, :]
        offset = query - key
        allowed = (key >= 0) & (key < length) & (offset.abs() <= stride)
        if self.causal:
            allowed = allowed & (offset >= 0)
        return allowed | (offset == 0)

    def strided_mask(self, rows: int, length: int, device: torch.device) -> Tensor:
        """A⁽²⁾ as an (l, rows, rows) mask over the positions of each residue class mod l."""
        position = torch.arange(rows * self.stride, device=device).view(rows, self.stride).T
        query, key = position[:, :, None], position[:, None, :]
        allowed = key < length
        if self.causal:
            allowed = allowed & (key <= query)
        return allowed | (key == query)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """Masked SDPA with attention-probability dropout in training mode."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        stride, half = self.stride, self.heads // 2
        rows = -(-t // stride)
        qkv = self.qkv(F.pad(x, (0, 0, 0, rows * stride - t))).split([self.qk_dim, self.qk_dim, d], dim=-1)
        local_qkv = [_rows(split_heads(z, self.heads)[:, :half], stride) for z in qkv]
        strided_qkv = [_rows(split_heads(z, self.heads)[:, half:], stride).transpose(1, 2) for z in qkv]
        after = 0 if self.causal else 1
        local = self.attend(
            local_qkv[0],
            *(look_around(z, 1, before=1, after=after, pad_value=0.0) for z in local_qkv[1:]),
            self.local_mask(rows, t, x.device),
        )
        strided = self.attend(*strided_qkv, self.strided_mask(rows, t, x.device)).transpose(1, 2)
        out = torch.cat([local, strided]).view(2, b, half, rows * stride, d // self.heads)
        out = out.transpose(0, 1).reshape(b, self.heads, rows * stride, d // self.heads)
        return self.proj(merge_heads(out)[:, :t])


def _rows(z: Tensor, stride: int) -> Tensor:
    """Cut a padded sequence into rows of ``stride``: (B, H', L, E) -> (B·H', L / stride, stride, E)."""
    b, h, length, e = z.shape
    return z.reshape(b * h, length // stride, stride, e)
