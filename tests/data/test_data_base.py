"""The shared interface: eval sharding, unit conversion, seeding, batch-size check."""

import math

import pytest

from data.base import DataError, EvalShardSampler, nats_to_bits, seed_for
from data.embedded_text import EmbeddedText


@pytest.mark.parametrize("n, world_size", [(10, 1), (10, 2), (7, 3), (2, 4), (0, 2)])
def test_eval_shards_are_contiguous_disjoint_and_complete(n: int, world_size: int) -> None:
    shards = [list(EvalShardSampler(range(n), rank, world_size)) for rank in range(world_size)]
    assert sum(shards, []) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_eval_shard_rejects_bad_rank() -> None:
    with pytest.raises(ValueError, match="rank 2"):
        EvalShardSampler(range(4), 2, 2)


def test_nats_to_bits() -> None:
    assert nats_to_bits(math.log(2)) == pytest.approx(1.0)
    assert nats_to_bits(math.log(256)) == pytest.approx(8.0)


def test_seed_for_is_deterministic_and_mixes_all_parts() -> None:
    assert seed_for(0, 1, 2) == seed_for(0, 1, 2)
    assert len({seed_for(0, 1, 2), seed_for(0, 2, 1), seed_for(1, 1, 2)}) == 3
    assert 0 <= seed_for(5) < 2**63


def test_train_loader_refuses_batches_larger_than_the_shard() -> None:
    dm = EmbeddedText(seq_len=4096, num_workers=0)
    with pytest.raises(DataError, match="fewer than batch_size"):
        dm.train_dataloader(batch_size=1000)


def test_describe_reports_task_attributes_and_record() -> None:
    info = EmbeddedText(seq_len=64, num_workers=0).describe()
    assert info["task"] == "lm" and info["vocab_size"] == 256 and info["seq_len"] == 64
    assert info["eval_splits"] == ["valid", "test"] and len(info["md5"]) == 32
    assert sum(split["bytes"] for split in info["splits"].values()) == info["bytes"]
