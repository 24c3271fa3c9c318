"""Enwik8 files (zip / raw), split offsets, coverage, DDP, workers and bad input."""

import zipfile
from pathlib import Path

import pytest
import torch

from data.base import DataError
from data.enwik8 import Enwik8
from tests.data.data_fixtures import ENWIK8_SPLITS, write_enwik8_zip


def make(root: Path, **kwargs) -> Enwik8:
    return Enwik8(str(root), **{"seq_len": 32, "split_bytes": ENWIK8_SPLITS, "num_workers": 0, **kwargs})


def eval_bytes(dm: Enwik8, split: str, rank: int = 0, world_size: int = 1, batch_size: int = 3) -> bytes:
    loader = dm.eval_dataloader(split, batch_size=batch_size, rank=rank, world_size=world_size)
    return b"".join(
        bytes(window[1:][mask].tolist())
        for windows, masks in loader
        for window, mask in zip(windows, masks, strict=True)
    )


def test_splits_are_consecutive_byte_ranges_and_eval_covers_each_once(enwik8_root: Path, enwik8_bytes: bytes) -> None:
    dm = make(enwik8_root)
    train, valid, _ = ENWIK8_SPLITS
    assert eval_bytes(dm, "train") == enwik8_bytes[:train]
    assert eval_bytes(dm, "valid") == enwik8_bytes[train : train + valid]
    assert eval_bytes(dm, "test") == enwik8_bytes[train + valid :]
    assert dm.describe()["splits"]["test"] == {"offset": train + valid, "bytes": ENWIK8_SPLITS[2]}


def test_sliding_window_eval_covers_each_byte_once(enwik8_root: Path, enwik8_bytes: bytes) -> None:
    dm = make(enwik8_root, eval_stride=8)
    assert eval_bytes(dm, "valid") == enwik8_bytes[900:960]
    windows, masks = next(iter(dm.eval_dataloader("valid", batch_size=8)))
    assert windows.shape == (8, 33) and windows.dtype == torch.int64 and masks.dtype == torch.bool
    assert masks.sum(1).tolist() == [8] * 7 + [4]  # 60 bytes in windows scoring 8 targets each
    assert masks[4:7, 24:].all() and not masks[4:7, :24].any()  # full-context windows score their last 8


