"""ImageNet-1K classification with the DeiT recipe (§5.3: data augmentation and regularisation from DeiT).

Sources (``data.source``), both read by ``timm.data.create_dataset``:

* ``folder``: ``data.root/train/<synset>/*.JPEG`` and ``data.root/val/<synset>/*.JPEG`` (the usual
  ImageFolder layout, val reorganised into synset folders). Both splits must have the same
  ``num_classes`` class folders, none empty (an empty one would silently shift every label).
* ``parquet``: a Hugging Face ``datasets`` copy (e.g. ``ILSVRC/imagenet-1k``: ``data/train-*.parquet``,
  ``data/validation-*.parquet`` with ``image`` and ``label`` columns) under ``data.root``; ``datasets``
  builds its Arrow cache once in ``data.hf_cache_dir``.

Transforms, Mixup/CutMix, label smoothing and the repeated-augmentation sampler are DeiT's
(``data.deit.DeitClassification``, whose docstring lists them). Decoding failures of single images are
logged and skipped by timm (``ImageDataset``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from timm.data import create_dataset
from timm.data.readers.img_extensions import get_img_extensions
from torch.utils.data import Dataset

from aft.extras import require
from data.base import DataError, not_found
from data.deit import DeitClassification

HOW_TO_GET = "get ILSVRC2012 from https://image-net.org (train/ and val/ with one folder per synset)"
HF_SPLITS = {"train": "train", "val": "validation"}


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


def read_folders(root: Path, num_classes: int) -> dict[str, Dataset]:
    """timm datasets of ``root/train`` and ``root/val``, labelled by the sorted synset folders both share."""
    classes = {split: folder_classes(root / split, split, num_classes) for split in ("train", "val")}
    if classes["train"] != classes["val"]:
        raise DataError(f"ImageNet {root}: train/ and val/ have different class folders")
    class_map = {name: index for index, name in enumerate(classes["train"])}
    return {
        split: create_dataset("", root=str(root / split), search_split=False, class_map=class_map)
        for split in ("train", "val")
    }


def read_parquet(root: Path, cache_dir: str | None, num_classes: int) -> dict[str, Dataset]:
    """timm datasets of the parquet copy under ``root``; labels must lie in ``[0, num_classes)``."""
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
        if min(labels) < 0 or max(labels) >= num_classes:
            raise DataError(
                f"ImageNet parquet {split} split in {root} has labels in [{min(labels)}, {max(labels)}], "
                f"expected [0, data.num_classes={num_classes})"
            )
    return datasets


class ImageNet(DeitClassification):
    """ImageNet-1K (DeiT recipe): ``num_classes`` classes, train crops ``image_size``, eval split ``val``.

    Batches and ``mixup_fn()``: as ``DeitClassification``.

    Args:
        root: folder with ``train/`` and ``val/`` (folder) or the parquet files (parquet).
        source: ``"folder"`` or ``"parquet"``.
        num_classes: number of classes (1000).
        hf_cache_dir: Arrow cache folder for ``datasets`` (parquet source); None uses the HF default.
        recipe: the DeiT recipe's keywords of ``DeitClassification`` (``image_size`` ... ``pin_memory``),
            DeiT's values by default.
    """

    def __init__(
        self,
        root: str,
        source: Literal["folder", "parquet"] = "folder",
        num_classes: int = 1000,
        hf_cache_dir: str | None = None,
        **recipe: Any,
    ) -> None:
        path = Path(root)
        if source == "folder":
            datasets = read_folders(path, num_classes)
        elif source == "parquet":
            datasets = read_parquet(path, hf_cache_dir, num_classes)
        else:
            raise ValueError(f"data.source must be 'folder' or 'parquet', got {source!r}")
        super().__init__(datasets, num_classes, **recipe)
        for split, dataset in self.datasets.items():
            _check_decodes(dataset, split, path)
        self.record = {"name": "imagenet", "format": source, "root": str(path), **self.record}
        self._log_record()
