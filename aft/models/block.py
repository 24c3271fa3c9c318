"""The pre-LN residual block shared by the decoder (§5.1, §5.2) and the ViT encoder (§5.3).

``x + drop_path(dropout(mixer(LN(x))))`` then ``x + drop_path(MLP(LN(x)))``, with a two-layer
GELU MLP of width ``mlp_ratio * dim`` (§5.1: "feedforward dimension multiplier set to 4").
AFT is a plug-in replacement of attention (§3.1): the token mixer is any module mapping
``(B, *, D) -> (B, *, D)``; LayerNorm and the MLP act on the last dimension only, so the same
block serves sequences ``(B, T, D)`` and 2-d grids ``(B, Y, X, D)``.
"""

from __future__ import annotations

from typing import Any

from timm.layers import DropPath, LayerNorm, Mlp
from torch import Tensor, nn


class Block(nn.Module):
    """Pre-LN Transformer block with a pluggable token mixer.

    Args:
        dim: feature width ``D``.
        mixer: the token mixer (an AFT layer or a baseline), ``(B, *, D) -> (B, *, D)``.
        mlp_ratio: MLP hidden width over ``D`` (4 in every experiment of the paper).
        dropout: dropout on the mixer output and inside the MLP (§5.1: 0.1).
        drop_path: stochastic-depth rate of both residual branches (DeiT [6], §5.3).
    """

    def __init__(
        self, dim: int, mixer: nn.Module, mlp_ratio: float = 4.0, dropout: float = 0.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.mixer = mixer
        self.mixer_drop = nn.Dropout(dropout)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``(B, *, D) -> (B, *, D)``."""
        x = x + self.drop_path(self.mixer_drop(self.mixer(self.norm1(x))))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def step(self, x: Tensor, cache: Any) -> tuple[Tensor, Any]:
        """One position of a causal block: ``x`` ``(B, D)``; the mixer's ``step`` cache in/out.

        Equals :meth:`forward` at that position given the same history (eval mode).
        """
        y, cache = self.mixer.step(self.norm1(x), cache)
        x = x + self.drop_path(self.mixer_drop(y))
        return x + self.drop_path(self.mlp(self.norm2(x))), cache
