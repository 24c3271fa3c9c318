"""Byte-stream windowing shared by enwik8 and the embedded text: training windows and exact evaluation."""

import pickle

import numpy as np
import pytest
import torch

from data.byte_stream import PAD, EvalWindows, MappedBytes, ShiftedWindowSampler, TrainWindows, split_ranges


def scored_targets(dataset: EvalWindows) -> np.ndarray:
    """Concatenate the scored targets of all windows in order."""
    parts = []
    for j in range(len(dataset)):
        window, mask = dataset[j]
        assert window.shape == (dataset.seq_len + 1,) and mask.shape == (dataset.seq_len,)
        parts.append(window[1:][mask].numpy())
    return np.concatenate(parts)


@pytest.mark.parametrize(
    "n, seq_len, stride", [(100, 16, 16), (96, 16, 16), (5, 16, 16), (100, 16, 4), (100, 16, 1), (37, 8, 3)]
)
def test_eval_scores_every_byte_exactly_once_in_order(n: int, seq_len: int, stride: int) -> None:
    source = np.random.default_rng(n).integers(1, 256, size=n, dtype=np.uint8)
    assert np.array_equal(scored_targets(EvalWindows(source, seq_len, stride)), source)


@pytest.mark.parametrize("stride", [16, 4])
def test_eval_windows_are_true_context(stride: int) -> None:
    """Each window is [PAD] + source read contiguously; padding appears only past the end and is unscored."""
    source = np.arange(1, 71, dtype=np.uint8)  # no zeros, so PAD is recognisable
    stream = np.concatenate([[PAD], source])
    dataset = EvalWindows(source, 16, stride)
    for j in range(len(dataset)):
        window, mask = (t.numpy() for t in dataset[j])
        begin = max(0, (j + 1) * stride - 16)
        real = stream[begin : begin + 17]
        assert np.array_equal(window[: len(real)], real)
        assert (window[len(real) :] == PAD).all() and not mask[len(real) - 1 :].any()
        if begin > 0:  # full-context windows score exactly their last `stride` targets (or fewer at the end)
            assert not mask[: 16 - stride].any()


def test_eval_stride_is_validated() -> None:
    with pytest.raises(ValueError, match="eval_stride"):
        EvalWindows(np.zeros(10, np.uint8), 8, 9)


def train_starts(num_bytes: int, seq_len: int, rank: int, world_size: int, seed: int, epoch: int) -> list[int]:
    sampler = ShiftedWindowSampler(num_bytes, seq_len, rank, world_size, seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_train_windows_tile_the_split_from_a_random_phase() -> None:
    n, t = 1000, 16
    starts = sorted(train_starts(n, t, 0, 1, seed=3, epoch=0))
    phase = starts[0]
    assert 0 <= phase < t and starts == [phase + k * t for k in range(n // t - 1)]
    assert starts[-1] + t + 1 <= n  # every window fits
    phases = {sorted(train_starts(n, t, 0, 1, seed=3, epoch=e))[0] for e in range(20)}
    assert len(phases) > 1  # the phase moves between epochs


def test_train_windows_are_deterministic_per_seed_and_epoch() -> None:
    assert train_starts(1000, 16, 0, 1, 3, 5) == train_starts(1000, 16, 0, 1, 3, 5)
    assert train_starts(1000, 16, 0, 1, 3, 5) != train_starts(1000, 16, 0, 1, 3, 6)
    assert train_starts(1000, 16, 0, 1, 3, 5) != train_starts(1000, 16, 0, 1, 4, 5)


def test_train_windows_shard_without_overlap() -> None:
    rank0, rank1 = (train_starts(1000, 16, rank, 2, 7, 1) for rank in (0, 1))
    single = train_starts(1000, 16, 0, 1, 7, 1)
    assert len(rank0) == len(rank1) == len(single) // 2
    assert not set(rank0) & set(rank1) and set(rank0) | set(rank1) <= set(single)


def test_train_window_items_are_contiguous_bytes() -> None:
    source = np.random.default_rng(0).integers(0, 256, size=200, dtype=np.uint8)
    item = TrainWindows(source, 16)[37]
    assert item.dtype == torch.int64 and torch.equal(item, torch.from_numpy(source[37:54].astype(np.int64)))


def test_split_ranges() -> None:
    assert split_ranges([90, 5, 5]) == {"train": (0, 90), "valid": (90, 5), "test": (95, 5)}
    with pytest.raises(ValueError):
        split_ranges([90, 10])


def test_mapped_bytes_pickles_without_its_data(tmp_path) -> None:
    data = np.random.default_rng(0).integers(0, 256, size=100_000, dtype=np.uint8)
    (tmp_path / "blob").write_bytes(data.tobytes())
    mapped = MappedBytes(tmp_path / "blob", 1000, 50_000)
    assert np.array_equal(mapped[10:20], data[1010:1020])  # maps the file
    payload = pickle.dumps(mapped)
    assert len(payload) < 1000
    assert np.array_equal(pickle.loads(payload)[-5:], data[50_995:51_000])
