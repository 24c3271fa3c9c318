"""Fixtures: tiny copies of each dataset in its real on-disk format, written into pytest's tmp_path."""

from pathlib import Path

import numpy as np
import pytest

from tests.data.data_fixtures import ENWIK8_SPLITS, write_cifar_batches, write_enwik8_zip, write_image_folder


@pytest.fixture
def cifar_root(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rows = write_cifar_batches(tmp_path / "cifar10", np.random.default_rng(0))
    return tmp_path / "cifar10", rows


@pytest.fixture
def enwik8_bytes() -> bytes:
    return np.random.default_rng(1).integers(0, 256, size=sum(ENWIK8_SPLITS), dtype=np.uint8).tobytes()


@pytest.fixture
def enwik8_root(tmp_path: Path, enwik8_bytes: bytes) -> Path:
    write_enwik8_zip(tmp_path / "enwik8", enwik8_bytes)
    return tmp_path / "enwik8"


@pytest.fixture
def imagenet_root(tmp_path: Path) -> Path:
    write_image_folder(tmp_path / "imagenet", {"train": 4, "val": 2}, np.random.default_rng(2))
    return tmp_path / "imagenet"
