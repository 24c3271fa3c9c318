"""Evaluate a trained run on whole splits and write one JSON record per evaluation: a Hydra app.

    python eval.py run=runs/embedded_text_aft_local       # every eval split of the run's data (aft-eval, installed)
    python eval.py run=runs/<run> splits=test speed=true  # + Table 7 inference speed/memory (batch 256)
    python eval.py run=runs/<run>/checkpoints/last.pt data.eval_image_size=384   # AFT-conv at 384 (§5.3)
    python eval.py run=runs/<run> out=results/runs        # a record meant for results/REPORT.md
    python eval.py run=runs/<run> --cfg job               # what would be evaluated, and exit

The options are ``configs/eval.yaml``'s. The run's saved config (``<run>/.hydra/config.yaml``) is
composed in beside them, so any other ``key=value`` overrides it with train.py's syntax (a resolution
or a data path; ``+key=value`` adds a key), and it is resolved in this environment to rebuild the
model and data. Records go to ``<out>/<experiment>-<config hash>-<split>[-<weights>][-<overrides
hash>].json`` (``mini/table9/x`` as ``mini__table9__x``) with the metrics, the resolved config, the
training objective the run logged over its last epoch (``train_objective``, see
:func:`aft.runs.train_objective`), its learning curves (``history``, at most 100 points per curve,
:func:`aft.runs.history`), the device and the command.
``<out>`` is ``<run>/eval/`` unless ``out`` is given: ``scripts/compare.py`` reads ``results/runs/``,
the records committed for the report. Enwik8 scores every byte, CIFAR10 every sub-pixel, ImageNet
every image. A user error prints one line ``error: ...`` and exits 1; Hydra reports a command line
it cannot compose (a misspelt key) as train.py's are reported.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from aft.cli import user_errors_exit
from aft.provenance import provenance
from aft.resources import config_search_path
from aft.runs import (
    experiment_name,
    history,
    load_weights,
    locate,
    register_saved_config,
    resolve,
    saved_config,
    train_objective,
)
from aft.training.distributed import DistInfo
from aft.training.evaluate import PRECISIONS, evaluate, inference_speed
from aft.training.trainer import check_model_fits_data

RECORDS_DIR = "eval"  # the default out, inside the run folder
WEIGHTS = ("model", "model_ema")
SUBFOLDER = "__"  # stands for "/" of an experiment in a folder (mini/table9/<name>) in a record's file name


def config_hash(config: dict[str, Any]) -> str:
    """First 12 hex digits of the SHA-256 of a resolved config container."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def speed_example(data: Any, batch_size: int) -> torch.Tensor:
    """A batch of inputs of the run's shape: tokens ``(B, T)`` or images ``(B, 3, H, W)``."""
    if data.task == "lm":
        return torch.randint(0, data.vocab_size, (batch_size, data.seq_len))
    images, _ = next(iter(data.eval_dataloader(data.eval_splits[0], 1)))
    return images.expand(batch_size, *images.shape[1:]).contiguous()


def eval_device(name: str) -> torch.device:
    """``device``: ``auto`` (CUDA if visible), or a CUDA device only where one is visible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a device: use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name}: no GPU is visible here; use device=cpu")
    return device


def choice(key: str, value: str, choices: Sequence[str]) -> str:
    """``value`` of option ``key`` if it is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{key}={value!r}: use one of {', '.join(choices)}")
    return value


def steps_per_epoch(data: Any, cfg: DictConfig) -> int:
    """Optimizer steps in one epoch of the run: its training split in batches of ``trainer.batch_size``."""
    return len(data.train_dataloader(cfg.trainer.batch_size, 0, 1, cfg.seed, 0))


def splits(data: Any, asked: str | Sequence[str] | None) -> list[str]:
    """``splits`` (one name or a list), each one of the data's (its eval splits or ``train``);
    default: its eval splits."""
    known = [*data.eval_splits, "train"]
    asked = [asked] if isinstance(asked, str) else asked
    unknown = [split for split in asked or [] if split not in known]
    if unknown:
        raise ValueError(f"splits=[{','.join(unknown)}]: this run's data has the splits {' '.join(known)}")
    return list(asked or data.eval_splits)


