"""ImageNet-1K classification with the DeiT recipe (§5.3: data augmentation and regularisation from DeiT).

Sources (``data.source``), both read by ``timm.data.create_dataset``:

* ``folder``: ``data.root/train/<synset>/*.JPEG`` and ``data.root/val/<synset>/*.JPEG`` (the usual
  ImageFolder layout, val reorganised into synset folders). Both splits must have the same
  ``num_classes`` class folders, none empty (an empty one would silently shift every label).
* ``parquet``: a Hugging Face ``datasets`` copy (e.g. ``ILSVRC/imagenet-1k``: ``data/train-*.parquet``,
  ``data/validation-*.parquet`` with ``image`` and ``label`` columns) under ``data.root``; ``datasets``
  builds its Arrow cache once in ``data.hf_cache_dir``.

Training (DeiT): ``timm.data.create_transform(is_training=True)`` with RandAugment
``rand-m9-mstd0.5-inc1``, bicubic interpolation, colour jitter 0.4 (timm disables it when RandAugment
is on, as in DeiT) and random erasing 0.25; Mixup 0.8 / CutMix 1.0 / label smoothing 0.1 through
``mixup_fn()``; repeated augmentation (3 repeats) with timm's ``RepeatAugSampler``.
Evaluation: bicubic resize of the shorter side to ``floor(S / crop_pct)`` and centre crop ``S``, at any
``S`` (``data.eval_image_size``); ``crop_pct`` defaults to 0.875 below 384 px and 1.0 at 384 px and up.
Decoding failures of single images are logged and skipped by timm (``ImageDataset``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps
from timm.data import Mixup, auto_augment, create_dataset, create_transform
from timm.data.auto_augment import RandAugment
from timm.data.distributed_sampler import RepeatAugSampler
from timm.data.readers.img_extensions import get_img_extensions
from torch.utils.data import Dataset, Sampler

from aft.extras import require
from data.base import DataError, DataModule, not_found, seed_for

HOW_TO_GET = "get ILSVRC2012 from https://image-net.org (train/ and val/ with one folder per synset)"
HF_SPLITS = {"train": "train", "val": "validation"}


class SeededRepeatAugSampler(RepeatAugSampler):
    """timm's ``RepeatAugSampler`` (DeiT's RASampler) whose per-epoch permutation also depends on ``seed``.

    timm seeds the permutation with the epoch alone; ``set_epoch`` passes it ``seed_for(seed, epoch)``.
    """

    def __init__(self, dataset: Dataset, rank: int, world_size: int, num_repeats: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, num_repeats=num_repeats)
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(seed_for(self.seed, epoch))


def posterize(image: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """timm's posterize op, keeping 0 bits as Pillow < 13 did (a black image) instead of raising.

    timm's RandAugment maps the capped magnitude 10 of ``rand-m9-mstd0.5-inc1`` to 0 bits (26 of
    20,000 draws here), and Pillow 13 rejects ``ImageOps.posterize(image, 0)``: without this, every
    ImageNet run with the DeiT recipe would stop within its first few batches.
    """
    if bits_to_keep >= 8:
        return image
    if bits_to_keep <= 0:
        return Image.new(image.mode, image.size, 0)
    return ImageOps.posterize(image, bits_to_keep)


def with_safe_posterize(transform):
    """``transform`` with its RandAugment's posterize ops replaced by :func:`posterize`."""
    for step in getattr(transform, "transforms", ()):
        if isinstance(step, RandAugment):
            for op in step.ops:
                if op.aug_fn is auto_augment.posterize:
                    op.aug_fn = posterize
    return transform


def default_crop_pct(image_size: int) -> float:
    """DeiT's evaluation crop ratio: 0.875 (resize 256, crop 224) below 384 px, 1.0 at 384 px and up."""
    return 1.0 if image_size >= 384 else 0.875


