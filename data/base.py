"""Common interface of the dataset modules: what the training loop codes against.

A :class:`DataModule` is built once per process (it reads and validates its files eagerly,
so bad input fails at start-up) and hands out ``torch.utils.data.DataLoader`` objects that are
already sharded for DDP.

Batch formats
-------------
``task == "lm"`` (token sequences: CIFAR-10 pixels, enwik8 bytes, embedded text)
    train batch: ``LongTensor (B, T + 1)``; inputs ``x[:, :-1]``, targets ``x[:, 1:]``, every target scored.
    eval batch:  ``(LongTensor (B, T + 1), BoolTensor (B, T))``: the windows and a mask of the targets
    to score. Over one eval split every target token is scored exactly once (summed over ranks).
    ``T = seq_len``; targets are ``< vocab_size``; inputs may also hold ``bos_token`` (when not None),
    so embedding tables need ``input_vocab_size`` rows.
``task == "classification"`` (ImageNet, embedded images)
    train and eval batch: ``(FloatTensor (B, 3, H, W), LongTensor (B,))`` with normalised images and
    class indices in ``[0, num_classes)``. When ``mixup_fn()`` is not None, the loop applies it to each
    train batch, which turns labels into soft targets ``FloatTensor (B, num_classes)``.

Sharding
--------
Train loaders use a seeded distributed sampler (``DistributedSampler`` or an equivalent) with its epoch
set; call ``train_dataloader(..., epoch=e)`` once per epoch. Train loaders drop the last partial batch.
Modules whose augmentations draw from the global RNGs (timm's transforms: ImageNet) set ``seeds_draws``:
each draw then runs with Python's, NumPy's and torch's RNGs seeded by ``(seed, epoch, rank, position in
the epoch)``, so augmentation does not depend on ``num_workers`` and a mid-epoch resume is exact.
Eval loaders give each rank a contiguous, unpadded shard (no sample is repeated), so sums of losses and
counts all-reduced over ranks are exact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sized
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

if TYPE_CHECKING:
    from timm.data import Mixup

log = logging.getLogger(__name__)

Task = Literal["lm", "classification"]


class DataError(Exception):
    """Missing, corrupt or inconsistent input data; the message says what and how to fix it."""


def not_found(what: str, path: Path, key: str, how: str) -> DataError:
    """One-line error for missing input: what is missing, where, which config key to set, how to get it."""
    return DataError(f"{what} not found at {path}: set {key} (or AFT_DATA_ROOT) to its folder; {how}")


def file_record(path: Path, md5: bool = True) -> dict[str, Any]:
    """What was read from one file: path, size in bytes and (when asked) its md5."""
    record: dict[str, Any] = {"path": str(path), "bytes": path.stat().st_size}
    if md5:
        record["md5"] = file_md5(path)
    return record


def file_md5(path: Path) -> str:
    """The md5 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def nats_to_bits(nats: float) -> float:
    """Convert a mean NLL in nats per token to bits per token (bpc / bits-per-dim): ``nats / ln 2``."""
    return nats / math.log(2)


def seed_for(*parts: int) -> int:
    """Deterministic 63-bit seed mixed from integers, e.g. ``seed_for(seed, epoch, rank)``."""
    return int(np.random.SeedSequence(parts).generate_state(1, np.uint64)[0] >> np.uint64(1))