def test_train_batches_are_windows_of_the_train_split(enwik8_root: Path, enwik8_bytes: bytes) -> None:
    dm = make(enwik8_root)
    train = enwik8_bytes[: ENWIK8_SPLITS[0]]
    batches = list(dm.train_dataloader(batch_size=4, seed=0, epoch=0))
    assert all(b.shape == (4, 33) and b.dtype == torch.int64 for b in batches)
    for window in torch.cat(batches):
        assert bytes(window.tolist()) in train
    assert len(batches) == (ENWIK8_SPLITS[0] // 32 - 1) // 4


def test_train_order_is_seeded_and_sharded(enwik8_root: Path) -> None:
    dm = make(enwik8_root)
    first = torch.cat(list(dm.train_dataloader(4, seed=1, epoch=2)))
    assert torch.equal(first, torch.cat(list(dm.train_dataloader(4, seed=1, epoch=2))))
    assert not torch.equal(first, torch.cat(list(dm.train_dataloader(4, seed=1, epoch=3))))
    ranks = [
        {bytes(w.tolist()) for w in torch.cat(list(dm.train_dataloader(2, rank=r, world_size=2, seed=1)))}
        for r in (0, 1)
    ]
    assert not ranks[0] & ranks[1]


def test_eval_shards_over_ranks_concatenate_to_the_split(enwik8_root: Path, enwik8_bytes: bytes) -> None:
    dm = make(enwik8_root, seq_len=16)
    shards = [eval_bytes(dm, "valid", rank, 2) for rank in (0, 1)]
    assert shards[0] and shards[1] and shards[0] + shards[1] == enwik8_bytes[900:960]


def test_two_workers_give_the_same_batches(enwik8_root: Path) -> None:
    dm0, dm2 = make(enwik8_root), make(enwik8_root, num_workers=2)
    assert all(
        torch.equal(a, b) for a, b in zip(dm0.train_dataloader(4, seed=5), dm2.train_dataloader(4, seed=5), strict=True)
    )
    assert eval_bytes(dm0, "test") == eval_bytes(dm2, "test")


def test_zip_is_extracted_once_to_the_cache_dir(tmp_path: Path, enwik8_root: Path, enwik8_bytes: bytes) -> None:
    cache = tmp_path / "cache"
    dm = make(enwik8_root, cache_dir=str(cache))
    extracted = cache / "enwik8"
    assert extracted.read_bytes() == enwik8_bytes and dm.describe()["format"] == "zip"
    stamp = extracted.stat().st_mtime_ns
    make(enwik8_root, cache_dir=str(cache))
    assert extracted.stat().st_mtime_ns == stamp and sorted(p.name for p in cache.iterdir()) == [
        "enwik8",
        "enwik8.crc32",
    ]


def test_a_replaced_zip_is_extracted_again(tmp_path: Path, enwik8_bytes: bytes) -> None:
    root, cache = tmp_path / "root", tmp_path / "cache"
    root.mkdir()
    write_enwik8_zip(root, enwik8_bytes)
    make(root, cache_dir=str(cache))
    replaced = bytes(reversed(enwik8_bytes))
    write_enwik8_zip(root, replaced)
    make(root, cache_dir=str(cache))
    assert (cache / "enwik8").read_bytes() == replaced


def test_raw_file_is_read_in_place(tmp_path: Path, enwik8_bytes: bytes) -> None:
    (tmp_path / "enwik8").write_bytes(enwik8_bytes)
    info = make(tmp_path).describe()
    assert info["format"] == "raw" and info["file"]["bytes"] == len(enwik8_bytes) and len(info["file"]["md5"]) == 32


def test_missing_data_names_the_config_key_and_url(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.root.*mattmahoney\.net/dc/enwik8\.zip"):
        make(tmp_path / "nowhere")


def test_short_file_is_reported_as_truncated(enwik8_root: Path) -> None:
    with pytest.raises(DataError, match=r"1,000 bytes, expected exactly 100,000,000.*truncated"):
        Enwik8(str(enwik8_root), num_workers=0)


def test_file_size_must_match_the_splits_exactly(tmp_path: Path, enwik8_bytes: bytes) -> None:
    (tmp_path / "enwik8").write_bytes(enwik8_bytes + b"x")
    with pytest.raises(DataError, match="1,001 bytes, expected exactly 1,000"):
        make(tmp_path)


def test_damaged_zip_is_reported(tmp_path: Path, enwik8_bytes: bytes) -> None:
    archive = write_enwik8_zip(tmp_path, enwik8_bytes)
    data = bytearray(archive.read_bytes())
    data[60:70] = bytes(10)  # inside the compressed member
    archive.write_bytes(bytes(data))
    with pytest.raises(DataError, match="damaged"):
        make(tmp_path)
    assert not (tmp_path / "enwik8").exists()


def test_zip_without_enwik8_member_is_reported(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "enwik8.zip", "w") as zf:
        zf.writestr("other", b"x")
    with pytest.raises(DataError, match="not enwik8.zip"):
        make(tmp_path)


def test_a_limited_evaluation_scores_the_same_windows_for_any_number_of_processes(enwik8_root: Path) -> None:
    dm = make(enwik8_root)

    def windows(world_size: int) -> list[list[int]]:
        return [
            row.tolist()
            for rank in range(world_size)
            for tokens, _mask in dm.eval_dataloader("test", 1, rank, world_size, limit=2)
            for row in tokens
        ]

    assert len(windows(1)) == 2 and windows(1) == windows(2)
    every = [row.tolist() for tokens, _ in dm.eval_dataloader("test", 1) for row in tokens]
    assert windows(1) == [every[0], every[len(every) // 2]]  # evenly spaced, not the first ones