def folder_classes(split_dir: Path, split: str, num_classes: int) -> list[str]:
    """Sorted class folder names of ``split_dir``; there must be ``num_classes``, each holding images."""
    if not split_dir.is_dir():
        raise not_found(f"ImageNet {split}/ folder", split_dir, "data.root", HOW_TO_GET)
    classes = sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir())
    extensions = get_img_extensions(as_set=True)
    empty = [name for name in classes if not any(f.suffix.lower() in extensions for f in (split_dir / name).rglob("*"))]
    if empty:
        raise DataError(
            f"ImageNet {split_dir}: {len(empty)} of {len(classes)} class folders hold no images "
            f"(e.g. {', '.join(empty[:3])}); the copy is incomplete"
        )
    if len(classes) != num_classes:
        raise DataError(
            f"ImageNet {split_dir} has {len(classes)} class folders, expected data.num_classes={num_classes}"
        )
    return classes


def _check_decodes(dataset: Dataset, split: str, root: Path) -> None:
    """The first image of ``split`` decodes (timm skips single bad files, and fails after a streak of them).

    Decoded without the transform: an augmentation here would draw from the global RNGs before the
    trainer seeds them (random erasing draws from torch only when Python's unseeded RNG says so).
    """
    untransformed = copy.copy(dataset)
    untransformed.transform = None
    try:
        untransformed[0]
    except RuntimeError as error:  # timm's ImageDataset after TIMM_DATASET_MAX_RETRIES consecutive failures
        raise DataError(
            f"ImageNet {split} split in {root}: {error} (undecodable image files): the copy is corrupt; "
            f"re-extract it ({HOW_TO_GET})"
        ) from None