class EvalShardSampler(Sampler[int]):
    """Contiguous, unpadded shard ``rank`` of ``world_size`` over ``range(len(data))``, in order.

    Unlike ``DistributedSampler`` it never repeats samples to even out ranks, so every sample is
    evaluated exactly once over all ranks (shards differ in length by at most one).
    """

    def __init__(self, data: Sized, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        n = len(data)
        self.start = rank * n // world_size
        self.stop = (rank + 1) * n // world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class _DrawSeeds(Sampler[tuple[int, int]]):
    """The indices of ``sampler``, each paired with the seed of its draw, ``seed_for(seed, epoch, rank, i)``."""

    def __init__(self, sampler: Sampler[int], seed: int, epoch: int, rank: int) -> None:
        self.sampler, self.parts = sampler, (seed, epoch, rank)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in enumerate(self.sampler):
            yield index, seed_for(*self.parts, position)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


class SeededDraws(Dataset):
    """``dataset[index]`` computed under Python's, NumPy's and torch's RNGs seeded for one draw.

    Items are ``(index, seed)`` pairs from :class:`_DrawSeeds`; the caller's RNG states are restored
    afterwards (with ``num_workers=0`` the draw runs in the training process).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                random.seed(seed)
                np.random.seed(seed % 2**32)
                torch.manual_seed(seed)
                return self.dataset[index]
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class DataModule(ABC):
    """A dataset with its splits, DDP-sharded loaders and a record of what was read.

    Attributes:
        task: ``"lm"`` or ``"classification"`` (selects the batch format, see the module docstring).
        vocab_size: number of target token values (lm), else None.
        bos_token: token id put before each sequence (lm, ``>= vocab_size``) or None when there is none.
        seq_len: ``T``, number of predicted tokens per window (lm), else None.
        num_classes: number of classes (classification), else None.
        image_size: training image side in pixels (classification), else None.
        eval_splits: held-out splits to evaluate, e.g. ``("valid", "test")``;
            ``eval_dataloader`` also accepts ``"train"``.
        valid_split: the split of ``eval_splits`` that periodic evaluation during training uses.
        seeds_draws: augmentations draw from the global RNGs, so each draw is seeded (module docstring).
        label_smoothing: label smoothing of the training cross-entropy (classification).
        bits_unit: name of ``loss / ln 2`` for lm data: ``"bpc"`` (bytes) or ``"bits_per_dim"``
            (sub-pixels), as the paper's tables report it.
    """

    task: Task
    eval_splits: tuple[str, ...]
    valid_split: str
    seeds_draws: bool = False
    label_smoothing: float = 0.0
    bits_unit: str | None = None
    vocab_size: int | None = None
    bos_token: int | None = None
    seq_len: int | None = None
    num_classes: int | None = None
    image_size: int | None = None

    def __init__(self, num_workers: int, pin_memory: bool) -> None:
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.record: dict[str, Any] = {}

    @property
    def input_vocab_size(self) -> int | None:
        """Rows needed by an input embedding table (lm): ``vocab_size`` plus one if there is a ``bos_token``."""
        if self.vocab_size is None:
            return None
        return self.vocab_size + (self.bos_token is not None)

    @abstractmethod
    def _train_dataset(self, seed: int, epoch: int) -> Dataset:
        """The training set for one epoch (seed and epoch drive per-sample augmentation where used)."""

    @abstractmethod
    def _eval_dataset(self, split: str) -> Dataset:
        """The un-augmented dataset of ``split`` (one of ``eval_splits`` or ``"train"``)."""

    def _train_sampler(self, dataset: Dataset, rank: int, world_size: int, seed: int, epoch: int) -> Sampler:
        """Seeded ``DistributedSampler`` (shuffled, drop_last) with its epoch set."""
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        sampler.set_epoch(epoch)
        return sampler

    def _loader(self, dataset: Dataset, sampler: Sampler, batch_size: int, train: bool, seed: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            drop_last=train,
            generator=torch.Generator().manual_seed(seed),
        )

    def train_dataloader(
        self, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0, epoch: int = 0
    ) -> DataLoader:
        """Shuffled, augmented loader over this rank's shard of the training split for ``epoch``.

        Batches: ``LongTensor (B, T + 1)`` (lm) or ``(FloatTensor (B, 3, H, W), LongTensor (B,))``
        (classification). Order and augmentation are a function of ``(seed, epoch, rank)`` only.
        """
        dataset = self._train_dataset(seed, epoch)
        sampler = self._train_sampler(dataset, rank, world_size, seed, epoch)
        if len(sampler) < batch_size:
            raise DataError(
                f"{self.record.get('name')}: rank {rank} has {len(sampler)} training samples per epoch, "
                f"fewer than batch_size {batch_size}; use more data or a smaller batch/sequence"
            )
        if self.seeds_draws:
            dataset, sampler = SeededDraws(dataset), _DrawSeeds(sampler, seed, epoch, rank)
        return self._loader(dataset, sampler, batch_size, train=True, seed=seed_for(seed, epoch, rank))

    def eval_dataloader(
        self, split: str, batch_size: int, rank: int = 0, world_size: int = 1, limit: int | None = None
    ) -> DataLoader:
        """In-order, un-augmented loader over this rank's contiguous shard of ``split``.

        ``limit`` keeps that many samples evenly spaced over the split (all when None or larger), the
        same ones for any ``world_size``: the periodic evaluation during training.
        Batches: ``(LongTensor (B, T + 1), BoolTensor (B, T))`` (lm) or
        ``(FloatTensor (B, 3, H, W), LongTensor (B,))`` (classification); the last batch may be smaller.
        """
        if split not in (*self.eval_splits, "train"):
            raise ValueError(f"unknown split {split!r}; expected one of {(*self.eval_splits, 'train')}")
        dataset = self._eval_dataset(split)
        if limit is not None and limit < len(dataset):  # type: ignore[arg-type]
            n = len(dataset)  # type: ignore[arg-type]
            dataset = Subset(dataset, [i * n // limit for i in range(limit)])
        return self._loader(dataset, EvalShardSampler(dataset, rank, world_size), batch_size, train=False, seed=0)

    def mixup_fn(self) -> Mixup | None:
        """Batch-level Mixup/CutMix + label smoothing to apply to train batches, or None (the default)."""
        return None

    def describe(self) -> dict[str, Any]:
        """What was read (paths, formats, sizes, sample counts, md5 where cheap) and the task attributes."""
        attributes = {
            key: getattr(self, key)
            for key in ("task", "vocab_size", "bos_token", "seq_len", "num_classes", "image_size")
            if getattr(self, key) is not None
        }
        return {**self.record, **attributes, "eval_splits": list(self.eval_splits)}

    def _log_record(self) -> None:
        """Emit the record of what was read as one log line (JSON)."""
        log.info("data %s", json.dumps(self.describe(), default=str))
