"""Images as autoregressive pixel sequences (§5.1): an H x W RGB image is a sequence of H*W*3 tokens.

Order: raster (row by row, left to right) with R, G, B interleaved per pixel, i.e. the flattened HWC
array; each sub-pixel is a 256-way token (values 0..255). Every sequence starts with ``BOS_TOKEN = 256``
so that the first sub-pixel is a target too: windows are ``[BOS, p_0, ..., p_{T-1}]`` with ``T = H*W*3``.

Training augmentation (§5.1): random horizontal flip, then ONE integer drawn from [-10, 10] added to
all sub-pixels of the image, clipped to [0, 255]. No augmentation at evaluation. The augmentation of
sample ``i`` is a function of ``(seed, epoch, i)`` only, whatever the number of workers or ranks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from data.base import DataModule

VOCAB_SIZE = 256
BOS_TOKEN = 256
MAX_SHIFT = 10  # §5.1: shift in [-10, 10]


def pixel_tokens(image: np.ndarray) -> np.ndarray:
    """``uint8 (H, W, 3)`` image -> ``int64 (H*W*3,)`` tokens: raster order, R, G, B interleaved per pixel."""
    return image.reshape(-1).astype(np.int64)


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """§5.1 augmentation of a ``uint8 (H, W, 3)`` image: random h-flip, then one shift in [-10, 10], clipped."""
    if rng.random() < 0.5:
        image = image[:, ::-1]
    shift = int(rng.integers(-MAX_SHIFT, MAX_SHIFT + 1))
    return np.clip(image.astype(np.int16) + shift, 0, 255).astype(np.uint8)


class PixelSequences(Dataset):
    """Token sequences of ``uint8 (N, H, W, 3)`` images.

    Item (train): ``LongTensor (T + 1,)`` = ``[BOS, tokens]``, augmented.
    Item (eval):  ``(LongTensor (T + 1,), BoolTensor (T,))`` with every target scored.
    """

    def __init__(self, images: np.ndarray, train: bool, seed: int = 0, epoch: int = 0) -> None:
        self.images, self.train, self.seed, self.epoch = images, train, seed, epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.train:
            image = augment(image, np.random.default_rng((self.seed, self.epoch, index)))
        tokens = torch.from_numpy(np.concatenate([[BOS_TOKEN], pixel_tokens(image)]))
        if self.train:
            return tokens
        return tokens, torch.ones(len(tokens) - 1, dtype=torch.bool)


class PixelSequenceDataModule(DataModule):
    """LM data module over image splits ``{"train": uint8 (N, H, W, 3), <eval split>: ...}``."""

    task = "lm"
    bits_unit = "bits_per_dim"
    vocab_size = VOCAB_SIZE
    bos_token = BOS_TOKEN

    def __init__(self, images: dict[str, np.ndarray], num_workers: int, pin_memory: bool) -> None:
        super().__init__(num_workers, pin_memory)
        self.images = images
        self.eval_splits = tuple(name for name in images if name != "train")
        # CIFAR-10 has no validation split: §5.1 reports test bits/dim and nothing is selected on the
        # periodic evaluation, so it monitors the test split (the first held-out split).
        self.valid_split = self.eval_splits[0]
        height, width, channels = images["train"].shape[1:]
        self.seq_len = height * width * channels

    def _train_dataset(self, seed: int, epoch: int) -> Dataset:
        return PixelSequences(self.images["train"], train=True, seed=seed, epoch=epoch)

    def _eval_dataset(self, split: str) -> Dataset:
        return PixelSequences(self.images[split], train=False)