def run_overrides(task_overrides: Sequence[str], run_keys: Sequence[str]) -> list[str]:
    """The command line's overrides of the run's config (those below one of its top-level ``run_keys``)."""
    parsed = OverridesParser.create().parse_overrides(list(task_overrides))
    return [o.input_line for o in parsed if o.key_or_group.split(".")[0] in run_keys]


def run_folder(arguments: Sequence[str]) -> Path | None:
    """The run folder named by the command line's ``run=`` (read as Hydra reads it), or None."""
    parser = OverridesParser.create()
    for item in arguments:
        if item.startswith("-") or "=" not in item:
            continue
        try:
            override = parser.parse_override(item)
        except OverrideParseException:
            continue  # Hydra reports it
        if override.key_or_group == "run":
            if override.is_sweep_override():
                raise ValueError(f"{item}: evaluate one run per command")
            return locate(Path(str(override.value())))[0]
    return None


def evaluate_run(cfg: DictConfig, task_overrides: Sequence[str]) -> list[Path]:
    """Evaluate the composed ``cfg`` (the options and the run's config); returns the records written."""
    if OmegaConf.is_missing(cfg, "run"):
        raise ValueError("no run to evaluate: give run=runs/<name> (a train.py run folder) or run=<checkpoint file>")
    run_dir, checkpoint = locate(Path(cfg.run))
    run_keys = list(saved_config(run_dir))
    run_cfg = resolve(OmegaConf.masked_copy(cfg, run_keys), run_dir)
    overrides = run_overrides(task_overrides, run_keys)
    device = eval_device(cfg.device)
    weights = choice("weights", cfg.weights, WEIGHTS)
    precision = choice("precision", cfg.precision or run_cfg.trainer.precision, list(PRECISIONS))
    data = instantiate(run_cfg.data)
    model = instantiate(run_cfg.model)
    check_model_fits_data(model, data)
    state = load_weights(model, checkpoint, weights)
    model.to(device)
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    config = OmegaConf.to_container(run_cfg, resolve=True)
    base = {
        "experiment": experiment_name(run_dir),
        "config_hash": config_hash(config),
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint),
        "step": state["step"],
        "overrides": overrides,
        "precision": precision,
        "weights": weights,
        "train_objective": train_objective(run_dir, state["step"], steps_per_epoch(data, run_cfg)),
        "history": history(run_dir, data.valid_split),
        "config": config,
        **provenance(device),
    }
    speed = None
    if cfg.speed:
        speed = inference_speed(model, speed_example(data, cfg.speed_batch_size), device, precision)
    out = Path(cfg.out) if cfg.out else run_dir / RECORDS_DIR
    written = []
    for split in splits(data, cfg.splits):
        loader = data.eval_dataloader(split, cfg.batch_size or run_cfg.trainer.eval_batch_size)
        metrics = evaluate(model, loader, data.task, dist, precision, progress=split)
        if data.task == "lm":
            metrics["unit"] = data.bits_unit
        record = {**base, "split": split, "metrics": {**metrics, **(speed or {})}}
        written.append(_write(record, out, overrides))
        print(json.dumps({"split": split, **record["metrics"]}), flush=True)
    print(f"wrote {', '.join(map(str, written))}", flush=True)
    return written


def _write(record: dict[str, Any], out: Path, overrides: list[str]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    name = f"{record['experiment'].replace('/', SUBFOLDER)}-{record['config_hash']}-{record['split']}"
    if record["weights"] != "model":
        name += f"-{record['weights']}"
    if overrides:
        name += "-" + hashlib.sha256(" ".join(overrides).encode()).hexdigest()[:8]
    path = out / f"{name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


@hydra.main(config_path=config_search_path(), config_name="eval", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    with user_errors_exit():
        evaluate_run(cfg, HydraConfig.get().overrides.task)


def main() -> None:
    """``python eval.py`` / ``aft-eval``: put the run's saved config in Hydra's config store, then run the app."""
    with user_errors_exit():
        register_saved_config(run_folder(sys.argv[1:]))
    _app()


if __name__ == "__main__":  # python -m aft.commands.eval
    main()
