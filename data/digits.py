"""scikit-learn's handwritten digits with the DeiT recipe: ImageNet's pipeline in miniature (§5.3).

Source: ``sklearn/datasets/data/digits.csv.gz`` of the scikit-learn wheel (``aft[miniature]``), the
1,797 8 x 8 digits of ``sklearn.datasets.load_digits``: one row per image, 64 grey levels in 0..16
(raster order) then the class 0..9. Each image becomes an 8 x 8 PIL RGB image: grey level ``x`` ->
``round(x * 255 / 16)``, replicated to the three channels.

Split by sample index: the last ``floor(val_fraction * N)`` samples are ``val`` (359 of 1,797 at 0.2,
33 to 37 per class), the others ``train``. Training and evaluation are ImageNet's
(``data.deit.DeitClassification``: RandAugment, random erasing, Mixup/CutMix, label smoothing,
repeated augmentation, the resize-and-centre-crop evaluation), on the same batches
``(FloatTensor (B, 3, S, S), LongTensor (B,))``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from data.deit import DeitClassification
from data.packaged import read_packaged

NUM_CLASSES = 10
LEVELS = 16  # grey levels 0..16
SIDE = 8


class LabelledImages(Dataset):
    """``(transform(image), label)`` items of in-memory PIL images: timm ``ImageDataset``'s interface."""

    def __init__(self, images: list[Image.Image], labels: np.ndarray) -> None:
        self.images, self.labels = images, labels
        self.transform = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]
        return (image if self.transform is None else self.transform(image)), int(self.labels[index])


def read_digits() -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """``uint8 (1797, 8, 8)`` pixels (levels scaled to 0..255), ``int64 (1797,)`` classes, the file's record."""
    raw, record = read_packaged("sklearn.datasets.data", "digits.csv.gz", "data=digits")
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.int64)
    pixels = np.rint(table[:, :-1] * 255 / LEVELS).astype(np.uint8).reshape(-1, SIDE, SIDE)
    return pixels, table[:, -1], record


def rgb_images(pixels: np.ndarray) -> list[Image.Image]:
    """``uint8 (N, H, W)`` grey pixels -> PIL RGB images, the grey value in all three channels."""
    return [Image.fromarray(np.repeat(image[..., None], 3, axis=-1), mode="RGB") for image in pixels]


class Digits(DeitClassification):
    """The 8 x 8 digits (10 classes) with the DeiT recipe; eval split ``val`` (the last samples).

    Args:
        val_fraction: fraction of the samples, taken from the end, that form ``val``.
        num_classes: 10, the digits 0-9 (a key so that model configs can read it).
        image_size: train crop side (8: the native size).
        eval_crop_pct: eval resize ratio (1.0: the native 8 x 8 digit, uncropped).
        recipe: the other keywords of ``DeitClassification`` (DeiT's values by default).
    """

    def __init__(
        self,
        val_fraction: float = 0.2,
        num_classes: int = NUM_CLASSES,
        image_size: int = SIDE,
        eval_crop_pct: float | None = 1.0,
        num_workers: int = 2,
        **recipe: Any,
    ) -> None:
        if num_classes != NUM_CLASSES:
            raise ValueError(f"data.num_classes must be {NUM_CLASSES} for the digits 0-9, got {num_classes}")
        pixels, labels, file = read_digits()
        num_val = int(len(pixels) * val_fraction)
        if not 0 < num_val < len(pixels):
            raise ValueError(f"data.val_fraction={val_fraction} leaves an empty split of the {len(pixels)} digits")
        ranges = {"train": (0, len(pixels) - num_val), "val": (len(pixels) - num_val, len(pixels))}
        datasets = {
            split: LabelledImages(rgb_images(pixels[start:stop]), labels[start:stop])
            for split, (start, stop) in ranges.items()
        }
        super().__init__(
            datasets, num_classes, image_size, eval_crop_pct=eval_crop_pct, num_workers=num_workers, **recipe
        )
        self.record = {
            "name": "digits",
            "source": f"{file['package']} {file['version']} {file['file']}",
            "md5": file["md5"],
            "indices": {split: list(bounds) for split, bounds in ranges.items()},  # [start, stop) of the rows
            "pixel_md5": {
                split: hashlib.md5(pixels[start:stop].tobytes()).hexdigest() for split, (start, stop) in ranges.items()
            },
            **self.record,
        }
        self._log_record()