class ImageNet(DataModule):
    """ImageNet-1K (DeiT recipe): ``num_classes`` classes, train crops ``image_size``, eval split ``val``.

    Batches: ``(FloatTensor (B, 3, S, S), LongTensor (B,))``, ``S = image_size`` for train and
    ``eval_image_size`` for eval; apply ``mixup_fn()`` to train batches (soft targets). When Mixup and
    CutMix are both off, ``mixup_fn()`` is None and the training loss applies ``label_smoothing`` itself.

    Args:
        root: folder with ``train/`` and ``val/`` (folder) or the parquet files (parquet).
        source: ``"folder"`` or ``"parquet"``.
        num_classes: number of classes (1000).
        image_size, eval_image_size: train and eval crop sides (eval defaults to train).
        eval_crop_pct: eval resize ratio; None means ``default_crop_pct(eval_image_size)``.
        auto_augment, color_jitter, re_prob, re_mode, re_count, interpolation: timm train transform.
        mixup, cutmix, mixup_prob, mixup_switch_prob, mixup_mode, label_smoothing: ``timm.data.Mixup``.
        repeated_aug: repeats per sample of the repeated-augmentation sampler; below 2 uses a plain
            ``DistributedSampler``.
        hf_cache_dir: Arrow cache folder for ``datasets`` (parquet source); None uses the HF default.
    """

    task = "classification"
    eval_splits = ("val",)
    valid_split = "val"  # ILSVRC2012 val: the only held-out split, reported as the test set (§5.3, DeiT)
    seeds_draws = True  # timm's transforms draw from the global RNGs

    def __init__(
        self,
        root: str,
        source: Literal["folder", "parquet"] = "folder",
        num_classes: int = 1000,
        image_size: int = 224,
        eval_image_size: int | None = None,
        eval_crop_pct: float | None = None,
        auto_augment: str | None = "rand-m9-mstd0.5-inc1",
        color_jitter: float = 0.4,
        re_prob: float = 0.25,
        re_mode: str = "pixel",
        re_count: int = 1,
        interpolation: str = "bicubic",
        mixup: float = 0.8,
        cutmix: float = 1.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        mixup_mode: str = "batch",
        label_smoothing: float = 0.1,
        repeated_aug: int = 3,
        hf_cache_dir: str | None = None,
        num_workers: int = 10,
        pin_memory: bool = True,
    ) -> None:
        super().__init__(num_workers, pin_memory)
        self.num_classes, self.image_size = num_classes, image_size
        self.eval_image_size = eval_image_size or image_size
        self.eval_crop_pct = eval_crop_pct or default_crop_pct(self.eval_image_size)
        self.mixup_args = dict(
            mixup_alpha=mixup,
            cutmix_alpha=cutmix,
            prob=mixup_prob,
            switch_prob=mixup_switch_prob,
            mode=mixup_mode,
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )
        self.label_smoothing = label_smoothing
        self.repeated_aug = repeated_aug
        train_transform = with_safe_posterize(
            create_transform(
                image_size,
                is_training=True,
                auto_augment=auto_augment,
                color_jitter=color_jitter,
                re_prob=re_prob,
                re_mode=re_mode,
                re_count=re_count,
                interpolation=interpolation,
            )
        )
        self.eval_transform = create_transform(
            self.eval_image_size, is_training=False, interpolation=interpolation, crop_pct=self.eval_crop_pct
        )
        path = Path(root)
        if source == "folder":
            self.datasets = self._read_folders(path)
        elif source == "parquet":
            self.datasets = self._read_parquet(path, hf_cache_dir)
        else:
            raise ValueError(f"data.source must be 'folder' or 'parquet', got {source!r}")
        self.datasets["train"].transform = train_transform
        self.datasets["val"].transform = self.eval_transform
        for split, dataset in self.datasets.items():
            _check_decodes(dataset, split, path)
        self.record = {
            "name": "imagenet",
            "format": source,
            "root": str(path),
            "samples": {split: len(dataset) for split, dataset in self.datasets.items()},
            "eval_image_size": self.eval_image_size,
            "eval_crop_pct": self.eval_crop_pct,
            "train_transform": repr(train_transform),
            "eval_transform": repr(self.eval_transform),
            "mixup": self.mixup_args,
            "repeated_aug": repeated_aug,
        }
        self._log_record()

    def _read_folders(self, root: Path) -> dict[str, Dataset]:
        classes = {split: folder_classes(root / split, split, self.num_classes) for split in ("train", "val")}
        if classes["train"] != classes["val"]:
            raise DataError(f"ImageNet {root}: train/ and val/ have different class folders")
        class_map = {name: index for index, name in enumerate(classes["train"])}
        return {
            split: create_dataset("", root=str(root / split), search_split=False, class_map=class_map)
            for split in ("train", "val")
        }

    def _read_parquet(self, root: Path, cache_dir: str | None) -> dict[str, Dataset]:
        if not any(root.glob("**/*.parquet")):
            raise not_found(
                "ImageNet parquet files",
                root,
                "data.root",
                "get the Hugging Face copy from https://huggingface.co/datasets/ILSVRC/imagenet-1k",
            )
        require("datasets", "data.source=parquet")  # timm's hfds reader imports it
        datasets = {
            split: create_dataset(f"hfds/{root.resolve()}", root=cache_dir, split=hf_split)
            for split, hf_split in HF_SPLITS.items()
        }
        for split, dataset in datasets.items():
            labels = dataset.reader.dataset.unique("label")
            if min(labels) < 0 or max(labels) >= self.num_classes:
                raise DataError(
                    f"ImageNet parquet {split} split in {root} has labels in [{min(labels)}, {max(labels)}], "
                    f"expected [0, data.num_classes={self.num_classes})"
                )
        return datasets

    def _train_dataset(self, seed: int, epoch: int) -> Dataset:
        return self.datasets["train"]

    def _eval_dataset(self, split: str) -> Dataset:
        if split == "train":
            train_for_eval = copy.copy(self.datasets["train"])
            train_for_eval.transform = self.eval_transform
            return train_for_eval
        return self.datasets[split]

    def _train_sampler(self, dataset: Dataset, rank: int, world_size: int, seed: int, epoch: int) -> Sampler:
        if self.repeated_aug < 2:
            return super()._train_sampler(dataset, rank, world_size, seed, epoch)
        sampler = SeededRepeatAugSampler(dataset, rank, world_size, self.repeated_aug, seed)
        sampler.set_epoch(epoch)
        return sampler

    def mixup_fn(self) -> Mixup | None:
        """DeiT's Mixup 0.8 / CutMix 1.0 / label smoothing 0.1 (from config), or None when both alphas are 0."""
        if self.mixup_args["mixup_alpha"] <= 0 and self.mixup_args["cutmix_alpha"] <= 0:
            return None
        return Mixup(**self.mixup_args)
