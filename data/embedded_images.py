"""Embedded image classification data: generated oriented gratings, no download.

Class ``k`` of ``C`` is a sinusoidal grating at orientation ``pi * k / C``. Each image draws its own
spatial frequency (1.5 to 4 cycles per image), phase, a dark and a light colour (so colour carries no
label information) and Gaussian pixel noise, all from a numpy generator seeded by ``(seed, split)``, so
the data are identical on every machine. Images are ``uint8 (N, S, S, 3)``.

``EmbeddedImages`` serves them for classification (same batches as ImageNet, images scaled to [-1, 1]);
``EmbeddedImageSequences`` serves them as CIFAR-style pixel sequences (§5.1 tokens and augmentation).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from data.base import DataModule, seed_for
from data.pixel_sequence import PixelSequenceDataModule

SPLITS = ("train", "test")


def gratings(
    num_images: int, image_size: int, num_classes: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``uint8 (N, S, S, 3)`` grating images and ``int64 (N,)`` labels, a pure function of the arguments."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(num_classes, size=num_images)
    angle = (np.pi * labels / num_classes).astype(np.float32)[:, None, None]
    frequency = rng.uniform(1.5, 4.0, size=(num_images, 1, 1)).astype(np.float32)
    phase = rng.uniform(0.0, 2 * np.pi, size=(num_images, 1, 1)).astype(np.float32)
    rows, cols = np.mgrid[0:image_size, 0:image_size].astype(np.float32) / image_size
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * (cols * np.cos(angle) + rows * np.sin(angle)) + phase)
    dark = rng.uniform(0.0, 0.4, size=(num_images, 1, 1, 3)).astype(np.float32)
    light = rng.uniform(0.6, 1.0, size=(num_images, 1, 1, 3)).astype(np.float32)
    image = dark + (light - dark) * wave[..., None]
    image += noise * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8), labels.astype(np.int64)


def generate_splits(
    num_train: int, num_test: int, image_size: int, num_classes: int, noise: float, seed: int
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, object]]:
    """``{"train": (images, labels), "test": (images, labels)}`` from independent seeded streams,
    and the record of what was generated (parameters, counts, md5 of the pixels)."""
    sizes = {"train": num_train, "test": num_test}
    data = {
        split: gratings(sizes[split], image_size, num_classes, noise, seed_for(seed, index))
        for index, split in enumerate(SPLITS)
    }
    record = {
        "name": "embedded_images",
        "source": "generated gratings",
        "params": {"image_size": image_size, "num_classes": num_classes, "noise": noise, "seed": seed},
        "samples": sizes,
        "md5": {split: hashlib.md5(images.tobytes()).hexdigest() for split, (images, _) in data.items()},
    }
    return data, record


class EmbeddedImages(DataModule):
    """Grating classification: ``num_classes`` classes of ``3 x S x S`` images in [-1, 1], eval split ``test``.

    Batches: ``(FloatTensor (B, 3, S, S), LongTensor (B,))``; no augmentation, no mixup.

    Args:
        num_train, num_test: images per split.
        image_size: ``S``, image side in pixels.
        num_classes: number of orientations.
        noise: std of the Gaussian pixel noise, in units of the [0, 1] intensity range.
        seed: generation seed.
    """

    task = "classification"
    eval_splits = ("test",)
    valid_split = "test"  # the only held-out split

    def __init__(
        self,
        num_train: int = 10_000,
        num_test: int = 2_000,
        image_size: int = 32,
        num_classes: int = 10,
        noise: float = 0.1,
        seed: int = 0,
        num_workers: int = 2,
        pin_memory: bool = True,
    ) -> None:
        super().__init__(num_workers, pin_memory)
        data, self.record = generate_splits(num_train, num_test, image_size, num_classes, noise, seed)
        self.num_classes, self.image_size = num_classes, image_size
        self.tensors = {
            split: TensorDataset(
                torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1, torch.from_numpy(labels)
            )
            for split, (images, labels) in data.items()
        }
        self._log_record()

    def _train_dataset(self, seed: int, epoch: int) -> Dataset:
        return self.tensors["train"]

    def _eval_dataset(self, split: str) -> Dataset:
        return self.tensors[split]


class EmbeddedImageSequences(PixelSequenceDataModule):
    """The same gratings as CIFAR-style pixel sequences (§5.1): ``seq_len = 3*S*S``, vocab 256, BOS 256.

    Args: as ``EmbeddedImages``; labels are generated but unused.
    """

    def __init__(
        self,
        num_train: int = 10_000,
        num_test: int = 2_000,
        image_size: int = 32,
        num_classes: int = 10,
        noise: float = 0.1,
        seed: int = 0,
        num_workers: int = 2,
        pin_memory: bool = True,
    ) -> None:
        data, record = generate_splits(num_train, num_test, image_size, num_classes, noise, seed)
        super().__init__({split: images for split, (images, _) in data.items()}, num_workers, pin_memory)
        self.record = record
        self._log_record()
