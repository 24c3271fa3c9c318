"""Position parameters resampled to another patch grid, the way timm resamples ``pos_embed``.

A ViT trained at one image size runs at another (224 -> 384 px: 14 x 14 -> 24 x 24 patches of
16) after bicubic, antialiased interpolation over the patch grid (timm's
:func:`timm.layers.resample_abs_pos_embed`); prefix (class) token rows are kept as they are.
Three layouts, told apart by the parameter's name in the state dict:

* token rows ``(P + Y X, C)``: the ViT ``pos_embed`` ``(1, T, D)``, the factors ``u, v``
  ``(T, d')`` of AFT-full's bias ``w = u v^T`` (Eq. 7) and the rows and columns of the dense
  ``(T, T)`` bias. Interpolation is linear (``u' = A u``), so resampling ``u`` and ``v``
  resamples ``w`` along both axes: ``u' v'^T = A w A^T``.
* a grid ``(1, Y, X, D)``: the position embedding of the spatial (Lambda) layout.
* a relative table ``(2Y - 1, 2X - 1, C)``: the Lambda layer's offset embeddings ``E``.

Shapes of the grid are inferred from a checkpoint's tensors as timm does (token rows: a square
grid of ``T - P`` patches).
"""

from __future__ import annotations

from collections.abc import Mapping

from timm.layers import resample_abs_pos_embed, resample_abs_pos_embed_nhwc
from torch import Tensor

Grid = tuple[int, int]

TOKEN_ROWS = ("position_bias.u", "position_bias.v")  # AFT-full / AFT-local factors (Eq. 7)
TOKEN_SQUARE = "position_bias.w"  # dense (T, T) bias (Table 9)
RELATIVE_TABLE = "rel_pos_emb"  # LambdaLayer offsets (2Y - 1, 2X - 1, |k|)
POSITION_EMBEDDING = "pos_embed"


def is_position_parameter(name: str) -> bool:
    """Whether ``name`` (a state-dict key) is a parameter laid out over the patch grid."""
    return name == POSITION_EMBEDDING or name.endswith((*TOKEN_ROWS, TOKEN_SQUARE, RELATIVE_TABLE))


def resample_token_rows(rows: Tensor, grid: Grid, prefix_tokens: int, old_grid: Grid | None = None) -> Tensor:
    """``(P + Y X, C)`` -> ``(P + Y' X', C)``; ``old_grid`` defaults to a square grid."""
    size = None if old_grid is None else list(old_grid)
    return resample_abs_pos_embed(rows[None], list(grid), size, num_prefix_tokens=prefix_tokens)[0]


def resample_relative_table(table: Tensor, grid: Grid) -> Tensor:
    """Offsets of a ``Y x X`` grid, ``(2Y - 1, 2X - 1, C)`` -> those of ``grid``."""
    return resample_abs_pos_embed_nhwc(table[None], [2 * grid[0] - 1, 2 * grid[1] - 1])[0]


def resample_position_parameter(
    name: str, value: Tensor, grid: Grid, prefix_tokens: int, spatial: bool, old_grid: Grid | None = None
) -> Tensor:
    """The parameter ``name`` (see :func:`is_position_parameter`) resampled to ``grid``.

    Args:
        grid: the new patch grid ``(Y', X')``.
        prefix_tokens: class-token rows of token parameters (0 or 1).
        spatial: the model keeps the ``(B, Y, X, D)`` grid (``pos_embed`` is ``(1, Y, X, D)``).
        old_grid: the current grid; ``None`` infers it from ``value``'s shape.
    """
    if name.endswith(RELATIVE_TABLE):
        return resample_relative_table(value, grid)
    if name == POSITION_EMBEDDING and spatial:
        return resample_abs_pos_embed_nhwc(value, list(grid))
    if name == POSITION_EMBEDDING:
        return resample_token_rows(value[0], grid, prefix_tokens, old_grid)[None]
    if name.endswith(TOKEN_SQUARE):
        rows = resample_token_rows(value, grid, prefix_tokens, old_grid)
        return resample_token_rows(rows.T, grid, prefix_tokens, old_grid).T
    if name.endswith(TOKEN_ROWS):
        return resample_token_rows(value, grid, prefix_tokens, old_grid)
    raise ValueError(f"{name} is not a position parameter of the patch grid")


def resample_state_dict(
    state: Mapping[str, Tensor], target: Mapping[str, Tensor], grid: Grid, prefix_tokens: int, spatial: bool
) -> dict[str, Tensor]:
    """``state`` with every position parameter whose shape differs from ``target``'s resampled to ``grid``."""
    resampled = dict(state)
    for name, value in state.items():
        if is_position_parameter(name) and name in target and value.shape != target[name].shape:
            resampled[name] = resample_position_parameter(name, value, grid, prefix_tokens, spatial)
    return resampled
