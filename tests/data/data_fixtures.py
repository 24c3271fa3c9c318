"""Writers of tiny files in the real on-disk formats of each dataset (used by conftest.py and tests)."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_TRAIN_PER_BATCH = 2  # 5 batches -> 10 train images
CIFAR_TEST = 4


class Py2Pickler(pickle._Pickler):
    """Pickler writing ``bytes`` as Python 2 ``str`` (BINSTRING), as in the real CIFAR-10 files: their keys
    load as ``b"data"`` with ``encoding="bytes"`` and as ``"data"`` with torchvision's ``encoding="latin1"``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_cifar_batches(root: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Write ``root/cifar-10-batches-py`` like the real pickles and return the rows per split.

    Rows are ``uint8 (N, 3072)`` in the files' CHW plane order (1024 R, then 1024 G, then 1024 B).
    Values stay in [20, 235] so that a +-10 shift never clips.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows = {"train": [], "test": []}
    names = [(f"data_batch_{i}", "train", CIFAR_TRAIN_PER_BATCH) for i in range(1, 6)] + [
        ("test_batch", "test", CIFAR_TEST)
    ]
    for name, split, count in names:
        data = rng.integers(20, 236, size=(count, 3072), dtype=np.uint8)
        batch = {
            b"batch_label": name.encode(),
            b"labels": rng.integers(10, size=count).tolist(),
            b"data": data,
            b"filenames": [f"{name}_{i}.png".encode() for i in range(count)],
        }
        (folder / name).write_bytes(py2_pickle(batch))
        rows[split].append(data)
    meta = {
        b"num_cases_per_batch": CIFAR_TRAIN_PER_BATCH,
        b"label_names": [b"c%d" % i for i in range(10)],
        b"num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return {split: np.concatenate(parts) for split, parts in rows.items()}


def rows_to_hwc(rows: np.ndarray) -> np.ndarray:
    """CIFAR file rows ``(N, 3072)`` (CHW planes) -> ``uint8 (N, 32, 32, 3)``."""
    return rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def write_enwik8_zip(folder: Path, data: bytes) -> Path:
    """``folder/enwik8.zip`` holding one member ``enwik8``, like the real archive."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "enwik8.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("enwik8", data)
    return folder / "enwik8.zip"


ENWIK8_SPLITS = (900, 60, 40)


IMAGENET_CLASSES = ("n01440764", "n01443537", "n01484850")


def write_image_folder(root: Path, per_class: dict[str, int], rng: np.random.Generator) -> None:
    """``root/<split>/<synset>/*.JPEG`` with small random JPEGs of varied sizes."""
    for split, count in per_class.items():
        for synset in IMAGENET_CLASSES:
            (root / split / synset).mkdir(parents=True)
            for i in range(count):
                size = (int(rng.integers(40, 64)), int(rng.integers(40, 64)))
                pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / synset / f"{synset}_{i}.JPEG", quality=90)


def write_hf_parquet(path: Path, images: list[np.ndarray], labels: list[int], image_key: str, num_classes: int) -> None:
    """One parquet file as written by Hugging Face ``datasets`` (PNG bytes struct + ClassLabel)."""
    import datasets

    features = datasets.Features({image_key: datasets.Image(), "label": datasets.ClassLabel(num_classes=num_classes)})
    table = datasets.Dataset.from_dict(
        {image_key: [Image.fromarray(image) for image in images], "label": labels}, features=features
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(path))
