"""timm registration of the ImageNet models of Tables 7 and 8 (§5.3).

``import aft.models`` registers every name below, after which ``timm.create_model(name)`` builds
the model. Extra keyword arguments (``num_classes``, ``drop_path_rate``, ``img_size``,
``global_pool``, ``device``, ``dtype``, ...) go to :class:`aft.models.vit.VisionTransformer`;
``img_size`` builds the position parameters for that size (AFT-full's bias and the Lambda
offsets included). ``features_only=True`` wraps the model in timm's ``FeatureGetterNet``
(``out_indices``: the last 3 blocks by default). DeiT tiny/small/base-384 and ResNet50 are
timm's own ``deit_tiny_patch16_224``, ``deit_small_patch16_224``, ``deit_base_patch16_384`` and
``resnet50``.

No weights are released: ``pretrained=True`` raises unless a file is given,
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path})``, with
``path`` a checkpoint of this project's trainer (``runs/<name>/last.pt``) or a state dict
(``.pth``, ``.safetensors``); :func:`aft.models.vit.checkpoint_filter_fn` takes its weights and
resamples the position parameters to the model's image size.

Names: ``aft_full_<size>_patch16_224`` (AFT-full, ``d' = 128``), ``aft_conv_<size>_k<kernel>_h<heads>_patch16_<img>``
(AFT-conv 2-d, "Kernel" and "Heads" columns), ``lambda_<size>_patch16_224`` (|k| = 16).

FX: the AFT and Lambda layers are timm leaf modules (``register_notrace_module``), so
``torch.fx`` traces the models around them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_module, to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from aft.baselines import LambdaLayer
from aft.layers import AFTConv1d, AFTConv2d, AFTFull, AFTLocal, AFTSimple
from aft.models.vit import VisionTransformer, checkpoint_filter_fn

PATCH_SIZE = 16  # §5.3
FULL_BIAS_DIM = 128  # §5.3: d' of AFT-full
LAMBDA_KEY_DIM = 16  # §5.3: |k| of the Lambda layer
FEATURE_BLOCKS = 3  # features_only: the last 3 blocks, as timm's ViT

# §5.3: "tiny" (L=12, d=192, h=3), "small" (L=12, d=384, h=6); DeiT base (L=12, d=768, h=12).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"depth": 12, "dim": 192, "heads": 3},
    "small": {"depth": 12, "dim": 384, "heads": 6},
    "base": {"depth": 12, "dim": 768, "heads": 12},
}

for _layer in (AFTFull, AFTLocal, AFTSimple, AFTConv1d, AFTConv2d, LambdaLayer):
    register_notrace_module(_layer)


def _grid(img_size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = to_2tuple(img_size)
    return height // PATCH_SIZE, width // PATCH_SIZE


def aft_full_variant(size: str, img_size: int | tuple[int, int] = 224) -> dict[str, Any]:
    """ViT layout (class token, position embedding, ``T = 1 + Y X``, 197 at 224) with AFT-full."""
    grid = _grid(img_size)
    mixer = partial(AFTFull, seq_len=1 + grid[0] * grid[1], bias_dim=FULL_BIAS_DIM)
    return _variant(size, img_size, mixer, class_token=True, position_embedding=True, spatial_mixer=False)


def aft_conv_variant(size: str, kernel_size: int, heads: int, img_size: int | tuple[int, int] = 224) -> dict[str, Any]:
    """Fully convolutional layout (no class token or position embedding, average pool) with AFT-conv 2-d."""
    mixer = partial(AFTConv2d, heads=heads, kernel_size=kernel_size)
    return _variant(size, img_size, mixer, class_token=False, position_embedding=False, spatial_mixer=True)


def lambda_variant(size: str, img_size: int | tuple[int, int] = 224) -> dict[str, Any]:
    """Grid layout with position embedding (no class token, average pool) with the Lambda layer."""
    mixer = partial(LambdaLayer, heads=SIZES[size]["heads"], key_dim=LAMBDA_KEY_DIM, grid_size=_grid(img_size))
    return _variant(size, img_size, mixer, class_token=False, position_embedding=True, spatial_mixer=True)


def _variant(size: str, img_size: int | tuple[int, int], mixer: Callable[..., Any], **layout: bool) -> dict[str, Any]:
    depth, dim = SIZES[size]["depth"], SIZES[size]["dim"]
    return {"mixer": mixer, "img_size": img_size, "patch_size": PATCH_SIZE, "depth": depth, "dim": dim, **layout}


# name -> the model's keyword arguments as a function of ``img_size`` (default: the trained size)
VARIANTS: dict[str, Callable[..., dict[str, Any]]] = {
    # Table 7
    "aft_full_tiny_patch16_224": partial(aft_full_variant, "tiny"),
    "aft_full_small_patch16_224": partial(aft_full_variant, "small"),
    "aft_conv_tiny_k11_h32_patch16_224": partial(aft_conv_variant, "tiny", kernel_size=11, heads=32),
    "aft_conv_tiny_k11_h192_patch16_224": partial(aft_conv_variant, "tiny", kernel_size=11, heads=192),
    "aft_conv_small_k11_h16_patch16_224": partial(aft_conv_variant, "small", kernel_size=11, heads=16),
    "aft_conv_small_k11_h384_patch16_224": partial(aft_conv_variant, "small", kernel_size=11, heads=384),
    "aft_conv_small_k15_h384_patch16_224": partial(aft_conv_variant, "small", kernel_size=15, heads=384),
    "lambda_tiny_patch16_224": partial(lambda_variant, "tiny"),
    "lambda_small_patch16_224": partial(lambda_variant, "small"),
    # Table 8
    "aft_conv_base_k25_h32_patch16_384": partial(aft_conv_variant, "base", kernel_size=25, heads=32, img_size=384),
}


def _pretrained_cfg(variant: dict[str, Any]) -> dict[str, Any]:
    """timm data config: DeiT evaluation (bicubic, crop 0.875 below 384 px, 1.0 at 384), as data.imagenet.

    No ``url`` or ``hf_hub_id``: no weights are released; ``file`` comes from ``pretrained_cfg_overlay``.
    """
    img_size = variant["img_size"]
    fixed = variant["position_embedding"]
    return {
        "num_classes": 1000,
        "input_size": (3, img_size, img_size),
        "pool_size": _grid(img_size),
        "crop_pct": 0.875 if img_size < 384 else 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": fixed,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "paper_name": "An Attention Free Transformer",
        "paper_ids": "arXiv:2105.14103",
        "notes": (
            "no released weights: pretrained=True needs pretrained_cfg_overlay=dict(file=<checkpoint>)",
            "position parameters tied to the patch grid: build with img_size or call set_input_size"
            if fixed
            else "fully convolutional: runs at any input size divisible by 16",
        ),
    }


default_cfgs = generate_default_cfgs({name: _pretrained_cfg(spec()) for name, spec in VARIANTS.items()})


def _builder(name: str) -> Callable[..., VisionTransformer]:
    """``VisionTransformer`` of ``VARIANTS[name]`` at ``img_size`` (the trained size if not given)."""

    def build(img_size: int | tuple[int, int] | None = None, **kwargs: Any) -> VisionTransformer:
        variant = VARIANTS[name]() if img_size is None else VARIANTS[name](img_size=img_size)
        return VisionTransformer(**{**variant, **kwargs})

    return build


def _entrypoint(name: str) -> Callable[..., VisionTransformer]:
    """A timm model entrypoint named ``name`` that builds ``VARIANTS[name]``."""

    def create(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
        out_indices = kwargs.pop("out_indices", FEATURE_BLOCKS)
        return build_model_with_cfg(
            _builder(name),
            name,
            pretrained,
            pretrained_filter_fn=checkpoint_filter_fn,
            feature_cfg={"out_indices": out_indices, "feature_cls": "getter"},
            **kwargs,
        )

    create.__name__ = create.__qualname__ = name
    create.__doc__ = f"{name}: :class:`aft.models.vit.VisionTransformer` with {VARIANTS[name]()}."
    return create


for _name in VARIANTS:
    register_model(_entrypoint(_name))
