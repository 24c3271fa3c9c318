"""Baseline token mixers of the AFT paper's Tables 2, 4 and 7, one module per method.

Sequence mixers map (B, T, dim) -> (B, T, dim); :class:`LambdaLayer` maps (B, Y, X, dim) to the
same shape. Each contains its own input and output projections (no norm, residual or MLP).
The whole network of Table 2's Sparse Transformer row, Child et al.'s decoder around the strided
attention, is :mod:`aft.baselines.sparse_transformer_decoder` (not imported here: it builds on
:mod:`aft.models`, which imports this package).
"""

from aft.baselines.attention import MultiHeadAttention
from aft.baselines.image_transformer import LocalAttention2d
from aft.baselines.lambda_layer import LambdaLayer
from aft.baselines.linear_transformer import LinearAttention
from aft.baselines.performer import PerformerAttention
from aft.baselines.reformer import LSHAttention
from aft.baselines.sparse_transformer import StridedSparseAttention
from aft.baselines.synthesizer import DenseSynthesizerAttention

__all__ = [
    "DenseSynthesizerAttention",
    "LSHAttention",
    "LambdaLayer",
    "LinearAttention",
    "LocalAttention2d",
    "MultiHeadAttention",
    "PerformerAttention",
    "StridedSparseAttention",
]
