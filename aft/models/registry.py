"""timm registration of the ImageNet models of Tables 7 and 8 (§5.3).

``import aft.models`` registers every name below, after which ``timm.create_model(name)`` builds
the model (no pretrained weights exist: ``pretrained=True`` raises). Extra keyword arguments
(``num_classes``, ``drop_path_rate``, ...) go to :class:`aft.models.vit.VisionTransformer`.
DeiT tiny/small/base-384 and ResNet50 are timm's own ``deit_tiny_patch16_224``,
``deit_small_patch16_224``, ``deit_base_patch16_384`` and ``resnet50``.

Names: ``aft_full_<size>_patch16_224`` (AFT-full, ``d' = 128``), ``aft_conv_<size>_k<kernel>_h<heads>_patch16_<img>``
(AFT-conv 2-d, "Kernel" and "Heads" columns), ``lambda_<size>_patch16_224`` (|k| = 16).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from aft.baselines import LambdaLayer
from aft.layers import AFTConv2d, AFTFull
from aft.models.vit import VisionTransformer

PATCH_SIZE = 16  # §5.3
FULL_BIAS_DIM = 128  # §5.3: d' of AFT-full
LAMBDA_KEY_DIM = 16  # §5.3: |k| of the Lambda layer

# §5.3: "tiny" (L=12, d=192, h=3), "small" (L=12, d=384, h=6); DeiT base (L=12, d=768, h=12).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"depth": 12, "dim": 192, "heads": 3},
    "small": {"depth": 12, "dim": 384, "heads": 6},
    "base": {"depth": 12, "dim": 768, "heads": 12},
}


def aft_full_variant(size: str, img_size: int = 224) -> dict[str, Any]:
    """ViT layout (class token, position embedding, ``T = 1 + (img/16)^2``) with AFT-full."""
    seq_len = 1 + (img_size // PATCH_SIZE) ** 2
    mixer = partial(AFTFull, seq_len=seq_len, bias_dim=FULL_BIAS_DIM)
    return _variant(size, img_size, mixer, class_token=True, position_embedding=True, spatial_mixer=False)


def aft_conv_variant(size: str, kernel_size: int, heads: int, img_size: int = 224) -> dict[str, Any]:
    """Fully convolutional layout (no class token or position embedding, average pool) with AFT-conv 2-d."""
    mixer = partial(AFTConv2d, heads=heads, kernel_size=kernel_size)
    return _variant(size, img_size, mixer, class_token=False, position_embedding=False, spatial_mixer=True)


def lambda_variant(size: str, img_size: int = 224) -> dict[str, Any]:
    """Grid layout with position embedding (no class token, average pool) with the Lambda layer."""
    grid = img_size // PATCH_SIZE
    mixer = partial(LambdaLayer, heads=SIZES[size]["heads"], key_dim=LAMBDA_KEY_DIM, grid_size=(grid, grid))
    return _variant(size, img_size, mixer, class_token=False, position_embedding=True, spatial_mixer=True)


def _variant(size: str, img_size: int, mixer: Callable[..., Any], **layout: bool) -> dict[str, Any]:
    depth, dim = SIZES[size]["depth"], SIZES[size]["dim"]
    return {"mixer": mixer, "img_size": img_size, "patch_size": PATCH_SIZE, "depth": depth, "dim": dim, **layout}


VARIANTS: dict[str, dict[str, Any]] = {
    # Table 7
    "aft_full_tiny_patch16_224": aft_full_variant("tiny"),
    "aft_full_small_patch16_224": aft_full_variant("small"),
    "aft_conv_tiny_k11_h32_patch16_224": aft_conv_variant("tiny", kernel_size=11, heads=32),
    "aft_conv_tiny_k11_h192_patch16_224": aft_conv_variant("tiny", kernel_size=11, heads=192),
    "aft_conv_small_k11_h16_patch16_224": aft_conv_variant("small", kernel_size=11, heads=16),
    "aft_conv_small_k11_h384_patch16_224": aft_conv_variant("small", kernel_size=11, heads=384),
    "aft_conv_small_k15_h384_patch16_224": aft_conv_variant("small", kernel_size=15, heads=384),
    "lambda_tiny_patch16_224": lambda_variant("tiny"),
    "lambda_small_patch16_224": lambda_variant("small"),
    # Table 8
    "aft_conv_base_k25_h32_patch16_384": aft_conv_variant("base", kernel_size=25, heads=32, img_size=384),
}


def _pretrained_cfg(variant: dict[str, Any]) -> dict[str, Any]:
    """timm data config: DeiT evaluation (bicubic, crop 0.875 below 384 px, 1.0 at 384), as data.imagenet."""
    img_size = variant["img_size"]
    return {
        "num_classes": 1000,
        "input_size": (3, img_size, img_size),
        "crop_pct": 0.875 if img_size < 384 else 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": variant["position_embedding"],
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
    }


default_cfgs = generate_default_cfgs({name: _pretrained_cfg(variant) for name, variant in VARIANTS.items()})


def _entrypoint(name: str) -> Callable[..., VisionTransformer]:
    """A timm model entrypoint named ``name`` that builds ``VARIANTS[name]``."""

    def create(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
        return build_model_with_cfg(VisionTransformer, name, pretrained, **{**VARIANTS[name], **kwargs})

    create.__name__ = create.__qualname__ = name
    create.__doc__ = f"{name}: :class:`aft.models.vit.VisionTransformer` with {VARIANTS[name]}."
    return create


for _name in VARIANTS:
    register_model(_entrypoint(_name))
