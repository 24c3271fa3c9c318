"""The Sparse Transformer network of Child et al. (2019), "Generating Long Sequences with Sparse
Transformers" (arXiv:1904.10509), around :class:`aft.baselines.StridedSparseAttention`: Table 2's
Sparse Transformer row, whose 2.80 bits/dim the AFT paper quotes from that paper, built as that
paper built it rather than with the AFT paper's §5.1 decoder.

The blocks are the pre-LN blocks of :class:`aft.models.decoder.Decoder` (their Eq. 9–14:
H_k = H_{k−1} + a(H) + b(H), a = dropout(attention(norm(H))), b = dropout(ff(norm(H + a)))).
What differs, each from the cited paper:

* data embeddings (§5.3, Eq. 15): position t gets Σⱼ Wⱼ[cⱼ(t)], one learned table per axis of the
  data (row, column, channel of a 32×32×3 image: 32 + 32 + 3 rows) instead of one 3072-row table;
* dropout only at the end of the two residual branches (§5.4): none on the embeddings and none
  inside the feed-forward network (attention-probability dropout is the mixer's, 0 there);
* initialization (§6): weights inside the blocks N(0, σ = 0.125/√d_in) for fan-in d_in, biases 0,
  token embedding σ = 0.125/√d, position embeddings σ = 0.125/√(d·n_emb), output logits 0; and
  (§5.2) the feed-forward W₂ and the attention output W_p scaled by 1/√(2N) for N blocks. The
  paper writes N(0, x); x is read as a standard deviation, as in GPT-2's N(0, 0.02).

The "half-size" widths (§6, §7.1) are options of the parts: ``mlp_ratio = 2`` and the mixer's
``qk_ratio = 0.5`` (configs/experiment/cifar10_sparse_transformer_strided_l128_d256.yaml).
One known difference stays: the MLP's GELU is the exact erf form; theirs is x·sigmoid(1.702·x).

Shapes: idx (B, T) long -> logits (B, T, V), as the Decoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from aft.models.decoder import Decoder

INIT_SCALE = 0.125  # Child et al. §6


class DataPositionEmbedding(nn.Module):
    """Learned embeddings of a position's coordinates in the data (Child et al. 2019, §5.3, Eq. 15).

    Data of shape (S₁, …, S_n) is read in raster order, so position t has coordinates
    cⱼ(t) = ⌊t / ∏_{i>j} Sᵢ⌋ mod Sⱼ and embedding Σⱼ Wⱼ[cⱼ(t)], Wⱼ an (Sⱼ, dim) table. On
    CIFAR-10 (32, 32, 3): the row, column and channel of the sub-pixel that position t predicts.

    Shapes: positions (...) long -> (..., dim).
    """

    def __init__(self, shape: Sequence[int], dim: int) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.strides = tuple(math.prod(self.shape[j + 1 :]) for j in range(len(self.shape)))
        self.tables = nn.ModuleList(nn.Embedding(size, dim) for size in self.shape)

    def forward(self, positions: Tensor) -> Tensor:
        coordinates = zip(self.tables, self.strides, self.shape, strict=True)
        return sum(table((positions // stride) % size) for table, stride, size in coordinates)


class SparseTransformerDecoder(Decoder):
    """Child et al.'s Sparse Transformer: a :class:`Decoder` with data embeddings, dropout only at
    the end of the residual branches and their depth-scaled initialization (see the module).

    Args: those of :class:`Decoder` (by keyword), and
        data_shape: the axes of the data in raster order, whose product is ``seq_len``
            (CIFAR-10: ``(32, 32, 3)``).

    The mixer must have an output projection ``proj`` (W_p, scaled by 1/√(2N)).
    """

    def __init__(self, *, seq_len: int, dim: int, data_shape: Sequence[int], **decoder_options: Any) -> None:
        if math.prod(data_shape) != seq_len:
            raise ValueError(f"model.data_shape={list(data_shape)} must hold model.seq_len={seq_len} positions")
        super().__init__(seq_len=seq_len, dim=dim, **decoder_options)
        self.position_embedding = DataPositionEmbedding(data_shape, dim)
        self.embedding_drop = nn.Identity()
        for block in self.blocks:
            if not isinstance(getattr(block.mixer, "proj", None), nn.Linear):
                raise ValueError(f"{type(block.mixer).__name__} has no output projection `proj` to scale by 1/sqrt(2N)")
            block.mlp.drop1 = nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Child et al. §6 and §5.2 initialization (see the module docstring)."""
        dim = self.token_embedding.embedding_dim
        residual_scale = (2 * len(self.blocks)) ** -0.5
        for block in self.blocks:
            for module in block.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=INIT_SCALE / math.sqrt(module.in_features))
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
            block.mlp.fc2.weight.mul_(residual_scale)
            block.mixer.proj.weight.mul_(residual_scale)
        nn.init.normal_(self.token_embedding.weight, std=INIT_SCALE / math.sqrt(dim))
        tables = self.position_embedding.tables
        for table in tables:
            nn.init.normal_(table.weight, std=INIT_SCALE / math.sqrt(dim * len(tables)))
        nn.init.zeros_(self.head.weight)
