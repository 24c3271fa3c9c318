"""DeiT/ViT image classifier with a pluggable token mixer (§5.3).

A ViT [5] as trained by DeiT [6] (patch 16; tiny ``L=12, d=192``, small ``L=12, d=384``,
base ``L=12, d=768``) built from timm's ``PatchEmbed`` and the pre-LN
:class:`aft.models.block.Block` (timm ``Mlp``, ``DropPath``, ``LayerNorm``), with the attention
replaced by any token mixer. Two layouts, chosen by three switches:

* ViT/DeiT (AFT-full, §5.3): ``class_token=True, position_embedding=True, spatial_mixer=False``:
  a class token and learned position embeddings, the mixer sees ``(B, 1 + Y X, D)``
  (``T = 197`` at 224), and the head reads the class token.
* AFT-conv (§5.3): ``class_token=False, position_embedding=False, spatial_mixer=True``: the
  mixer sees the patch grid ``(B, Y, X, D)`` in every block and the head reads the global
  average of the grid, so the model is fully convolutional (any input size divisible by
  the patch size). Lambda (Table 7) keeps the grid position embedding, hence is tied to its
  grid size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from timm.layers import LayerNorm, PatchEmbed, trunc_normal_
from torch import Tensor, nn

from aft.models.block import Block

INIT_STD = 0.02  # timm ViT


class VisionTransformer(nn.Module):
    """ViT encoder + linear classifier with a pluggable, non-causal token mixer.

    Args:
        mixer: factory called once per block as ``mixer(dim=dim)`` (Hydra: ``_partial_: true``);
            sequence mixers map ``(B, T, D)``, spatial mixers ``(B, Y, X, D)``, to the same shape.
        img_size: training image side; fixes the grid of the position embedding.
        patch_size: side of the non-overlapping patches (16 in §5.3).
        in_chans: image channels.
        num_classes: classifier outputs (1000 on ImageNet-1K).
        depth: number of blocks ``L``.
        dim: feature width ``d``.
        mlp_ratio: MLP hidden width over ``d`` (4).
        class_token: prepend a learned class token and classify from it; else average-pool.
        position_embedding: add learned absolute position embeddings.
        spatial_mixer: keep tokens as the ``(B, Y, X, D)`` grid through the blocks
            (AFT-conv, Lambda); requires ``class_token=False``.
        drop_rate: dropout on the embeddings, the mixer outputs, the MLPs and before the head.
        drop_path_rate: stochastic depth, rising linearly from 0 to this over the blocks (DeiT).
    """

    def __init__(
        self,
        mixer: Callable[..., nn.Module],
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        depth: int = 12,
        dim: int = 192,
        mlp_ratio: float = 4.0,
        class_token: bool = True,
        position_embedding: bool = True,
        spatial_mixer: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_mixer and class_token:
            raise ValueError("a class token has no place on the patch grid: set class_token=false with spatial_mixer")
        self.num_classes = num_classes
        self.spatial_mixer = spatial_mixer
        self.patch_embed = PatchEmbed(
            img_size, patch_size, in_chans, dim, output_fmt="NHWC", strict_img_size=position_embedding
        )
        grid_y, grid_x = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
        token_shape = (grid_y, grid_x) if spatial_mixer else (int(class_token) + grid_y * grid_x,)
        self.pos_embed = nn.Parameter(torch.zeros(1, *token_shape, dim)) if position_embedding else None
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(Block(dim, mixer(dim=dim), mlp_ratio, drop_rate, rate) for rate in rates)
        for block in self.blocks:
            if getattr(block.mixer, "causal", False):
                raise ValueError(f"{type(block.mixer).__name__} is causal: an image encoder needs causal=false")
        self.norm = LayerNorm(dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """timm's ViT init: truncated ``N(0, 0.02)`` linear weights and position embedding,
        ``N(0, 1e-6)`` class token; AFT position biases keep their own init (Eq. 7, 8)."""
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=INIT_STD)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward_features(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> normalized tokens ``(B, Y, X, D)`` (spatial) or ``(B, T, D)``."""
        x = self.patch_embed(images)  # (B, Y, X, D)
        if not self.spatial_mixer:
            x = x.flatten(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_head(self, features: Tensor) -> Tensor:
        """Class token, or the global average of all tokens, -> logits ``(B, num_classes)``."""
        pooled = features[:, 0] if self.cls_token is not None else features.flatten(1, -2).mean(dim=1)
        return self.head(self.head_drop(pooled))

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> logits ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(images))
