"""Embedded no-download datasets: determinism, learnable structure, same interface as the real ones."""

import hashlib
import platform

import numpy as np
import pytest
import torch

from data.base import DataError
from data.byte_stream import ByteStreamDataModule
from data.embedded_images import EmbeddedImages, EmbeddedImageSequences, gratings
from data.embedded_text import EmbeddedText, corpus_bytes


def test_text_corpus_is_python_help_split_90_5_5() -> None:
    corpus = corpus_bytes()
    assert corpus == corpus_bytes() and b"assert" in corpus and len(corpus) > 100_000
    dm = EmbeddedText(seq_len=64, num_workers=0)
    assert isinstance(dm, ByteStreamDataModule)  # the enwik8 pipeline, not a copy
    sizes = [split["bytes"] for split in dm.describe()["splits"].values()]
    assert sum(sizes) == len(corpus) and abs(sizes[0] / len(corpus) - 0.9) < 1e-4
    valid = b"".join(
        bytes(w[1:][m].tolist()) for ws, ms in dm.eval_dataloader("valid", 64) for w, m in zip(ws, ms, strict=True)
    )
    assert valid == corpus[sizes[0] : sizes[0] + sizes[1]]
    batch = next(iter(dm.train_dataloader(8, seed=0)))
    assert batch.shape == (8, 65) and bytes(batch[0].tolist()) in corpus


def test_text_corpus_md5_is_checked_when_expected() -> None:
    md5 = hashlib.md5(corpus_bytes()).hexdigest()
    assert EmbeddedText(seq_len=64, expected_md5=md5, num_workers=0).describe()["md5"] == md5
    with pytest.raises(DataError) as error:
        EmbeddedText(seq_len=64, expected_md5="0" * 32, num_workers=0)
    assert str(error.value) == (
        f"the pydoc_data.topics corpus of this Python {platform.python_version()} has md5 {md5}, expected "
        f"data.expected_md5={'0' * 32}: run with the Python version the run's records name (data.json: source), "
        "or set data.expected_md5=null to accept this corpus"
    )


def orientation_class(image: np.ndarray, num_classes: int) -> int:
    """Class of the dominant gradient orientation (structure tensor) of a grating image."""
    gray = image.astype(float).mean(-1)
    gy, gx = np.gradient(gray)
    angle = 0.5 * np.arctan2(2 * (gx * gy).sum(), (gx**2 - gy**2).sum()) % np.pi
    return int(np.rint(angle / (np.pi / num_classes))) % num_classes


def test_gratings_are_deterministic_and_their_class_is_recoverable() -> None:
    images, labels = gratings(200, 32, 10, 0.1, seed=4)
    again, labels_again = gratings(200, 32, 10, 0.1, seed=4)
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)
    assert not np.array_equal(images, gratings(200, 32, 10, 0.1, seed=5)[0])
    assert images.shape == (200, 32, 32, 3) and images.dtype == np.uint8 and set(labels) == set(range(10))
    accuracy = np.mean([orientation_class(image, 10) == label for image, label in zip(images, labels, strict=True)])
    assert accuracy > 0.9


def test_image_classification_batches() -> None:
    dm = EmbeddedImages(num_train=64, num_test=16, image_size=16, num_classes=4, num_workers=0)
    assert (dm.task, dm.num_classes, dm.image_size, dm.mixup_fn()) == ("classification", 4, 16, None)
    images, labels = next(iter(dm.train_dataloader(8, seed=0)))
    assert images.shape == (8, 3, 16, 16) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.min() >= -1 and images.max() <= 1 and labels.max() < 4
    shards = [torch.cat([y for _, y in dm.eval_dataloader("test", 5, rank=r, world_size=2)]) for r in (0, 1)]
    assert torch.equal(torch.cat(shards), torch.cat([y for _, y in dm.eval_dataloader("test", 16)]))
    rebuilt = EmbeddedImages(num_train=64, num_test=16, image_size=16, num_classes=4, num_workers=0)
    assert rebuilt.describe()["md5"] == dm.describe()["md5"]


def test_image_sequences_use_the_pixel_sequence_format() -> None:
    dm = EmbeddedImageSequences(num_train=16, num_test=4, image_size=8, num_workers=0)
    assert (dm.task, dm.seq_len, dm.vocab_size, dm.bos_token) == ("lm", 192, 256, 256)
    assert next(iter(dm.train_dataloader(4))).shape == (4, 193)
    tokens, masks = next(iter(dm.eval_dataloader("test", 4)))
    assert tokens.shape == (4, 193) and masks.all()
