"""Writers of tiny files in the real on-disk formats of each dataset, for the tests and the rehearsal.

Formats (each as the real download lays it out, so the data modules read them unchanged):

* CIFAR-10: ``cifar-10-batches-py/`` Python 2 pickles (``data_batch_1..5``, ``test_batch``,
  ``batches.meta``), rows ``uint8 (N, 3072)`` in CHW plane order; or the Hugging Face parquet copy
  (``train-*.parquet`` / ``test-*.parquet``, columns ``img`` PNG and ``label``).
* ImageNet: an ImageFolder ``<split>/<synset>/*.JPEG``; or the Hugging Face parquet copy
  (``data/train-*.parquet`` / ``data/validation-*.parquet``, columns ``image`` and ``label``).
* Enwik8: ``enwik8.zip`` holding the member ``enwik8``, or the raw ``enwik8`` file.
"""

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


def write_cifar_batches(
    root: Path, rng: np.random.Generator, train_per_batch: int = CIFAR_TRAIN_PER_BATCH, test: int = CIFAR_TEST
) -> dict[str, np.ndarray]:
    """Write ``root/cifar-10-batches-py`` like the real pickles (5 train batches of ``train_per_batch``
    images, a test batch of ``test``) and return the rows per split.

    Rows are ``uint8 (N, 3072)`` in the files' CHW plane order (1024 R, then 1024 G, then 1024 B).
    Values stay in [20, 235] so that a +-10 shift never clips.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows = {"train": [], "test": []}
    names = [(f"data_batch_{i}", "train", train_per_batch) for i in range(1, 6)] + [("test_batch", "test", test)]
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
        b"num_cases_per_batch": train_per_batch,
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


def random_image(rng: np.random.Generator) -> np.ndarray:
    """A ``uint8 (H, W, 3)`` image of random pixels, ``H, W`` in [40, 64) (ImageNet's varied sizes, small)."""
    size = (int(rng.integers(40, 64)), int(rng.integers(40, 64)))
    return rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)


def write_image_folder(root: Path, per_class: dict[str, int], rng: np.random.Generator) -> None:
    """``root/<split>/<synset>/*.JPEG`` with small random JPEGs of varied sizes."""
    for split, count in per_class.items():
        for synset in IMAGENET_CLASSES:
            (root / split / synset).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(random_image(rng)).save(root / split / synset / f"{synset}_{i}.JPEG", quality=90)


def write_hf_parquet(path: Path, images: list[np.ndarray], labels: list[int], image_key: str, num_classes: int) -> None:
    """One parquet file as written by Hugging Face ``datasets`` (PNG bytes struct + ClassLabel)."""
    import datasets

    features = datasets.Features({image_key: datasets.Image(), "label": datasets.ClassLabel(num_classes=num_classes)})
    table = datasets.Dataset.from_dict(
        {image_key: [Image.fromarray(image) for image in images], "label": labels}, features=features
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(path))


def write_cifar_parquet(root: Path, rows: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """``root/plain_text/<split>-00000-of-00001.parquet`` (``uoft-cs/cifar10``'s layout) of CIFAR file ``rows``."""
    for split, split_rows in rows.items():
        images = list(rows_to_hwc(split_rows))
        labels = rng.integers(10, size=len(images)).tolist()
        write_hf_parquet(root / "plain_text" / f"{split}-00000-of-00001.parquet", images, labels, "img", 10)


def write_enwik8_raw(folder: Path, data: bytes) -> Path:
    """``folder/enwik8``: the raw file the zip holds."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "enwik8").write_bytes(data)
    return folder / "enwik8"


def write_imagenet_parquet(root: Path, per_class: dict[str, int], rng: np.random.Generator) -> None:
    """``root/data/{train,validation}-00000-of-00001.parquet`` (``ILSVRC/imagenet-1k``'s layout) for
    ``per_class = {"train": n, "val": m}`` images of each of ``IMAGENET_CLASSES``."""
    hf_splits = {"train": "train", "val": "validation"}
    for split, count in per_class.items():
        labels = [label for label in range(len(IMAGENET_CLASSES)) for _ in range(count)]
        images = [random_image(rng) for _ in labels]
        path = root / "data" / f"{hf_splits[split]}-00000-of-00001.parquet"
        write_hf_parquet(path, images, labels, "image", len(IMAGENET_CLASSES))
