"""What a resume restores and what it takes from the config (aft/training/resume.py)."""

from __future__ import annotations

import torch
from torch import nn

from aft.training import resume
from aft.training.checkpoint import rng_state
from aft.training.distributed import DistInfo

CPU = torch.device("cpu")


def _optimizer(lr: float) -> torch.optim.AdamW:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    return optimizer


def test_moments_come_from_the_checkpoint_and_hyper_parameters_from_the_config() -> None:
    saved = _optimizer(1e-3).state_dict()
    current = _optimizer(5e-4)
    current.state.clear()
    resume.load_optimizer(current, saved)
    assert current.param_groups[0]["lr"] == 5e-4
    moments = next(iter(current.state.values()))["exp_avg"]
    assert torch.equal(moments, next(iter(saved["state"].values()))["exp_avg"])


def test_each_rank_restores_its_own_rng_state() -> None:
    per_rank = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        per_rank.append(rng_state())
    torch.manual_seed(2)
    expected = torch.rand(4)
    torch.manual_seed(99)
    note = resume.restore_rng(per_rank, DistInfo(1, 2, 1, CPU), seed=0, step=5)
    assert note is None and torch.equal(torch.rand(4), expected)


def test_another_world_size_reseeds_and_says_so() -> None:
    note = resume.restore_rng([rng_state()], DistInfo(0, 2, 0, CPU), seed=0, step=5)
    assert note is not None and "1 processes, this run has 2" in note


def test_the_data_position_follows_the_micro_batch_and_process_count() -> None:
    position = resume.Position(step=10, epoch=1, batch_in_epoch=8)
    same = resume.rescale_position(position, {"micro_batch_size": 4, "world_size": 2}, micro=4, world_size=2)
    assert same == position
    halved = resume.rescale_position(position, {"micro_batch_size": 4, "world_size": 2}, micro=4, world_size=4)
    assert halved.batch_in_epoch == 4 and halved.step == 10


def test_changed_keys_ignore_the_keys_that_do_not_change_the_result() -> None:
    saved = {"optim": {"lr": 1e-3}, "trainer": {"device": "cuda", "batch_size": 8}, "data": {"root": "/a"}}
    now = {"optim": {"lr": 5e-4}, "trainer": {"device": "cpu", "batch_size": 8}, "data": {"root": "/b"}}
    assert resume.changed_keys(saved, now) == ["optim.lr"]
    assert resume.changed_keys(None, now) == []
