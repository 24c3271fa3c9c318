"""Weights through timm: a checkpoint of this project's trainer loads with
``timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path})`` (at the
trained size or, resampled, at another), and models saved with timm's conventions load back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

import aft.models  # noqa: F401  (registers the models)
from aft.models.vit import checkpoint_filter_fn
from aft.training.checkpoint import load

ROOT = Path(__file__).resolve().parents[2]
FULL = "aft_full_tiny_patch16_224"
LAMBDA = "lambda_tiny_patch16_224"
# A 2-step AFT-full run of the classification demo on 32 x 32 images: 2 x 2 patches of 16, T = 5.
AFT_FULL_RUN = [
    "experiment=embedded_images_aft_conv",
    "model/mixer=aft_full",
    "~model.mixer.heads",
    "~model.mixer.kernel_size",
    "data.image_size=32",
    "model.patch_size=16",
    "model.depth=1",
    "model.dim=16",
    "model.class_token=true",
    "model.position_embedding=true",
    "model.spatial_mixer=false",
    "model.mixer.seq_len=5",
    "model.mixer.bias_dim=128",
    "data.num_train=32",
    "data.num_test=16",
    "trainer.batch_size=8",
    "trainer.eval_batch_size=16",
    "trainer.eval_batches=1",
    "trainer.max_steps=2",
    "trainer.checkpoint_every=2",
    "trainer.eval_every=0",
]
RUN_MODEL = {"depth": 1, "dim": 16, "num_classes": 10}  # the run's model, as create_model keywords


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("run")
    command = [sys.executable, "train.py", *AFT_FULL_RUN, f"hydra.run.dir={run}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return run / "checkpoints" / "last.pt"


def from_file(path: Path, name: str = FULL, **kwargs: object) -> torch.nn.Module:
    overlay = {"file": str(path), "num_classes": kwargs.get("num_classes", 1000)}
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


def test_a_trained_checkpoint_loads_through_create_model(trained_checkpoint: Path) -> None:
    trained = load(trained_checkpoint)["model"]
    model = from_file(trained_checkpoint, img_size=32, **RUN_MODEL)
    assert model.state_dict().keys() == trained.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())


def test_a_trained_checkpoint_loads_at_another_image_size(trained_checkpoint: Path) -> None:
    """Trained on a 2 x 2 grid, loaded at 64 px (4 x 4): as the model resized with set_input_size."""
    resized = from_file(trained_checkpoint, img_size=32, **RUN_MODEL)
    resized.set_input_size(img_size=64)
    model = from_file(trained_checkpoint, img_size=64, **RUN_MODEL)
    assert model.blocks[0].mixer.position_bias.u.shape == (17, 128) and model.pos_embed.shape == (1, 17, 16)
    for key, value in resized.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)
    images = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(images), resized(images))


def test_the_filter_takes_the_ema_weights_first_and_drops_wrapper_prefixes() -> None:
    model = timm.create_model(FULL, img_size=32, **RUN_MODEL)
    weights = model.state_dict()
    ema = {k: v + 1 for k, v in weights.items()}
    checkpoint = {"model": {f"module.{k}": v for k, v in weights.items()}, "optimizer": {}, "step": 2}
    assert all(torch.equal(v, weights[k]) for k, v in checkpoint_filter_fn(checkpoint, model).items())
    chosen = checkpoint_filter_fn({**checkpoint, "model_ema": ema}, model)
    assert all(torch.equal(v, ema[k]) for k, v in chosen.items())


@pytest.mark.parametrize("name", [FULL, LAMBDA])
def test_a_state_dict_saved_as_safetensors_loads_back(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, depth=1, dim=24, img_size=64).eval()
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(model.state_dict(), path)
    loaded = from_file(path, name, depth=1, dim=24, img_size=64)
    images = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(images), model(images))


def test_a_model_saved_for_the_hub_loads_from_its_folder(tmp_path: Path) -> None:
    """timm's save_for_hf folder (config.json + model.safetensors) -> create_model('local-dir:...')."""
    torch.manual_seed(0)
    model = timm.create_model(LAMBDA, depth=1, dim=24, num_classes=7).eval()
    timm.models.save_for_hf(model, tmp_path, safe_serialization=True, model_args={"depth": 1, "dim": 24})
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    images = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(loaded(images), model(images))
