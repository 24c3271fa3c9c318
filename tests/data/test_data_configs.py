"""Each configs/data/*.yaml instantiates its module through Hydra (real datasets on tiny files)."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from data.base import DataModule
from data.cifar10 import Cifar10
from data.digits import Digits
from data.embedded_images import EmbeddedImages
from data.embedded_text import EmbeddedText
from data.enwik8 import Enwik8
from data.imagenet import ImageNet
from data.photo_tiles import PhotoTiles
from tests.data.data_fixtures import ENWIK8_SPLITS, write_enwik8_zip

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "data"


def build(name: str, overrides: list[str]) -> DataModule:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return instantiate(compose(config_name=name, overrides=["num_workers=0", *overrides]))


def test_every_config_is_tested() -> None:
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == [
        "cifar10",
        "digits",
        "embedded_images",
        "embedded_text",
        "enwik8",
        "imagenet",
        "photo_tiles",
    ]


def test_enwik8_config_uses_the_standard_split_and_data_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AFT_DATA_ROOT", str(tmp_path))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="enwik8")
    assert cfg.root == f"{tmp_path}/enwik8" and list(cfg.split_bytes) == [90_000_000, 5_000_000, 5_000_000]
    write_enwik8_zip(tmp_path / "enwik8", bytes(sum(ENWIK8_SPLITS)))
    split = ",".join(map(str, ENWIK8_SPLITS))
    assert isinstance(build("enwik8", [f"split_bytes=[{split}]", "seq_len=16"]), Enwik8)


def test_cifar10_config(cifar_root) -> None:
    root, _ = cifar_root
    dm = build("cifar10", [f"root={root}", "verify_md5=false", "expected_train=10", "expected_test=4"])
    assert isinstance(dm, Cifar10) and dm.seq_len == 3072


def test_imagenet_config(imagenet_root: Path) -> None:
    dm = build("imagenet", [f"root={imagenet_root}", "num_classes=3", "image_size=32"])
    assert isinstance(dm, ImageNet) and dm.mixup_fn().mixup_alpha == 0.8 and dm.repeated_aug == 3


@pytest.mark.parametrize("name, cls", [("embedded_text", EmbeddedText), ("embedded_images", EmbeddedImages)])
def test_embedded_configs_need_no_files(name: str, cls: type) -> None:
    overrides = ["num_train=100", "num_test=20"] if name == "embedded_images" else []
    assert isinstance(build(name, overrides), cls)


def test_digits_config_has_imagenets_recipe_keys() -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        digits, imagenet = (set(compose(config_name=name)) for name in ("digits", "imagenet"))
    assert digits - imagenet == {"val_fraction"} and imagenet - digits == {"root", "source", "hf_cache_dir"}
    dm = build("digits", [])
    assert isinstance(dm, Digits) and dm.describe()["samples"] == {"train": 1438, "val": 359}
    assert dm.mixup_fn().mixup_alpha == 0.8 and dm.repeated_aug == 3 and dm.eval_crop_pct == 1.0


def test_photo_tiles_config_splits_the_photographs() -> None:
    dm = build("photo_tiles", [])
    assert isinstance(dm, PhotoTiles) and dm.seq_len == 768
    assert dm.describe()["samples"] == {"train": 1682, "test": 386}
