"""CIFAR-10 pixel sequences from the real file layouts: token order, augmentation, sharding, bad input."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from data.base import DataError
from data.cifar10 import Cifar10
from data.pixel_sequence import BOS_TOKEN
from tests.data.data_fixtures import CIFAR_TEST, CIFAR_TRAIN_PER_BATCH, rows_to_hwc, write_hf_parquet

N_TRAIN = 5 * CIFAR_TRAIN_PER_BATCH


def make(root: Path, **kwargs) -> Cifar10:
    options = {"verify_md5": False, "expected_train": N_TRAIN, "expected_test": CIFAR_TEST, "num_workers": 0}
    return Cifar10(str(root), **{**options, **kwargs})


def raster_rgb_tokens(row: np.ndarray) -> list[int]:
    """Hand-built expected tokens of one file row (R plane, G plane, B plane): pixel by pixel, R, G, B."""
    return [int(row[channel * 1024 + pixel]) for pixel in range(1024) for channel in range(3)]


def test_tokens_are_raster_order_with_rgb_interleaved(cifar_root) -> None:
    root, rows = cifar_root
    dm = make(root)
    assert (dm.seq_len, dm.vocab_size, dm.bos_token, dm.input_vocab_size) == (3072, 256, 256, 257)
    tokens, masks = next(iter(dm.eval_dataloader("test", batch_size=CIFAR_TEST)))
    assert tokens.shape == (CIFAR_TEST, 3073) and tokens.dtype == torch.int64
    assert (tokens[:, 0] == BOS_TOKEN).all() and masks.all() and masks.shape == (CIFAR_TEST, 3072)
    for sequence, row in zip(tokens, rows["test"], strict=True):
        assert sequence[1:].tolist() == raster_rgb_tokens(row)


def match_augmented(sequence: torch.Tensor, images: np.ndarray) -> tuple[int, bool, int]:
    """(index, flipped, shift) such that the tokens are images[index] (flipped or not) plus one shift in
    [-10, 10], clipped to [0, 255]."""
    tokens = sequence[1:].numpy().reshape(images.shape[1:])
    for index, image in enumerate(images.astype(int)):
        for flipped in (False, True):
            for shift in range(-10, 11):
                if np.array_equal(np.clip((image[:, ::-1] if flipped else image) + shift, 0, 255), tokens):
                    return index, flipped, shift
    raise AssertionError("train sequence is not a flipped/shifted training image")


def test_train_augmentation_is_flip_then_one_shift_in_range(cifar_root) -> None:
    root, rows = cifar_root
    dm, images = make(root), rows_to_hwc(rows["train"])
    seen = [
        match_augmented(seq, images)
        for epoch in range(4)
        for seq in torch.cat(list(dm.train_dataloader(5, epoch=epoch)))
    ]
    assert {flipped for _, flipped, _ in seen} == {False, True} and len({shift for *_, shift in seen}) > 5
    assert sorted(index for index, *_ in seen[:N_TRAIN]) == list(range(N_TRAIN))  # one epoch = each image once


def test_shift_is_clipped_to_the_byte_range() -> None:
    from data.pixel_sequence import augment

    image = np.zeros((2, 2, 3), np.uint8)
    image[0] = 255
    for seed in range(30):
        out = augment(image, np.random.default_rng(seed)).astype(int)
        low, high = out[out < 128], out[out >= 128]
        assert (low.min() == low.max() and 0 <= low.max() <= 10) and (
            high.min() == high.max() and 245 <= high.min() <= 255
        )


def test_train_batches_are_deterministic_under_a_seed(cifar_root) -> None:
    dm = make(cifar_root[0])

    def batches(seed: int, epoch: int) -> torch.Tensor:
        return torch.cat(list(dm.train_dataloader(5, seed=seed, epoch=epoch)))

    assert torch.equal(batches(0, 1), batches(0, 1))
    assert not torch.equal(batches(0, 1), batches(0, 2)) and not torch.equal(batches(0, 1), batches(1, 1))


def test_ddp_shards_are_disjoint_and_complete(cifar_root) -> None:
    dm = make(cifar_root[0])
    train = [list(dm.train_dataloader(1, rank=rank, world_size=2, seed=3).sampler) for rank in (0, 1)]
    assert len(train[0]) == len(train[1]) == N_TRAIN // 2 and sorted(train[0] + train[1]) == list(range(N_TRAIN))
    full = next(iter(dm.eval_dataloader("test", CIFAR_TEST)))[0]
    shards = [torch.cat([t for t, _ in dm.eval_dataloader("test", 1, rank=rank, world_size=2)]) for rank in (0, 1)]
    assert torch.equal(torch.cat(shards), full)


def test_parquet_copy_gives_the_same_sequences(tmp_path: Path, cifar_root) -> None:
    root, rows = cifar_root
    for split in ("train", "test"):
        images = rows_to_hwc(rows[split])
        write_hf_parquet(
            tmp_path / "hf" / "plain_text" / f"{split}-00000-of-00001.parquet",
            list(images),
            [0] * len(images),
            "img",
            10,
        )
    hf = make(tmp_path / "hf", source="parquet", hf_cache_dir=str(tmp_path / "cache"))
    assert torch.equal(
        next(iter(hf.eval_dataloader("test", 4)))[0], next(iter(make(root).eval_dataloader("test", 4)))[0]
    )
    assert hf.describe()["format"] == "parquet" and hf.describe()["samples"] == {"train": N_TRAIN, "test": CIFAR_TEST}


def test_md5_verification_accepts_matching_files_and_detects_corruption(cifar_root, monkeypatch) -> None:
    root, _ = cifar_root
    with pytest.raises(DataError, match="data_batch_1 is corrupt: md5"):
        make(root, verify_md5=True)  # the fixture is not the real CIFAR-10
    files = make(root).describe()["files"]
    md5 = {Path(f["path"]).name: f["md5"] for f in files}
    monkeypatch.setattr(
        torchvision.datasets.CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)]
    )
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(
        torchvision.datasets.CIFAR10, "meta", {**torchvision.datasets.CIFAR10.meta, "md5": md5["batches.meta"]}
    )
    assert make(root, verify_md5=True).describe()["md5_verified"]
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    data = bytearray(batch.read_bytes())
    data[500] ^= 1
    batch.write_bytes(bytes(data))
    with pytest.raises(DataError, match="data_batch_3 is corrupt"):
        make(root, verify_md5=True)


def test_truncated_batch_is_reported_without_md5(cifar_root) -> None:
    root, _ = cifar_root
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(DataError, match="corrupt or truncated"):
        make(root)


def test_wrong_sample_count_is_reported(cifar_root) -> None:
    with pytest.raises(DataError, match=r"train split .* expected \(50000, 32, 32, 3\)"):
        make(cifar_root[0], expected_train=50_000)


def test_missing_files_name_the_config_key_and_url(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.root.*cs\.toronto\.edu/~kriz/cifar-10-python\.tar\.gz"):
        make(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"data\.root.*huggingface"):
        make(tmp_path / "nowhere", source="parquet")
