"""Image Transformer local 2d self-attention (Parmar et al., 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aft.baselines._common import check_heads


class LocalAttention2d(nn.Module):
    """Block-local 2d self-attention of the "Image Transformer" (Parmar et al., 2018), §3.2 "local 2D".

    The sequence is the raster scan of a (height, width_channels) grid: for CIFAR-10 each image
    row holds its 32 pixels with R, G, B interleaved, i.e. 96 sub-pixel columns, T = 32·96 = 3072.
    The grid is tiled by non-overlapping query blocks of ``query_shape = (h_q, w_q)`` positions;
    every query block attends to its memory block, the query block extended by
    ``memory_flange = (h_m, w_m)``: h_m rows above and w_m columns to the left and to the right,
    i.e. a (h_q + h_m) × (w_q + 2·w_m) rectangle (zero-padded, and masked, outside the image).
    Defaults (4, 16) and (4, 8) give 8 × 32 = 256-position memory blocks, the "local2d window of
    size 256" of the AFT paper's Table 2.

    Causal masking follows the order of the sequence the model actually factorises, the raster
    order: a query at raster index i sees the memory positions with raster index ≤ i, i.e. every
    rectangle row above its own (right flank included, which the raster scan has already produced)
    and its own row up to itself. The Image Transformer itself generated one query block
    after another; on the raster-ordered AFT benchmark that order would leak future sub-pixels,
    hence the raster mask. With ``causal=False`` the whole memory rectangle is visible.

    Efficiency: query and memory blocks are gathered with ``unfold`` and attended with
    ``scaled_dot_product_attention`` under a (blocks, l_q, l_m) mask; cost O(T · l_m), never T×T.
    Sequences shorter than height·width_channels (T ≤ seq_len) are zero-padded at the end; with
    ``causal=True`` the padding is in every real query's future, otherwise it is masked out.

    Shapes: x (B, T, dim), T ≤ height·width_channels -> (B, T, dim).
    """

    def __init__(
        self,
        dim: int,
        *,
        heads: int = 4,
        causal: bool = True,
        dropout: float = 0.0,
        height: int = 32,
        width_channels: int = 96,
        query_shape: tuple[int, int] = (4, 16),
        memory_flange: tuple[int, int] = (4, 8),
    ) -> None:
        super().__init__()
        check_heads(dim, heads)
        if height % query_shape[0] or width_channels % query_shape[1]:
            raise ValueError(f"query_shape {query_shape} must tile the grid {(height, width_channels)}")
        self.heads = heads
        self.causal = causal
        self.dropout = dropout
        self.height = height
        self.width_channels = width_channels
        self.query_shape = tuple(query_shape)
        self.memory_flange = tuple(memory_flange)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    @property
    def seq_len(self) -> int:
        """Length of the full raster sequence, height · width_channels."""
        return self.height * self.width_channels

    @property
    def memory_size(self) -> int:
        """Number of positions in a memory block, (h_q + h_m) · (w_q + 2·w_m)."""
        (hq, wq), (hm, wm) = self.query_shape, self.memory_flange
        return (hq + hm) * (wq + 2 * wm)

    def query_blocks(self, grid: Tensor) -> Tensor:
        """Tile the trailing grid axes into query blocks: (..., H, W) -> (..., N_blocks, h_q·w_q)."""
        (hq, wq), lead = self.query_shape, grid.shape[:-2]
        blocks = grid.reshape(*lead, self.height // hq, hq, self.width_channels // wq, wq)
        return blocks.transpose(-3, -2).reshape(*lead, -1, hq * wq)

    def grid_from_blocks(self, blocks: Tensor) -> Tensor:
        """Inverse of :meth:`query_blocks`: (..., N_blocks, h_q·w_q) -> (..., H, W)."""
        (hq, wq), lead = self.query_shape, blocks.shape[:-2]
        grid = blocks.reshape(*lead, self.height // hq, self.width_channels // wq, hq, wq)
        return grid.transpose(-3, -2).reshape(*lead, self.height, self.width_channels)

    def memory_blocks(self, grid: Tensor, pad_value: float) -> Tensor:
        """Gather each query block's memory rectangle: (..., H, W) -> (..., N_blocks, l_m).

        Positions outside the image are filled with ``pad_value``.
        """
        (hq, wq), (hm, wm) = self.query_shape, self.memory_flange
        padded = F.pad(grid, (wm, wm, hm, 0), value=pad_value)
        windows = padded.unfold(-2, hq + hm, hq).unfold(-2, wq + 2 * wm, wq)
        return windows.reshape(*grid.shape[:-2], -1, self.memory_size)

    def block_mask(self, length: int, device: torch.device) -> Tensor:
        """Boolean (N_blocks, l_q, l_m) mask of the memory positions each query may attend to.

        ``length`` is the unpadded sequence length; padding positions are visible only to
        themselves, which keeps every row non-empty without touching real queries.
        """
        index = torch.arange(self.seq_len, device=device).view(self.height, self.width_channels)
        query_index = self.query_blocks(index)[:, :, None]
        key_index = self.memory_blocks(index, pad_value=-1)[:, None, :]
        allowed = (key_index >= 0) & (key_index < length)
        if self.causal:
            allowed = allowed & (key_index <= query_index)
        return allowed | (key_index == query_index)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        if t > self.seq_len:
            raise ValueError(f"sequence length {t} exceeds height·width_channels = {self.seq_len}")
        qkv = self.qkv(F.pad(x, (0, 0, 0, self.seq_len - t)))
        # (B, L, 3·D) -> (3, B·H, E, height, width_channels)
        grids = qkv.view(b, self.height, self.width_channels, 3, self.heads, d // self.heads)
        grids = grids.permute(3, 0, 4, 5, 1, 2).flatten(1, 2)
        q = self.query_blocks(grids[0]).transpose(-3, -1).transpose(-3, -2)  # (B·H, N, l_q, E)
        k, v = (self.memory_blocks(g, 0.0).transpose(-3, -1).transpose(-3, -2) for g in grids[1:])
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=self.block_mask(t, x.device),
            dropout_p=self.dropout if self.training else 0.0,
        )
        out = self.grid_from_blocks(out.transpose(-3, -2).transpose(-3, -1))  # (B·H, E, height, width)
        out = out.view(b, d, self.seq_len).transpose(1, 2)[:, :t]
        return self.proj(out)
