"""scripts/figures/*: the paper's figures from tiny random models and from a trained run folder."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from aft.experiments import compose_experiment
from aft.training.checkpoint import save_atomic
from tests.scripts.scripts import load_script

position_biases = load_script("figures/position_biases.py")
image_completion = load_script("figures/image_completion.py")
key_maps = load_script("figures/key_maps.py")

TINY_VIT = ["model.depth=2", "model.dim=32", "model.img_size=64"]
TINY_CONV = [*TINY_VIT, "model.mixer.heads=32", "model.mixer.kernel_size=3"]
GRATINGS = ["data=embedded_images", "data.num_train=4", "data.num_test=4", "data.num_workers=0"]
TINY_DECODER = ["model.depth=1", "model.dim=16", "model.seq_len=48", "model.mixer.window=8", "model.mixer.bias_dim=4"]
PIXEL_GRATINGS = [*GRATINGS, "data._target_=data.embedded_images.EmbeddedImageSequences", "data.image_size=4"]


def png_shape(path: Path) -> tuple[int, ...]:
    return matplotlib.image.imread(path).shape


@pytest.mark.parametrize(
    ("experiment", "overrides"),
    [
        ("imagenet_aft_conv_small_k11_h384", TINY_CONV),  # Fig. 1 right, 6
        ("imagenet_aft_conv_small_k11_h384_gumbel", TINY_CONV),  # Fig. 8
        ("imagenet_aft_full_small", [*TINY_VIT, "model.mixer.seq_len=17"]),  # Fig. 3
        ("cifar10_aft_local256_l24_d256", TINY_DECODER),  # AFT-local, causal
    ],
)
def test_position_biases(tmp_path: Path, experiment: str, overrides: list[str]) -> None:
    out = tmp_path / "biases.png"
    position_biases.main(["--random-init", experiment, *overrides, "--out", str(out)])
    assert png_shape(out)[2] in (3, 4)


def test_gumbel_kernels_keep_one_position_per_head() -> None:
    """§8, Eq. 10: at inference each head has a single non-zero exp(w) - 1."""
    model, _ = position_biases.load(
        position_biases.parser_with_model("").parse_args(
            ["--random-init", "imagenet_aft_conv_small_k11_h384_gumbel", *TINY_CONV, "--out", "x.png"]
        )
    )
    torch.nn.init.normal_(model.blocks[0].mixer.position_bias.gain)  # away from the all-zero initialization
    kernels = position_biases.conv_kernels(model.blocks[0].mixer, heads=16)
    assert len(kernels) == 16 and all((k != 0).sum() <= 1 for k in kernels)


def test_position_biases_refuse_a_model_without_them(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="learns no position biases"):
        position_biases.main(
            [
                "--random-init",
                "cifar10_aft_simple_l24_d256",
                "model.depth=1",
                "model.dim=16",
                "--out",
                str(tmp_path / "x.png"),
            ]
        )


def test_image_completion_keeps_the_top_half(tmp_path: Path) -> None:
    """Fig. 4: the prefix is the given top half; the sampled bottom half has the image's shape."""
    model, cfg = image_completion.load(
        image_completion.parser_with_model("").parse_args(
            ["--random-init", "cifar10_aft_local256_l24_d256", *TINY_DECODER, *PIXEL_GRATINGS, "--out", "x.png"]
        )
    )
    images = instantiate(cfg.data).images["test"][:3]
    completed = image_completion.complete(model, images, 2, 1.0, torch.Generator().manual_seed(0))
    assert completed.shape == (6, 4, 4, 3)
    assert (completed[:, :2] == images.repeat(2, axis=0)[:, :2]).all()
    out = tmp_path / "completion.png"
    image_completion.main(
        [
            "--random-init",
            "cifar10_aft_local256_l24_d256",
            *TINY_DECODER,
            *PIXEL_GRATINGS,
            "--num-images",
            "3",
            "--samples",
            "2",
            "--out",
            str(out),
        ]
    )
    assert png_shape(out)[2] in (3, 4)


def test_key_maps(tmp_path: Path) -> None:
    out = tmp_path / "keys.png"
    key_maps.main(
        [
            "--random-init",
            "imagenet_aft_conv_small_k11_h384",
            *TINY_CONV,
            *GRATINGS,
            "data.image_size=64",
            "--index",
            "2",
            "--heads",
            "4",
            "--out",
            str(out),
        ]
    )
    assert png_shape(out)[2] in (3, 4)


def test_figures_from_a_run_folder(tmp_path: Path) -> None:
    """A train.py run folder: saved config + checkpoint, read back through aft.runs."""
    experiment, overrides = "imagenet_aft_conv_small_k11_h384", [*TINY_CONV, *GRATINGS, "data.image_size=64"]
    cfg = compose_experiment(experiment, overrides)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")  # as Hydra saves it
    torch.manual_seed(1)
    model = instantiate(cfg.model)
    save_atomic({"model": model.state_dict(), "step": 7}, tmp_path / "checkpoints")
    out = tmp_path / "keys.png"
    key_maps.main(["--run", str(tmp_path), "--heads", "2", "--out", str(out)])
    loaded, _ = key_maps.load(key_maps.parser_with_model("").parse_args(["--run", str(tmp_path), "--out", "x.png"]))
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    )
    position_biases.main(["--run", str(tmp_path / "checkpoints" / "last.pt"), "--out", str(tmp_path / "b.png")])
    assert png_shape(out)[2] in (3, 4) and (tmp_path / "b.png").exists()
