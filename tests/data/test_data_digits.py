"""scikit-learn's digits with ImageNet's DeiT pipeline: the split, the records, the batches, the recipe."""

import gzip
import hashlib
import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup

from aft.extras import MissingExtraError
from data.deit import SeededRepeatAugSampler
from data.digits import Digits
from data.imagenet import ImageNet
from tests.data.test_data_imagenet import N_CLASSES, indices

CSV = files("sklearn.datasets.data") / "digits.csv.gz"


@pytest.fixture(scope="module")
def digits() -> Digits:
    return Digits(num_workers=0)


def csv_rows() -> np.ndarray:
    """The file's rows, parsed here independently of the module: 64 levels 0..16, then the class."""
    lines = gzip.decompress(CSV.read_bytes()).decode().splitlines()
    return np.array([[int(value) for value in line.split(",")] for line in lines])


def test_split_is_the_last_fifth_by_index_and_recorded_with_md5s(digits: Digits) -> None:
    record = digits.describe()
    assert record["source"] == "scikit-learn 1.9.1 sklearn/datasets/data/digits.csv.gz"
    assert record["md5"] == hashlib.md5(CSV.read_bytes()).hexdigest()
    assert record["indices"] == {"train": [0, 1438], "val": [1438, 1797]}  # disjoint, covering all 1797 rows
    assert record["samples"] == {"train": 1438, "val": 359}
    rows = csv_rows()
    pixels = np.array([[round(level * 255 / 16) for level in row[:64]] for row in rows], np.uint8).reshape(-1, 8, 8)
    assert record["pixel_md5"] == {
        "train": hashlib.md5(pixels[:1438].tobytes()).hexdigest(),
        "val": hashlib.md5(pixels[1438:].tobytes()).hexdigest(),
    }
    assert digits.datasets["val"].labels.tolist() == rows[1438:, 64].tolist()


def test_eval_batches_are_the_stored_grey_digits_in_rgb(digits: Digits) -> None:
    images, labels = next(iter(digits.eval_dataloader("val", 359)))
    assert images.shape == (359, 3, 8, 8) and images.dtype == torch.float32 and labels.dtype == torch.int64
    rows = csv_rows()[1438:]
    assert labels.tolist() == rows[:, 64].tolist() and set(labels.tolist()) == set(range(10))
    grey = torch.from_numpy(np.rint(rows[:, :64] * 255 / 16).reshape(-1, 1, 8, 8)).float() / 255
    mean, std = (torch.tensor(stats).view(1, 3, 1, 1) for stats in (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
    assert torch.allclose(images, (grey.expand(-1, 3, -1, -1) - mean) / std, atol=1e-6)  # crop_pct 1.0: no resampling


def test_train_batches_have_imagenets_format(digits: Digits) -> None:
    images, labels = next(iter(digits.train_dataloader(32, seed=0)))
    assert images.shape == (32, 3, 8, 8) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert 0 <= labels.min() and labels.max() < 10
    mixed, targets = digits.mixup_fn()(images, labels)
    assert mixed.shape == images.shape and targets.shape == (32, 10)
    assert torch.allclose(targets.sum(1), torch.ones(32))


def test_unaugmented_training_sees_the_stored_digits() -> None:
    plain = Digits(num_workers=0, augment=False, mixup=0.0, cutmix=0.0, repeated_aug=1)
    assert plain.mixup_fn() is None
    train = plain.datasets["train"]
    stored = torch.stack([plain._eval_dataset("train")[i][0] for i in range(4)])
    assert torch.equal(torch.stack([train[i][0] for i in range(4)]), stored)  # no crop, flip, RandAugment, erasing
    assert len(plain.train_dataloader(batch_size=1)) == 1438  # every image once an epoch


def test_two_constructions_give_the_same_bytes(digits: Digits) -> None:
    again = Digits(num_workers=0)
    assert again.describe() == digits.describe()
    a, b = (next(iter(dm.train_dataloader(16, seed=4, epoch=2))) for dm in (digits, again))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_the_recipe_is_imagenets(digits: Digits, imagenet_root: Path) -> None:
    imagenet = ImageNet(str(imagenet_root), num_classes=N_CLASSES, image_size=8, eval_crop_pct=1.0, num_workers=0)
    mine, theirs = digits.describe(), imagenet.describe()
    for key in ("train_transform", "eval_transform", "repeated_aug", "eval_crop_pct"):
        assert mine[key] == theirs[key], key
    assert {**mine["mixup"], "num_classes": N_CLASSES} == theirs["mixup"]
    assert isinstance(digits.mixup_fn(), Mixup) and digits.label_smoothing == 0.1
    assert (digits.task, digits.eval_splits, digits.valid_split, digits.seeds_draws) == (
        imagenet.task,
        imagenet.eval_splits,
        imagenet.valid_split,
        imagenet.seeds_draws,
    )


def test_repeated_augmentation_sampler(digits: Digits) -> None:
    loader = digits.train_dataloader(64, seed=0)
    assert isinstance(loader.sampler.sampler, SeededRepeatAugSampler)
    order = indices(loader)
    assert len(order) == 1280 and order != indices(digits.train_dataloader(64, seed=1))  # timm: 1438 // 256 * 256
    assert order == indices(digits.train_dataloader(64, seed=0))


def test_bad_arguments_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match=r"data.num_classes must be 10 for the digits 0-9, got 1000"):
        Digits(num_classes=1000)
    with pytest.raises(ValueError, match=r"data.val_fraction=0.0 leaves an empty split of the 1797 digits"):
        Digits(val_fraction=0.0)


def test_without_scikit_learn_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets.data", None)  # as if not installed
    with pytest.raises(
        MissingExtraError, match=r"^data=digits needs sklearn, which is not installed: pip install 'aft\[miniature\]'$"
    ):
        Digits()
