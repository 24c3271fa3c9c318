"""The experiment configs of ``configs/experiment/`` (one per model row of the paper's tables),
composed with Hydra's compose API exactly as ``train.py experiment=<name>`` composes them, without
reading data or opening a network connection.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import cache

import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from aft.resources import config_dir, initialize_configs


def experiment_names() -> list[str]:
    """Sorted names of ``configs/experiment/*.yaml`` (``base/`` holds shared parts, not experiments)."""
    return sorted(path.stem for path in (config_dir() / "experiment").glob("*.yaml"))


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The root config ``train.yaml`` with Hydra command-line ``overrides`` (a fresh copy per call)."""
    return copy.deepcopy(_compose(tuple(overrides)))


def compose_experiment(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The root config with ``experiment=name`` and ``overrides``."""
    return compose_config([f"experiment={name}", *overrides])


@cache
def _compose(overrides: tuple[str, ...]) -> DictConfig:
    with initialize_configs():
        return compose(config_name="train", overrides=list(overrides))


def build_on_meta(model_cfg: DictConfig) -> nn.Module:
    """``instantiate(model_cfg)`` with every tensor on the meta device (no memory, no compute)."""
    with torch.device("meta"):
        return instantiate(model_cfg)


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements of ``module``."""
    return sum(p.numel() for p in module.parameters())
