"""Tiles of real colour photographs as CIFAR-style pixel sequences: §5.1's data in miniature.

Photographs are named ``"<package>:<file>"``: ``skimage:<file>`` is a file of ``skimage/data`` (the
scikit-image wheel), ``sklearn:<file>`` one of ``sklearn/datasets/images`` (the scikit-learn wheel),
both from ``aft[miniature]`` and read from the installed package, never fetched. Pillow decodes each to
RGB (a grey or transparent image is an error: only colour photographs). Each photo is cropped at its
top left to a multiple of ``downscale``, box-averaged by ``downscale`` (``PIL.Image.reduce``) and cut
into non-overlapping ``S x S`` tiles (``S = image_size``) in raster order from its top-left corner; the
remainder at the right and bottom is dropped.

Train tiles come from ``train_photos``, test tiles from ``test_photos``: a photograph, or another view
of its scene (the motorcycle stereo pair), in both lists is an error, so no test tile shares a pixel or
a scene with a training tile. The tiles, ``uint8 (N, S, S, 3)``, go through ``data.pixel_sequence``
exactly as CIFAR-10's images: ``seq_len = 3 S^2`` tokens (raster, R, G, B interleaved) after BOS 256,
vocab 256, the §5.1 train augmentation (flip, one shift in [-10, 10]), bits/dim over every sub-pixel of
the ``test`` split.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL
from PIL import Image

from data.base import DataError
from data.packaged import read_packaged
from data.pixel_sequence import PixelSequenceDataModule

FOLDERS = {"skimage": "skimage.data", "sklearn": "sklearn.datasets.images"}  # name prefix -> package folder
SAME_SCENE = {"skimage:motorcycle_right.png": "skimage:motorcycle_left.png"}  # photo -> the one naming its scene


def read_photo(name: str) -> tuple[Image.Image, dict[str, Any]]:
    """The RGB photograph ``"<package>:<file>"`` and the record of its file."""
    prefix, _, file = name.partition(":")
    if prefix not in FOLDERS or not file:
        raise ValueError(f"photo {name!r}: expected '<package>:<file>' with package one of {sorted(FOLDERS)}")
    raw, record = read_packaged(FOLDERS[prefix], file, "data=photo_tiles")
    image = Image.open(io.BytesIO(raw))
    if image.mode != "RGB":
        raise DataError(f"photo {name} has mode {image.mode}, not an RGB colour photograph: list another one")
    return image, {"photo": name, **record, "size": list(image.size)}


def tiles(image: Image.Image, side: int, downscale: int) -> np.ndarray:
    """``uint8 (N, side, side, 3)``: ``image`` box-averaged by ``downscale``, cut into non-overlapping tiles
    in raster order from the top-left corner."""
    width, height = image.size
    small = np.asarray(image.crop((0, 0, width - width % downscale, height - height % downscale)).reduce(downscale))
    rows, cols = small.shape[0] // side, small.shape[1] // side
    grid = small[: rows * side, : cols * side].reshape(rows, side, cols, side, 3).swapaxes(1, 2)
    return grid.reshape(rows * cols, side, side, 3)


def check_disjoint(splits: dict[str, list[str]]) -> None:
    """No scene in two splits (a photograph, or another view of its scene), no photograph twice in one."""
    shared = set.intersection(*({SAME_SCENE.get(name, name) for name in photos} for photos in splits.values()))
    if shared:
        raise ValueError(f"data.train_photos and data.test_photos share the scene of {sorted(shared)}")
    for split, photos in splits.items():
        if len(set(photos)) != len(photos):
            raise ValueError(f"data.{split}_photos lists a photo twice: {photos}")


class PhotoTiles(PixelSequenceDataModule):
    """Photograph tiles as pixel sequences: ``seq_len = 3 S^2``, vocab 256, BOS 256, eval split ``test``.

    Args:
        train_photos, test_photos: the photographs of each split (``"skimage:astronaut.png"``, ...).
        image_size: ``S``, tile side in pixels after downscaling.
        downscale: integer box-filter factor applied to each photograph before tiling.
    """

    def __init__(
        self,
        train_photos: Sequence[str],
        test_photos: Sequence[str],
        image_size: int = 16,
        downscale: int = 2,
        num_workers: int = 0,
        pin_memory: bool = True,
    ) -> None:
        if image_size < 1 or downscale < 1:
            raise ValueError(f"data.image_size and data.downscale must be >= 1, got {image_size}, {downscale}")
        splits = {"train": list(train_photos), "test": list(test_photos)}
        check_disjoint(splits)
        images, photos = {}, {}
        for split, names in splits.items():
            read = [read_photo(name) for name in names]
            parts = [tiles(image, image_size, downscale) for image, _ in read]
            photos[split] = [{**record, "tiles": len(part)} for (_, record), part in zip(read, parts, strict=True)]
            images[split] = np.concatenate([np.zeros((0, image_size, image_size, 3), np.uint8), *parts])
            if not len(images[split]):
                raise DataError(
                    f"data.{split}_photos give no {image_size} x {image_size} tile at downscale {downscale}"
                )
        super().__init__(images, num_workers, pin_memory)
        self.record = {
            "name": "photo_tiles",
            "decoder": f"Pillow {PIL.__version__}",
            "image_size": image_size,
            "downscale": downscale,
            "photos": photos,
            "samples": {split: len(split_images) for split, split_images in images.items()},
            "pixel_md5": {
                split: hashlib.md5(split_images.tobytes()).hexdigest() for split, split_images in images.items()
            },
        }
        self._log_record()
