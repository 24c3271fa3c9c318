"""timm registration (``import aft.models``) of the Table 7 and 8 models."""

from __future__ import annotations

import pytest
import timm
import torch

from aft.experiments import build_on_meta, compose_experiment
from aft.models.registry import VARIANTS

# registered name -> the experiment config of the same table row
EXPERIMENT_OF = {
    "aft_full_tiny_patch16_224": "imagenet_aft_full_tiny",
    "aft_full_small_patch16_224": "imagenet_aft_full_small",
    "aft_conv_tiny_k11_h32_patch16_224": "imagenet_aft_conv_tiny_k11_h32",
    "aft_conv_tiny_k11_h192_patch16_224": "imagenet_aft_conv_tiny_k11_h192",
    "aft_conv_small_k11_h16_patch16_224": "imagenet_aft_conv_small_k11_h16",
    "aft_conv_small_k11_h384_patch16_224": "imagenet_aft_conv_small_k11_h384",
    "aft_conv_small_k15_h384_patch16_224": "imagenet_aft_conv_small_k15_h384",
    "aft_conv_base_k25_h32_patch16_384": "imagenet_aft_conv_base_k25_h32_rand384",
    "lambda_tiny_patch16_224": "imagenet_lambda_tiny",
    "lambda_small_patch16_224": "imagenet_lambda_small",
}


def test_every_variant_is_registered_with_timm() -> None:
    assert sorted(EXPERIMENT_OF) == sorted(VARIANTS)
    assert set(VARIANTS) <= set(timm.list_models("aft_*") + timm.list_models("lambda_*"))


@pytest.mark.parametrize("name", sorted(EXPERIMENT_OF))
def test_registered_model_equals_its_experiment_config(name: str) -> None:
    with torch.device("meta"):
        model = timm.create_model(name)
    from_config = build_on_meta(compose_experiment(EXPERIMENT_OF[name]).model)
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert shapes == {key: tuple(value.shape) for key, value in from_config.state_dict().items()}
    assert [type(b.mixer) for b in model.blocks] == [type(b.mixer) for b in from_config.blocks]
    img_size = VARIANTS[name]()["img_size"]
    assert model.pretrained_cfg["input_size"] == (3, img_size, img_size)
    assert model.pretrained_cfg["pool_size"] == (img_size // 16, img_size // 16)


def test_create_model_passes_keyword_arguments() -> None:
    with torch.device("meta"):
        model = timm.create_model("aft_conv_tiny_k11_h32_patch16_224", num_classes=10, drop_path_rate=0.1)
    assert model.head.out_features == 10 and model.blocks[-1].drop_path.drop_prob == pytest.approx(0.1)


def test_no_pretrained_weights_exist() -> None:
    """No hub id or url: pretrained=True needs pretrained_cfg_overlay=dict(file=...) (test_timm_weights.py)."""
    with pytest.raises(RuntimeError, match="No pretrained weights exist"):
        with torch.device("meta"):
            timm.create_model("aft_full_tiny_patch16_224", pretrained=True)
    cfg = timm.models.get_pretrained_cfg("aft_full_tiny_patch16_224")
    assert not cfg.url and not cfg.hf_hub_id and not cfg.has_weights
    assert not timm.list_pretrained("aft_*") and not timm.list_models("aft_*", pretrained=True)
