"""CIFAR-10 as pixel sequences (§5.1): 32x32x3 images -> 3072 sub-pixel tokens (see data.pixel_sequence).

Sources (``data.source``):

* ``torchvision``: the standard ``cifar-10-batches-py`` pickles under ``data.root``, read by
  ``torchvision.datasets.CIFAR10`` (downloaded there only when ``data.download=true``). Each file is
  checked against torchvision's md5 list unless ``data.verify_md5=false`` (tiny test fixtures).
* ``parquet``: a Hugging Face ``datasets`` copy (e.g. ``uoft-cs/cifar10``): ``**/train-*.parquet`` and
  ``**/test-*.parquet`` under ``data.root`` with columns ``img`` (PNG) and ``label``, read with
  ``datasets.load_dataset("parquet", ...)``.

Both are decoded once into ``uint8 (N, 32, 32, 3)`` arrays; split sizes must be 50,000 / 10,000
(``data.expected_train`` / ``data.expected_test`` override this for test fixtures).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import download_and_extract_archive

from aft.extras import require
from data.base import DataError, file_record, not_found
from data.pixel_sequence import PixelSequenceDataModule

HOW_TO_GET = f"get it from {CIFAR10.url} (or set data.download=true)"
SPLITS = ("train", "test")


class _UncheckedCIFAR10(CIFAR10):
    """torchvision's CIFAR10 reader with its md5 checks off (``read_batches`` verifies beforehand)."""

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


def read_batches(root: Path, download: bool, verify_md5: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Images per split from ``root/cifar-10-batches-py`` and the record of the files read."""
    folder = root / CIFAR10.base_folder
    files = [*CIFAR10.train_list, *CIFAR10.test_list, [CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    if download and not all((folder / name).is_file() for name, _ in files):
        download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
    records = []
    for name, md5 in files:
        if not (folder / name).is_file():
            raise not_found(f"CIFAR-10 batch file {name}", folder, "data.root", HOW_TO_GET)
        records.append(file_record(folder / name))
        if verify_md5 and records[-1]["md5"] != md5:
            raise DataError(
                f"CIFAR-10 file {folder / name} is corrupt: md5 {records[-1]['md5']} != expected {md5}; "
                f"re-download {CIFAR10.url}"
            )
    try:
        images = {split: _UncheckedCIFAR10(str(root), train=split == "train").data for split in SPLITS}
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
        raise DataError(
            f"CIFAR-10 files in {folder} are corrupt or truncated ({error!r}); re-download {CIFAR10.url}"
        ) from error
    return images, {"format": "cifar-10-batches-py", "files": records, "md5_verified": verify_md5}


def read_parquet(root: Path, cache_dir: str | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Images per split from a Hugging Face parquet copy under ``root`` and the record of the files read."""
    datasets = require("datasets", "data.source=parquet")  # deferred: only this source needs it

    files = {split: sorted(root.glob(f"**/{split}-*.parquet")) for split in SPLITS}
    for split, paths in files.items():
        if not paths:
            raise not_found(
                f"CIFAR-10 parquet files {split}-*.parquet",
                root,
                "data.root",
                "get the Hugging Face copy from https://huggingface.co/datasets/uoft-cs/cifar10",
            )
    images = {}
    for split, paths in files.items():
        table = datasets.load_dataset(
            "parquet", data_files=[str(p) for p in paths], split="train", cache_dir=cache_dir
        ).cast_column("img", datasets.Image(mode="RGB"))
        images[split] = table.with_format("numpy")[:]["img"]
    records = [file_record(p) for paths in files.values() for p in paths]
    return images, {"format": "parquet", "files": records}


class Cifar10(PixelSequenceDataModule):
    """CIFAR-10 pixel sequences: ``seq_len = 3072``, ``vocab_size = 256``, ``bos_token = 256``, eval split ``test``.

    Args:
        root: folder holding ``cifar-10-batches-py/`` (torchvision) or the parquet files (parquet).
        source: ``"torchvision"`` or ``"parquet"``.
        download: let torchvision download the archive into ``root`` if files are missing.
        verify_md5: check the pickles against torchvision's md5 list (torchvision source only).
        expected_train, expected_test: required number of images per split.
        hf_cache_dir: cache folder for ``datasets`` (parquet source); None uses the HF default.
    """

    def __init__(
        self,
        root: str,
        source: Literal["torchvision", "parquet"] = "torchvision",
        download: bool = False,
        verify_md5: bool = True,
        expected_train: int = 50_000,
        expected_test: int = 10_000,
        hf_cache_dir: str | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
    ) -> None:
        path = Path(root)
        if source == "torchvision":
            images, record = read_batches(path, download, verify_md5)
        elif source == "parquet":
            images, record = read_parquet(path, hf_cache_dir)
        else:
            raise ValueError(f"data.source must be 'torchvision' or 'parquet', got {source!r}")
        for split, expected in zip(SPLITS, (expected_train, expected_test), strict=True):
            if images[split].shape != (expected, 32, 32, 3):
                raise DataError(
                    f"CIFAR-10 {split} split in {path} has images of shape {images[split].shape}, expected "
                    f"({expected}, 32, 32, 3): the copy is incomplete or not CIFAR-10"
                )
        super().__init__(images, num_workers, pin_memory)
        self.record = {
            "name": "cifar10",
            "root": str(path),
            **record,
            "samples": {split: len(images[split]) for split in SPLITS},
        }
        self._log_record()
