"""Table 8 "ft": DeiT weights come from a local file named by ``model_init.weights`` (no network)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import timm
import torch
from hydra.utils import instantiate
from safetensors.torch import save_file

from aft.experiments import compose_experiment
from aft.layers import AFTConv2d
from aft.models import VisionTransformer
from aft.models.deit_init import init_from_deit

SIZE = {"img_size": 64, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 10}


def tiny_pair() -> tuple[torch.nn.Module, VisionTransformer]:
    """A tiny timm DeiT and an AFT-conv ViT of the same width and depth."""
    torch.manual_seed(0)
    deit = timm.create_model("deit_tiny_patch16_224", **SIZE)
    mixer = partial(AFTConv2d, heads=4, kernel_size=3)
    model = VisionTransformer(
        mixer,
        img_size=64,
        depth=2,
        dim=32,
        num_classes=10,
        class_token=False,
        position_embedding=False,
        spatial_mixer=True,
    )
    return deit, model


@pytest.mark.parametrize("fmt", ["pth", "wrapped_pth", "safetensors"])
def test_weights_load_from_a_local_file(tmp_path: Path, fmt: str) -> None:
    deit, model = tiny_pair()
    state = deit.state_dict()
    path = tmp_path / f"deit.{fmt.split('_')[-1]}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"model": state} if fmt == "wrapped_pth" else state, path)  # DeiT's release wraps in "model"
    loaded = init_from_deit(model, str(path))
    assert "blocks.1.mixer.to_v.weight" in loaded and not any("to_k" in n or "to_q" in n for n in loaded)
    torch.testing.assert_close(model.state_dict()["blocks.1.mlp.fc1.weight"], state["blocks.1.mlp.fc1.weight"])


def test_missing_file_names_the_key_and_how_to_get_it(tmp_path: Path) -> None:
    _, model = tiny_pair()
    with pytest.raises(FileNotFoundError) as error:
        init_from_deit(model, str(tmp_path / "absent.pth"))
    message = str(error.value)
    assert "\n" not in message and "model_init.weights" in message
    assert "timm.create_model('deit_base_patch16_384', pretrained=True)" in message and "torch.save" in message


def test_ft_row_reads_the_path_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEIT_BASE_384_WEIGHTS", str(tmp_path / "deit_base.pth"))
    init = instantiate(compose_experiment("imagenet_aft_conv_base_k25_h32_ft384").model_init)
    assert init.func is init_from_deit and init.keywords == {"weights": str(tmp_path / "deit_base.pth")}
