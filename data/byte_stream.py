"""Byte-level language modelling over one byte stream cut into train / valid / test (enwik8, embedded text).

Tokens are the raw bytes (vocab 256, no BOS token). With ``T = seq_len``:

* Training: each epoch draws a random phase ``p`` in ``[0, T)`` from ``(seed, epoch)`` and takes the
  windows of ``T + 1`` bytes starting at ``p, p + T, p + 2T, ...`` (neighbours share one byte, so every
  byte after ``p`` is a target exactly once per epoch); windows are shuffled and sharded over ranks by a
  ``DistributedSampler``. Item: ``LongTensor (T + 1,)``.
* Evaluation scores every byte of the split exactly once. The split ``s`` (``n`` bytes) is read as
  ``u = [PAD] + s`` so that its first byte is a target too (predicted from the PAD context alone). Window
  ``j`` scores the targets ``u[j*S + 1 : (j + 1)*S + 1]`` (``S = eval_stride``, ``1 <= S <= T``) and sees up
  to ``T - S`` bytes of extra left context: ``S = T`` gives non-overlapping windows, ``S < T`` a sliding
  window where only the last ``S`` targets of a window are scored. The final window is right-padded with
  PAD and its padding masked out. Item: ``(LongTensor (T + 1,), BoolTensor (T,))``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from data.base import DataError, DataModule

PAD = 0
SPLITS = ("train", "valid", "test")


class MappedBytes:
    """Read-only byte range ``[offset, offset + length)`` of a file, memory-mapped on first access.

    Pickles as (path, offset, length), so DataLoader workers map the file themselves and share the
    page cache instead of each receiving a copy of the bytes.
    """

    def __init__(self, path: Path, offset: int, length: int) -> None:
        self.path, self.offset, self.length = path, offset, length
        self._map: np.memmap | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: slice) -> np.ndarray:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset, shape=(self.length,))
        return self._map[index]

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_map": None}


ByteSource = np.ndarray | MappedBytes
"""A 1-D uint8 byte sequence supporting ``len()`` and slicing."""


def split_ranges(sizes: Sequence[int]) -> dict[str, tuple[int, int]]:
    """``(offset, length)`` of the consecutive train / valid / test splits with the given byte sizes."""
    if len(sizes) != len(SPLITS) or min(sizes) <= 0:
        raise ValueError(f"need three positive split sizes (train, valid, test), got {list(sizes)}")
    offsets = np.cumsum([0, *sizes[:-1]])
    return {name: (int(offset), int(size)) for name, offset, size in zip(SPLITS, offsets, sizes, strict=True)}


class TrainWindows(Dataset):
    """Windows of ``T + 1`` bytes of a split, indexed by their start offset. Item: ``LongTensor (T + 1,)``."""

    def __init__(self, source: ByteSource, seq_len: int) -> None:
        self.source, self.seq_len = source, seq_len

    def __len__(self) -> int:
        return max(0, len(self.source) - self.seq_len)

    def __getitem__(self, start: int) -> torch.Tensor:
        return torch.from_numpy(self.source[start : start + self.seq_len + 1].astype(np.int64))


class ShiftedWindowSampler(DistributedSampler):
    """Shuffled, rank-sharded start offsets ``phase + k*T`` of the epoch's windows (see module docstring).

    ``DistributedSampler`` over the window slots ``k`` (same seeding, ``set_epoch`` and drop_last
    sharding); the phase in ``[0, T)`` is redrawn from ``(seed, epoch)`` identically on every rank.
    """

    def __init__(self, num_bytes: int, seq_len: int, rank: int, world_size: int, seed: int) -> None:
        slots = range(max(0, num_bytes // seq_len - 1))  # windows that fit for every phase
        super().__init__(slots, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)  # type: ignore[arg-type]
        self.seq_len = seq_len

    def __iter__(self) -> Iterator[int]:
        phase = int(np.random.default_rng((self.seed, self.epoch)).integers(self.seq_len))
        return (phase + k * self.seq_len for k in super().__iter__())


class EvalWindows(Dataset):
    """Windows covering every byte of a split exactly once as a scored target (see module docstring).

    Item ``j``: ``(LongTensor (T + 1,), BoolTensor (T,))``: the window and the mask of scored targets.
    """

    def __init__(self, source: ByteSource, seq_len: int, stride: int) -> None:
        if not 1 <= stride <= seq_len:
            raise ValueError(f"eval_stride must be in [1, seq_len={seq_len}], got {stride}")
        self.source, self.seq_len, self.stride = source, seq_len, stride

    def __len__(self) -> int:
        return math.ceil(len(self.source) / self.stride)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, t, s = len(self.source), self.seq_len, self.stride
        begin = max(0, (j + 1) * s - t)  # index in u = [PAD] + source of the window's first token
        chunk = self.source[max(begin - 1, 0) : begin + t]
        window = np.full(t + 1, PAD, dtype=np.int64)
        first = 1 if begin == 0 else 0
        window[first : first + len(chunk)] = chunk
        target_pos = begin + 1 + np.arange(t)  # index in u of each target
        mask = (target_pos > j * s) & (target_pos <= min((j + 1) * s, n))
        return torch.from_numpy(window), torch.from_numpy(mask)


class ByteStreamDataModule(DataModule):
    """Byte-level LM data module over train / valid / test byte sources (see module docstring)."""

    task = "lm"
    bits_unit = "bpc"
    vocab_size = 256
    eval_splits = ("valid", "test")
    valid_split = "valid"  # the standard 5M-byte validation split (§5.2)

    def __init__(
        self,
        splits: dict[str, ByteSource],
        seq_len: int,
        eval_stride: int | None,
        num_workers: int,
        pin_memory: bool,
    ) -> None:
        super().__init__(num_workers, pin_memory)
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if len(splits["train"]) < 2 * seq_len:
            raise DataError(f"train split has {len(splits['train'])} bytes, need at least 2*seq_len = {2 * seq_len}")
        self.splits = splits
        self.seq_len = seq_len
        self.eval_stride = eval_stride or seq_len
        self._eval = {name: EvalWindows(source, seq_len, self.eval_stride) for name, source in splits.items()}

    def _train_dataset(self, seed: int, epoch: int) -> Dataset:
        return TrainWindows(self.splits["train"], self.seq_len)

    def _train_sampler(self, dataset: Dataset, rank: int, world_size: int, seed: int, epoch: int) -> Sampler:
        sampler = ShiftedWindowSampler(len(self.splits["train"]), self.seq_len, rank, world_size, seed)
        sampler.set_epoch(epoch)
        return sampler

    def _eval_dataset(self, split: str) -> Dataset:
        return self._eval[split]
