"""Run folders written by ``train.py``: find the checkpoint, read the saved config, rebuild the model,
and read back the training objective and the learning curves the run logged.

A run folder holds ``.hydra/config.yaml`` (the composed config, interpolations such as
``${oc.env:AFT_DATA_ROOT,./datasets}`` unresolved), ``.hydra/hydra.yaml`` (which experiment was
chosen), ``metrics.jsonl`` (the trainer's log) and ``checkpoints/last.pt``. ``eval.py`` and the
figure scripts read trained models through these functions. Overrides of the saved config are
Hydra's, as ``train.py``'s are of its configs: the saved config is registered in Hydra's config
store (:func:`register_saved_config`) and Hydra composes it with the overrides (``key=value``
replaces a key and refuses a misspelt one, ``+key=value`` adds one, ``~key`` removes one). A wrong
path or a value that cannot be resolved here raises a one-line error that names the fix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize
from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from torch import nn

from aft.training import checkpoint as ckpt
from aft.training.logger import read_metrics

CONFIG_FILE = Path(".hydra") / "config.yaml"
SAVED_GROUP, SAVED_NAME = "run_config", "saved"  # the saved config in Hydra's config store (configs/eval.yaml)
HISTORY_POINTS = 100  # the most points a learning curve of a record keeps
CURVE_METRICS = ("loss", "bits", "top1")  # of the evaluations: nats, bpc or bits/dim, top-1 %


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


def saved_config(run_dir: Path) -> DictConfig:
    """The config ``run_dir`` was trained with, as ``train.py`` saved it (interpolations unresolved)."""
    config_file = run_dir / CONFIG_FILE
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file} is missing: {run_dir} is not a train.py run folder")
    return OmegaConf.load(config_file)


def register_saved_config(run_dir: Path | None) -> None:
    """Store ``run_dir``'s saved config in Hydra's config store as ``run_config/saved`` (package
    ``_global_``), where ``configs/eval.yaml`` composes it; ``None`` stores an empty config."""
    node = OmegaConf.create() if run_dir is None else saved_config(run_dir)
    ConfigStore.instance().store(group=SAVED_GROUP, name=SAVED_NAME, node=node, package="_global_")


def compose_run_config(run_dir: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The run's saved config composed by Hydra with ``overrides``, resolved in this environment."""
    register_saved_config(run_dir)
    with initialize(config_path=None, version_base=None):
        cfg = compose(config_name=f"{SAVED_GROUP}/{SAVED_NAME}", overrides=list(overrides))
    return resolve(cfg, run_dir)


def experiment_name(run_dir: Path) -> str:
    """The experiment the run was launched with (``.hydra/hydra.yaml``), ``"default"`` if none is recorded."""
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_file.exists():
        return "default"
    return OmegaConf.load(hydra_file).hydra.runtime.choices.get("experiment") or "default"


def _raw_value(cfg: DictConfig, key: str) -> Any:
    """The value at dotted ``key`` as written, interpolations unresolved."""
    node: Any = OmegaConf.to_container(cfg, resolve=False)
    for part in key.split("."):
        node = node[part]
    return node


def resolve(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """Resolve every interpolation of ``cfg`` (the run's config) in place and return it; one that
    cannot be resolved here names its key and the fix."""
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationResolutionError as error:
        key = error.full_key
        reason = str(error).splitlines()[0]
        raise ValueError(
            f"{run_dir / CONFIG_FILE}: {key}: {_raw_value(cfg, key)} cannot be resolved here ({reason}): "
            f"set the environment variable, or pass the override {key}=<value>"
        ) from None
    OmegaConf.resolve(cfg)
    return cfg


def load_weights(model: nn.Module, checkpoint: Path, weights: str = "model") -> dict[str, Any]:
    """Load ``checkpoint``'s weights (``"model"``, or ``"model_ema"``: their moving average) into
    ``model``; returns the checkpoint. A model that does not fit the weights (e.g. a ``model.*``
    override) is a :class:`~aft.training.checkpoint.CheckpointError`."""
    state = ckpt.load(checkpoint)
    fix = "drop the model.* overrides, or give the checkpoint of this config's run"
    if weights != "model":
        fix = "evaluate the raw weights (weights=model), or train with trainer.ema_decay"
    ckpt.load_weights(model, state, checkpoint, fix, key=weights)
    return state


def load_model(path: Path, overrides: Sequence[str] = ()) -> tuple[nn.Module, DictConfig]:
    """The trained model of a run folder or checkpoint file (CPU, eval mode) and its config."""
    run_dir, checkpoint = locate(path)
    cfg = compose_run_config(run_dir, overrides)
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


def history(run_dir: Path, valid_split: str, points: int = HISTORY_POINTS) -> dict[str, Any]:
    """The learning curves of ``metrics.jsonl``: ``{"valid_split": ..., "series": {name: {"step": [...],
    "value": [...]}}}``.

    The series are ``train_loss`` (nats, as logged every ``trainer.log_every`` steps) and the
    evaluations of ``valid_split`` (the periodic ones during training, on ``trainer.eval_batches``
    batches, and the final one on the whole split) named as logged: ``<split>_<metric>`` of the
    trained weights and ``<split>_ema_<metric>`` of their moving average, for each metric of
    :data:`CURVE_METRICS` the run logged. A series longer than ``points`` is cut into ``points``
    consecutive runs of (nearly) equal length, each one point: the mean value at the run's last step.
    Values keep 6 significant digits.
    """
    pattern = re.compile(rf"^(train_loss|{re.escape(valid_split)}(_ema)?_({'|'.join(CURVE_METRICS)}))$")
    logged: dict[str, list[tuple[int, float]]] = {}
    for record in read_metrics(run_dir):
        for name, value in record.items():
            if pattern.match(name):
                logged.setdefault(name, []).append((record["step"], value))
    return {"valid_split": valid_split, "series": {name: _binned(values, points) for name, values in logged.items()}}


def _binned(values: list[tuple[int, float]], points: int) -> dict[str, list]:
    """At most ``points`` ``(step, value)`` pairs as ``{"step": [...], "value": [...]}``: means of consecutive runs."""
    bounds = [i * len(values) // points for i in range(points + 1)] if len(values) > points else range(len(values) + 1)
    runs = [values[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
    return {
        "step": [run[-1][0] for run in runs],
        "value": [float(f"{sum(v for _, v in run) / len(run):.6g}") for run in runs],
    }
