"""Run folders written by ``train.py``: find the checkpoint, read the saved config, rebuild the model,
and read back the training objective the run logged.

A run folder holds ``.hydra/config.yaml`` (the composed config, interpolations such as
``${oc.env:AFT_DATA_ROOT,./datasets}`` unresolved), ``.hydra/hydra.yaml`` (which experiment was
chosen), ``metrics.jsonl`` (the trainer's log) and ``checkpoints/last.pt``. ``eval.py`` and the
figure scripts read trained models through these functions; every mistake in the path or the
overrides raises a one-line error that names the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from torch import nn

from aft.training import checkpoint as ckpt
from aft.training.logger import read_metrics

CONFIG_FILE = Path(".hydra") / "config.yaml"
_ABSENT = object()


def locate(path: Path) -> tuple[Path, Path]:
    """``(run_dir, checkpoint)`` from a run folder or a checkpoint file (``<run>/checkpoints/*.pt``)."""
    if path.is_file():
        return path.parent.parent, path
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} does not exist: give a run folder written by train.py (runs/<name>) or a checkpoint file"
        )
    checkpoint = path / "checkpoints" / ckpt.LAST
    if not checkpoint.exists():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}: train first (python train.py ...) or pass a .pt file")
    return path, checkpoint


def load_config(run_dir: Path, overrides: Sequence[str]) -> tuple[DictConfig, str]:
    """The run's config, resolved in this environment, with ``overrides`` applied, and the experiment name.

    ``key=value`` replaces a key of the saved config (a misspelt key is an error), ``+key=value``
    adds one. Values are parsed as YAML (``data.eval_image_size=384`` is an int).
    """
    config_file = run_dir / CONFIG_FILE
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file} is missing: {run_dir} is not a train.py run folder")
    cfg = OmegaConf.load(config_file)
    for item in overrides:
        _apply_override(cfg, item, config_file)
    _resolve(cfg, config_file)
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    experiment = "default"
    if hydra_file.exists():
        choices = OmegaConf.load(hydra_file).hydra.runtime.choices
        experiment = choices.get("experiment") or "default"
    return cfg, experiment


def _apply_override(cfg: DictConfig, item: str, config_file: Path) -> None:
    key, sep, value = item.partition("=")
    add = key.startswith("+")
    key = key.removeprefix("+")
    if not sep or not key:
        raise ValueError(f"override {item!r} is not key=value (e.g. data.eval_image_size=384)")
    if not add and _raw_value(cfg, key) is _ABSENT:
        raise ValueError(f"override {item!r}: {config_file} has no key {key}; check its spelling, or add it with +{item}")
    OmegaConf.update(cfg, key, yaml.safe_load(value), force_add=True)


def _raw_value(cfg: DictConfig, key: str) -> Any:
    """The value at dotted ``key`` as written, interpolations unresolved; ``_ABSENT`` if there is none."""
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _resolve(cfg: DictConfig, config_file: Path) -> None:
    """Resolve every interpolation in place; one that cannot be resolved names its key and the fix."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as error:
        key = error.full_key
        reason = str(error).splitlines()[0]
        raise ValueError(
            f"{config_file}: {key}: {_raw_value(cfg, key)} cannot be resolved here ({reason}): set the environment variable, "
            f"or pass the override {key}=<value>"
        ) from None
    OmegaConf.resolve(cfg)


def load_weights(model: nn.Module, checkpoint: Path, weights: str = "model") -> dict[str, Any]:
    """Load ``checkpoint``'s weights (``"model"``, or ``"model_ema"``: their moving average) into
    ``model``; returns the checkpoint. A model that does not fit the weights (e.g. a ``model.*``
    override) is a :class:`~aft.training.checkpoint.CheckpointError`."""
    state = ckpt.load(checkpoint)
    fix = "drop the model.* overrides, or give the checkpoint of this config's run"
    if weights != "model":
        fix = "evaluate the raw weights (--weights model), or train with trainer.ema_decay"
    ckpt.load_weights(model, state, checkpoint, fix, key=weights)
    return state


def load_model(path: Path, overrides: Sequence[str] = ()) -> tuple[nn.Module, DictConfig]:
    """The trained model of a run folder or checkpoint file (CPU, eval mode) and its config."""
    run_dir, checkpoint = locate(path)
    cfg, _ = load_config(run_dir, overrides)
    model = instantiate(cfg.model)
    load_weights(model, checkpoint)
    return model.eval(), cfg


def train_objective(run_dir: Path, step: int, steps_per_epoch: int) -> dict[str, Any] | None:
    """The training objective the run logged over its last epoch up to ``step``, or None if none was logged.

    The mean of ``metrics.jsonl``'s ``train_loss`` (nats; the loss the optimizer minimized, with
    Mixup/CutMix/label smoothing and dropout as configured, each value the mean over one step's
    batch) at the logged steps ``s`` with ``step - steps_per_epoch < s <= step``: the
    ``trainer.log_every``-th steps of the last epoch, or of the whole run if it is shorter.
    """
    losses = [
        (record["step"], record["train_loss"])
        for record in read_metrics(run_dir)
        if "train_loss" in record and step - steps_per_epoch < record["step"] <= step
    ]
    if not losses:
        return None
    return {
        "loss": sum(loss for _, loss in losses) / len(losses),
        "first_step": losses[0][0],
        "last_step": losses[-1][0],
        "logged_steps": len(losses),
        "steps_per_epoch": steps_per_epoch,
    }
