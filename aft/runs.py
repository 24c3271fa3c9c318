"""Run folders written by ``train.py``: find the checkpoint, read the saved config, rebuild the model.

A run folder holds ``.hydra/config.yaml`` (the resolved config), ``.hydra/hydra.yaml`` (which
experiment was chosen) and ``checkpoints/last.pt``. ``eval.py`` and the figure scripts read
trained models through these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from aft.training import checkpoint as ckpt


def locate(path: Path) -> tuple[Path, Path]:
    """``(run_dir, checkpoint)`` from a run folder or a checkpoint file."""
    if path.is_file():
        return path.parent.parent, path
    checkpoint = path / "checkpoints" / ckpt.LAST
    if not checkpoint.exists():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}: train first (python train.py ...) or pass a .pt file")
    return path, checkpoint


def load_config(run_dir: Path, overrides: Sequence[str]) -> tuple[DictConfig, str]:
    """The run's resolved config with ``key=value`` ``overrides`` applied, and the experiment name."""
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file} is missing: {run_dir} is not a train.py run folder")
    cfg = OmegaConf.load(config_file)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True)
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    experiment = "default"
    if hydra_file.exists():
        choices = OmegaConf.load(hydra_file).hydra.runtime.choices
        experiment = choices.get("experiment") or "default"
    return cfg, experiment


def load_model(path: Path, overrides: Sequence[str] = ()) -> tuple[nn.Module, DictConfig]:
    """The trained model of a run folder or checkpoint file (CPU, eval mode) and its config."""
    run_dir, checkpoint = locate(path)
    cfg, _ = load_config(run_dir, overrides)
    model = instantiate(cfg.model)
    model.load_state_dict(ckpt.load(checkpoint)["model"])
    return model.eval(), cfg
