"""DeiT/ViT image classifier with a pluggable token mixer (§5.3), with timm's model interface.

A ViT [5] as trained by DeiT [6] (patch 16; tiny ``L=12, d=192``, small ``L=12, d=384``,
base ``L=12, d=768``) built from timm's ``PatchEmbed`` and the pre-LN
:class:`aft.models.block.Block` (timm ``Mlp``, ``DropPath``, ``LayerNorm``), with the attention
replaced by any token mixer. Two layouts, chosen by three switches:

* ViT/DeiT (AFT-full, §5.3): ``class_token=True, position_embedding=True, spatial_mixer=False``:
  a class token and learned position embeddings, the mixer sees ``(B, 1 + Y X, D)``
  (``T = 197`` at 224), and the head reads the class token (``global_pool='token'``).
* AFT-conv (§5.3): ``class_token=False, position_embedding=False, spatial_mixer=True``: the
  mixer sees the patch grid ``(B, Y, X, D)`` in every block and the head reads the global
  average of the grid (``global_pool='avg'``), so the model is fully convolutional (any input
  size divisible by the patch size). Lambda (Table 7) keeps the grid position embedding, hence
  is tied to its grid size.

timm interface, as timm's ``VisionTransformer``: ``forward_features`` ``(B, C, H, W)`` ->
``(B, T, D)`` or ``(B, Y, X, D)`` (``output_fmt``), ``forward_head(x, pre_logits)``,
``reset_classifier`` / ``get_classifier`` (``num_classes=0``: no head), ``global_pool``,
``num_features`` / ``head_hidden_size`` (``D``), ``feature_info`` (one entry per block, stride
16), ``forward_intermediates`` / ``prune_intermediate_layers`` (timm's ``features_only=True``
wrapper), ``set_grad_checkpointing``, ``group_matcher``, ``no_weight_decay``, ``device`` /
``dtype`` construction and ``set_input_size``, which resamples every position parameter on the
patch grid (:mod:`aft.models.resample`: ``pos_embed``, AFT-full's bias, Lambda's offsets).
:func:`checkpoint_filter_fn` loads this project's trainer checkpoints through timm's
``pretrained=True``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from timm.layers import LayerNorm, PatchEmbed, get_device_dtype, trunc_normal_
from timm.models import checkpoint, checkpoint_seq, clean_state_dict
from timm.models._features import feature_take_indices
from timm.models._input import update_model_input_size
from timm.models.vision_transformer import global_pool_nlc
from torch import Tensor, nn

from aft.baselines import LambdaLayer
from aft.models.block import Block
from aft.models.resample import (
    RELATIVE_TABLE,
    Grid,
    is_position_parameter,
    resample_position_parameter,
    resample_state_dict,
)

INIT_STD = 0.02  # timm ViT
POOLS = ("", "avg", "avgmax", "max", "token")  # timm's global_pool_nlc
# Weight sets of a checkpoint, in the order timm's load_state_dict(use_ema=True) takes them:
# an EMA set first, then timm's train.py key, then this project's trainer key ("model").
WEIGHT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")


class VisionTransformer(nn.Module):
    """ViT encoder + linear classifier with a pluggable, non-causal token mixer.

    Args:
        mixer: factory called once per block as ``mixer(dim=dim)`` (Hydra: ``_partial_: true``);
            sequence mixers map ``(B, T, D)``, spatial mixers ``(B, Y, X, D)``, to the same shape.
            A mixer with a ``seq_len`` (AFT-full) must have one row per token, ``1 + Y X``; a
            Lambda layer's ``grid_size`` must be the patch grid ``(Y, X)``.
        img_size: training image side (or ``(H, W)``); fixes the grid of the position parameters.
        patch_size: side of the non-overlapping patches (16 in §5.3).
        in_chans: image channels.
        num_classes: classifier outputs (1000 on ImageNet-1K); 0 gives no head (features).
        global_pool: ``'token'`` (class token), ``'avg'``, ``'avgmax'``, ``'max'`` over the patch
            tokens, or ``''`` (none); default ``'token'`` with a class token, else ``'avg'``.
        depth: number of blocks ``L``.
        dim: feature width ``d``.
        mlp_ratio: MLP hidden width over ``d`` (4).
        class_token: prepend a learned class token.
        position_embedding: add learned absolute position embeddings.
        spatial_mixer: keep tokens as the ``(B, Y, X, D)`` grid through the blocks
            (AFT-conv, Lambda); requires ``class_token=False``.
        drop_rate: dropout on the embeddings, the mixer outputs, the MLPs and before the head.
        drop_path_rate: stochastic depth, rising linearly from 0 to this over the blocks (DeiT).
        device, dtype: where and in which dtype the parameters are created (timm's factory
            keywords; ``device='meta'`` allocates nothing).
    """

    def __init__(
        self,
        mixer: Callable[..., nn.Module],
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str | None = None,
        depth: int = 12,
        dim: int = 192,
        mlp_ratio: float = 4.0,
        class_token: bool = True,
        position_embedding: bool = True,
        spatial_mixer: bool = False,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if spatial_mixer and class_token:
            raise ValueError("a class token has no place on the patch grid: set class_token=false with spatial_mixer")
        self.global_pool = ("token" if class_token else "avg") if global_pool is None else global_pool
        _check_pool(self.global_pool, class_token)
        self.num_classes, self.in_chans = num_classes, in_chans
        self.num_features = self.head_hidden_size = self.embed_dim = dim
        self.num_prefix_tokens = int(class_token)
        self.has_class_token, self.spatial_mixer = class_token, spatial_mixer
        self.output_fmt = "NHWC" if spatial_mixer else "NLC"  # of forward_features
        self.grad_checkpointing = False
        with torch.device(device) if device is not None else nullcontext():
            self.patch_embed = PatchEmbed(
                img_size, patch_size, in_chans, dim, output_fmt="NHWC", strict_img_size=position_embedding
            )
            grid = self.patch_embed.grid_size
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if class_token else None
            token_shape = grid if spatial_mixer else (self.num_prefix_tokens + grid[0] * grid[1],)
            self.pos_embed = nn.Parameter(torch.zeros(1, *token_shape, dim)) if position_embedding else None
            self.pos_drop = nn.Dropout(drop_rate)
            rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
            self.blocks = nn.Sequential(*(Block(dim, mixer(dim=dim), mlp_ratio, drop_rate, rate) for rate in rates))
            self.norm = LayerNorm(dim)
            self.head_drop = nn.Dropout(drop_rate)
            self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        for block in self.blocks:
            _check_mixer(block.mixer, grid, self.num_prefix_tokens)
        self.feature_info = [{"module": f"blocks.{i}", "num_chs": dim, "reduction": patch_size} for i in range(depth)]
        self._init_weights()
        if dtype is not None:
            self.to(dtype=dtype)

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

    # ---------------------------------------------------------------- forward

    def _embed(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> the blocks' input ``(B, Y, X, D)`` (spatial) or ``(B, P + Y X, D)``."""
        x = self.patch_embed(images)  # (B, Y, X, D)
        if not self.spatial_mixer:
            x = x.flatten(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        return self.pos_drop(x)

    def forward_features(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> normalized tokens ``(B, Y, X, D)`` (spatial) or ``(B, T, D)``."""
        x = self._embed(images)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def pool(self, features: Tensor, pool_type: str | None = None) -> Tensor:
        """``global_pool`` (or ``pool_type``) of the features: ``(B, D)``, or unchanged for ``''``."""
        pool_type = self.global_pool if pool_type is None else pool_type
        if not pool_type:
            return features
        tokens = features.flatten(1, 2) if self.spatial_mixer else features
        return global_pool_nlc(tokens, pool_type, num_prefix_tokens=self.num_prefix_tokens)

    def forward_head(self, features: Tensor, pre_logits: bool = False) -> Tensor:
        """Pooled features -> logits ``(B, num_classes)``; ``pre_logits`` stops before the head."""
        x = self.head_drop(self.pool(features))
        return x if pre_logits else self.head(x)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> logits ``(B, num_classes)`` (features ``(B, D)`` without a head)."""
        return self.forward_head(self.forward_features(images))

    # ---------------------------------------------------------------- intermediates

    def forward_intermediates(
        self,
        images: Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Block outputs as timm's ViT gives them.

        Args:
            indices: the last ``n`` blocks if an int, these blocks if a list, all if ``None``.
            return_prefix_tokens: pair every intermediate with its class token ``(B, 1, D)``.
            norm: apply the final norm to the intermediates.
            stop_early: skip the blocks after the last index (the final features then end there).
            output_fmt: ``'NCHW'`` ``(B, D, Y, X)`` or ``'NLC'`` ``(B, Y X, D)`` patch features.
            intermediates_only: return only the intermediates.

        Returns:
            ``(forward_features, intermediates)``, or the intermediates.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r}: use 'NCHW' or 'NLC'")
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        grid = self.patch_embed.dynamic_feat_size(images.shape[-2:])
        x = self._embed(images)
        blocks = self.blocks[: max_index + 1] if stop_early else self.blocks
        intermediates = []
        for i, block in enumerate(blocks):
            x = checkpoint(block, x) if self.grad_checkpointing else block(x)
            if i in take_indices:
                intermediates.append(self.norm(x) if norm else x)
        patches = [self._patch_grid(y, grid) for y in intermediates]
        patches = [y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y.flatten(1, 2) for y in patches]
        if return_prefix_tokens and self.num_prefix_tokens:
            patches = list(zip(patches, [y[:, : self.num_prefix_tokens] for y in intermediates], strict=True))
        if intermediates_only:
            return patches
        return self.norm(x), patches

    def _patch_grid(self, x: Tensor, grid: Grid) -> Tensor:
        """Block output -> its patch tokens ``(B, Y, X, D)``."""
        if self.spatial_mixer:
            return x
        return x[:, self.num_prefix_tokens :].reshape(x.shape[0], grid[0], grid[1], x.shape[-1])

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the blocks after the last of ``indices`` (and the norm, the head); the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    # ---------------------------------------------------------------- timm model API

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Embeddings and position biases, as :func:`aft.training.optim.weight_decay_groups`."""
        biases = {n for n, _ in self.named_parameters() if ".position_bias." in n or n.endswith(RELATIVE_TABLE)}
        return {"pos_embed", "cls_token"} | biases

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's layer groups (layer-wise lr decay): the stem, one group per block, the norm last."""
        return {
            "stem": r"^cls_token|pos_embed|patch_embed",
            "blocks": [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        }

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head of ``num_classes`` outputs (none for 0), on this model's device and dtype."""
        if global_pool is not None:
            _check_pool(global_pool, self.has_class_token)
            self.global_pool = global_pool
        self.num_classes = num_classes
        head = nn.Linear(self.embed_dim, num_classes, **get_device_dtype(self)) if num_classes > 0 else nn.Identity()
        self.head = head.train(self.training)

    def set_input_size(self, img_size: int | tuple[int, int] | None = None, patch_size: int | None = None) -> None:
        """Run at ``img_size`` (and ``patch_size``): the position parameters are resampled to the new grid."""
        old_grid = self.patch_embed.grid_size
        self.patch_embed.set_input_size(img_size=img_size, patch_size=patch_size)
        grid = self.patch_embed.grid_size
        if grid != old_grid:
            for name, param in list(self.named_parameters()):
                if is_position_parameter(name):
                    value = resample_position_parameter(
                        name, param.detach(), grid, self.num_prefix_tokens, self.spatial_mixer, old_grid
                    )
                    owner, _, leaf = name.rpartition(".")
                    setattr(self.get_submodule(owner), leaf, nn.Parameter(value, requires_grad=param.requires_grad))
            for block in self.blocks:
                _fit_mixer(block.mixer, grid, self.num_prefix_tokens)
        for info in self.feature_info:
            info["reduction"] = self.patch_embed.patch_size[0]
        update_model_input_size(self, self.patch_embed.img_size, patch_size=patch_size)


def _check_pool(global_pool: str, class_token: bool) -> None:
    if global_pool not in POOLS:
        raise ValueError(f"global_pool={global_pool!r}: use one of {POOLS}")
    if global_pool == "token" and not class_token:
        raise ValueError("global_pool='token' needs the class token: set class_token=true or global_pool='avg'")


def _check_mixer(mixer: nn.Module, grid: Grid, prefix_tokens: int) -> None:
    """A mixer's position parameters must cover exactly the tokens of the patch grid."""
    tokens = prefix_tokens + grid[0] * grid[1]
    if getattr(mixer, "causal", False):
        raise ValueError(f"{type(mixer).__name__} is causal: an image encoder needs causal=false")
    if hasattr(mixer, "seq_len") and mixer.seq_len != tokens:
        raise ValueError(
            f"{type(mixer).__name__}.seq_len={mixer.seq_len} but the image has {tokens} tokens: "
            f"set model.mixer.seq_len={tokens}"
        )
    if isinstance(mixer, LambdaLayer) and mixer.grid_size != tuple(grid):
        raise ValueError(
            f"LambdaLayer.grid_size={mixer.grid_size} but the patch grid is {tuple(grid)}: "
            f"set model.mixer.grid_size=[{grid[0]}, {grid[1]}]"
        )


def _fit_mixer(mixer: nn.Module, grid: Grid, prefix_tokens: int) -> None:
    """Record a resampled grid in a mixer's size attributes (its parameters are already resampled)."""
    if hasattr(mixer, "seq_len"):
        mixer.seq_len = prefix_tokens + grid[0] * grid[1]
    if isinstance(mixer, LambdaLayer):
        mixer.grid_size = tuple(grid)


def checkpoint_weights(checkpoint_or_weights: Mapping[str, Any]) -> Mapping[str, Any]:
    """The weights of a checkpoint (the first of :data:`WEIGHT_KEYS` it holds), or the state dict itself."""
    for key in WEIGHT_KEYS:
        if isinstance(checkpoint_or_weights.get(key), Mapping):
            return checkpoint_or_weights[key]
    return checkpoint_or_weights


def checkpoint_filter_fn(state: Mapping[str, Any], model: VisionTransformer) -> dict[str, Tensor]:
    """timm's pretrained filter: a checkpoint or state dict -> ``model``'s state dict.

    Takes the weights of a trainer checkpoint (``{"model": ..., "optimizer": ...}``; an EMA set
    under timm's ``state_dict_ema`` / ``model_ema`` keys first, see :data:`WEIGHT_KEYS`), drops
    DDP / ``torch.compile`` prefixes, and resamples the position parameters trained on another
    patch grid (224 -> 384) to ``model``'s.
    """
    weights = clean_state_dict(dict(checkpoint_weights(state)))
    grid = model.patch_embed.grid_size
    return resample_state_dict(weights, model.state_dict(), grid, model.num_prefix_tokens, model.spatial_mixer)
