"""What a checkpoint holds for resuming, and how a run picks up from it.

A training state is the model, the optimizer (its moments and hyper-parameters), the grad scaler,
every process's RNG states, the data position and the loss guard's state (``loss_guard.py``), plus
the resolved config it was trained with. Resuming restores all of it except the hyper-parameters:
the optimizer's learning rate, weight decay and betas and the schedule always come from the current
config (its schedule set to the resumed step), so an unchanged config continues the same loss curve
and a changed ``optim.*`` or ``schedule.*`` is applied from the resumed step on (and said so).
Mid-epoch, the data loader skips the micro-batches already consumed (``resume_loader``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Sampler

from aft.run_name import result_config
from aft.training import checkpoint as ckpt
from aft.training.distributed import DistInfo


@dataclass
class Position:
    """Where training stands: optimizer ``step`` and the data position of the next batch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed by each rank


class SkipSampler(Sampler[int]):
    """The indices of ``sampler`` after the first ``skip`` (resuming mid-epoch)."""

    def __init__(self, sampler: Sampler[int], skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        for i, index in enumerate(self.sampler):
            if i >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)  # type: ignore[arg-type]


def resume_loader(loader: DataLoader, skip_batches: int) -> DataLoader:
    """``loader`` without its first ``skip_batches`` batches, reading nothing it skips."""
    if skip_batches == 0:
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=SkipSampler(loader.sampler, skip_batches * loader.batch_size),  # type: ignore[arg-type]
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        generator=loader.generator,
    )


def find_resume(resume: Any, checkpoint_dir: Path) -> Path | None:
    """The checkpoint ``trainer.resume`` names: ``auto`` (the run's ``last.pt`` if any), ``none`` or a path."""
    if resume in (None, "none", False):
        return None
    if resume == "auto":
        last = checkpoint_dir / ckpt.LAST
        return last if last.exists() else None
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"trainer.resume={resume} is not a checkpoint file: give a .pt path, auto or none")
    return path


def training_state(
    model: nn.Module, optimizer, scaler, position: Position, rng: list[dict], extra: dict[str, Any]
) -> dict[str, Any]:
    """The checkpoint dict; ``rng`` holds one RNG state per rank, in rank order."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng,
        "step": position.step,
        "epoch": position.epoch,
        "batch_in_epoch": position.batch_in_epoch,
        **extra,
    }


def load_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """The saved moments into ``optimizer``, keeping its hyper-parameters (from the config)."""
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, values in zip(optimizer.param_groups, hyper, strict=True):
        group.update(values)


def restore_rng(saved: list[dict] | dict, dist: DistInfo, seed: int, step: int) -> str | None:
    """This rank's RNG states from the checkpoint; a note when they cannot be (another world size).

    With another number of processes the streams are reseeded from ``(seed, rank, step)``: the run
    continues, but its dropout (and Mixup) draws differ from an uninterrupted run.
    """
    states = [saved] if isinstance(saved, dict) else saved  # a dict: written by one process
    if len(states) == dist.world_size:
        ckpt.set_rng_state(states[dist.rank])
        return None
    ckpt.seed_all(int(np.random.SeedSequence((seed, dist.rank, step)).generate_state(1)[0]))
    return (
        f"the checkpoint holds RNG states of {len(states)} processes, this run has {dist.world_size}: "
        "random streams reseeded, so the curve continues but not draw for draw"
    )


def rescale_position(position: Position, saved: dict[str, Any], micro: int, world_size: int) -> Position:
    """The data position for this run's micro-batch size and number of processes."""
    old = saved.get("micro_batch_size", micro) * saved.get("world_size", world_size)
    if old == micro * world_size:
        return position
    return Position(position.step, position.epoch, position.batch_in_epoch * old // (micro * world_size))


def changed_keys(saved_config: dict[str, Any] | None, cfg: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between the checkpoint's config and this run's (result keys only)."""
    if saved_config is None:
        return []
    return sorted(_diff(result_config(saved_config), result_config(cfg)))


def _diff(a: Any, b: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a.keys() | b.keys():
            yield from _diff(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain containers (what a checkpoint stores)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
