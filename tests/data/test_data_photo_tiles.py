"""Photograph tiles as CIFAR-style pixel sequences: the tiles, the photo-disjoint split, records, batches."""

import hashlib
import sys
from importlib.resources import files

import numpy as np
import pytest
import torch
from PIL import Image

from aft.extras import MissingExtraError
from data.base import DataError
from data.photo_tiles import PhotoTiles
from data.pixel_sequence import BOS_TOKEN
from tests.data.test_data_cifar10 import match_augmented

TRAIN, TEST = ["skimage:chelsea.png"], ["sklearn:flower.jpg", "skimage:coffee.png"]
FILES = {
    "skimage:chelsea.png": files("skimage.data") / "chelsea.png",
    "sklearn:flower.jpg": files("sklearn.datasets.images") / "flower.jpg",
    "skimage:coffee.png": files("skimage.data") / "coffee.png",
}


def make(**kwargs) -> PhotoTiles:
    """Few tiles: photographs downscaled by 8 (chelsea: 56 x 37 -> 3 x 2 tiles of 16)."""
    return PhotoTiles(**{"train_photos": TRAIN, "test_photos": TEST, "image_size": 16, "downscale": 8, **kwargs})


@pytest.fixture(scope="module")
def tiles() -> PhotoTiles:
    return make()


def expected_tiles(name: str, side: int, factor: int) -> np.ndarray:
    """Tiles computed here: the photo's factor x factor blocks averaged (rounded), cut in raster order."""
    photo = np.asarray(Image.open(FILES[name]).convert("RGB"), dtype=np.float64)
    rows, cols = photo.shape[0] // factor // side, photo.shape[1] // factor // side
    blocks = photo[: rows * side * factor, : cols * side * factor]
    small = blocks.reshape(rows * side, factor, cols * side, factor, 3).mean(axis=(1, 3))
    return np.array(
        [small[r * side : (r + 1) * side, c * side : (c + 1) * side] for r in range(rows) for c in range(cols)]
    )


def test_tiles_are_box_averaged_blocks_of_the_photographs(tiles: PhotoTiles) -> None:
    assert tiles.images["train"].shape == (6, 16, 16, 3) and tiles.images["train"].dtype == np.uint8
    for split, names in (("train", TRAIN), ("test", TEST)):
        expected = np.concatenate([expected_tiles(name, 16, 8) for name in names])
        assert tiles.images[split].shape == expected.shape
        assert np.abs(tiles.images[split] - expected).max() <= 0.5 + 1e-9  # PIL rounds the block mean


def test_batches_are_cifar_style_sequences(tiles: PhotoTiles) -> None:
    assert (tiles.task, tiles.seq_len, tiles.vocab_size, tiles.bos_token, tiles.eval_splits) == (
        "lm",
        768,
        256,
        256,
        ("test",),
    )
    tokens, masks = next(iter(tiles.eval_dataloader("test", 4)))
    assert tokens.shape == (4, 769) and tokens.dtype == torch.int64 and masks.shape == (4, 768) and masks.all()
    assert (tokens[:, 0] == BOS_TOKEN).all() and tokens[:, 1:].max() <= 255 and tokens[:, 1:].min() >= 0
    assert tokens[0, 1:].tolist() == tiles.images["test"][0].reshape(-1).tolist()  # raster, R, G, B interleaved
    batch = next(iter(tiles.train_dataloader(3, seed=0)))
    assert batch.shape == (3, 769) and (batch[:, 0] == BOS_TOKEN).all()


def test_train_augmentation_is_cifars(tiles: PhotoTiles) -> None:
    seen = [
        match_augmented(sequence, tiles.images["train"])
        for epoch in range(3)
        for sequence in torch.cat(list(tiles.train_dataloader(3, seed=1, epoch=epoch)))
    ]
    assert sorted(index for index, *_ in seen[:6]) == list(range(6))  # one epoch = each tile once
    assert {flipped for _, flipped, _ in seen} == {False, True} and len({shift for *_, shift in seen}) > 3


def test_records_carry_the_md5s_of_the_files_and_pixels(tiles: PhotoTiles) -> None:
    record = tiles.describe()
    photos = [photo for split in ("train", "test") for photo in record["photos"][split]]
    assert [photo["photo"] for photo in photos] == TRAIN + TEST
    for photo in photos:
        assert photo["md5"] == hashlib.md5(FILES[photo["photo"]].read_bytes()).hexdigest()
        assert photo["version"] == {"scikit-image": "0.26.0", "scikit-learn": "1.9.1"}[photo["package"]]
    assert photos[0]["file"] == "skimage/data/chelsea.png" and photos[1]["file"] == "sklearn/datasets/images/flower.jpg"
    assert [photo["tiles"] for photo in photos] == [6, 15, 12]
    assert record["samples"] == {"train": 6, "test": 27}
    assert record["pixel_md5"] == {
        split: hashlib.md5(tiles.images[split].tobytes()).hexdigest() for split in record["samples"]
    }
    assert make().describe() == record  # the same bytes on every construction


@pytest.mark.parametrize(
    "train, test, message",
    [
        (TRAIN, TRAIN, "share the scene of"),
        (["skimage:motorcycle_left.png"], ["skimage:motorcycle_right.png"], "share the scene of"),
        (TRAIN * 2, TEST, r"data.train_photos lists a photo twice"),
    ],
)
def test_a_photograph_or_scene_in_both_splits_is_an_error(train: list[str], test: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(train_photos=train, test_photos=test)


def test_bad_photo_names_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match=r"expected '<package>:<file>' with package one of \['skimage', 'sklearn'\]"):
        make(train_photos=["astronaut.png"])
    with pytest.raises(DataError, match=r"scikit-image 0\.26\.0 has no file nothing\.png in skimage\.data"):
        make(train_photos=["skimage:nothing.png"])
    with pytest.raises(DataError, match=r"skimage:camera\.png has mode L, not an RGB colour photograph"):
        make(train_photos=["skimage:camera.png"])
    with pytest.raises(DataError, match=r"data\.train_photos give no 16 x 16 tile at downscale 64"):
        make(downscale=64)


def test_without_scikit_image_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage.data", None)  # as if not installed
    with pytest.raises(
        MissingExtraError,
        match=r"^data=photo_tiles needs skimage, which is not installed: pip install 'aft\[miniature\]'$",
    ):
        make()
