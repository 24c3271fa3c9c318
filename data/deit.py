"""Image classification with the DeiT recipe (§5.3: data augmentation and regularisation from DeiT).

:class:`DeitClassification` serves PIL-image datasets ``{"train": ..., "val": ...}`` (each a ``Dataset``
of ``(PIL image, class index)`` items with a ``transform`` attribute, as timm's ``ImageDataset``) the
way DeiT trains and evaluates on ImageNet; ``data.imagenet.ImageNet`` and ``data.digits.Digits`` are
its subclasses, which only read their splits.

Training (DeiT): ``timm.data.create_transform(is_training=True)`` with RandAugment
``rand-m9-mstd0.5-inc1``, bicubic interpolation, colour jitter 0.4 (timm disables it when RandAugment
is on, as in DeiT) and random erasing 0.25; Mixup 0.8 / CutMix 1.0 / label smoothing 0.1 through
``mixup_fn()``; repeated augmentation (3 repeats) with timm's ``RepeatAugSampler``.
Evaluation: bicubic resize of the shorter side to ``floor(S / crop_pct)`` and centre crop ``S``, at any
``S`` (``eval_image_size``); ``crop_pct`` defaults to 0.875 below 384 px and 1.0 at 384 px and up.
"""

from __future__ import annotations

import copy
from typing import Any

from PIL import Image, ImageOps
from timm.data import Mixup, auto_augment, create_transform
from timm.data.auto_augment import RandAugment
from timm.data.distributed_sampler import RepeatAugSampler
from torch.utils.data import Dataset, Sampler

from data.base import DataModule, seed_for


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
    run with the DeiT recipe would stop within its first few batches.
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


class DeitClassification(DataModule):
    """DeiT-recipe classification over ``datasets = {"train": ..., "val": ...}`` of PIL images.

    Batches: ``(FloatTensor (B, 3, S, S), LongTensor (B,))``, ``S = image_size`` for train and
    ``eval_image_size`` for eval; apply ``mixup_fn()`` to train batches (soft targets). When Mixup and
    CutMix are both off, ``mixup_fn()`` is None and the training loss applies ``label_smoothing`` itself.
    ``record`` holds the sample counts, the transforms, Mixup's arguments and the repeats; subclasses
    add what they read and log it.

    Args:
        datasets: the ``train`` and ``val`` datasets; their ``transform`` attributes are set here.
        num_classes: number of classes.
        image_size, eval_image_size: train and eval crop sides (eval defaults to train).
        eval_crop_pct: eval resize ratio; None means ``default_crop_pct(eval_image_size)``.
        augment: False trains on the eval transform's images (no random crop, flip, RandAugment or
            erasing); Mixup/CutMix have their own keys.
        auto_augment, color_jitter, re_prob, re_mode, re_count, interpolation: timm train transform.
        mixup, cutmix, mixup_prob, mixup_switch_prob, mixup_mode, label_smoothing: ``timm.data.Mixup``.
        repeated_aug: repeats per sample of the repeated-augmentation sampler; below 2 uses a plain
            ``DistributedSampler``.
    """

    task = "classification"
    eval_splits = ("val",)
    valid_split = "val"  # the only held-out split (ILSVRC2012 val is reported as the test set: §5.3, DeiT)
    seeds_draws = True  # timm's transforms draw from the global RNGs

    def __init__(
        self,
        datasets: dict[str, Dataset],
        num_classes: int,
        image_size: int = 224,
        eval_image_size: int | None = None,
        eval_crop_pct: float | None = None,
        augment: bool = True,
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
        self.eval_transform = create_transform(
            self.eval_image_size, is_training=False, interpolation=interpolation, crop_pct=self.eval_crop_pct
        )
        train_transform = self.eval_transform
        if augment:
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
        self.datasets = datasets
        self.datasets["train"].transform = train_transform
        self.datasets["val"].transform = self.eval_transform
        self.record: dict[str, Any] = {
            "samples": {split: len(dataset) for split, dataset in self.datasets.items()},
            "eval_image_size": self.eval_image_size,
            "eval_crop_pct": self.eval_crop_pct,
            "train_transform": repr(train_transform),
            "eval_transform": repr(self.eval_transform),
            "mixup": self.mixup_args,
            "repeated_aug": repeated_aug,
        }

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
