"""Evaluate a trained run on whole splits and write one JSON record per evaluation.

    python eval.py runs/default                           # every eval split of the run's data
    python eval.py runs/<run> --splits test --speed       # + Table 7 inference speed/memory (batch 256)
    python eval.py runs/<run>/checkpoints/last.pt data.eval_image_size=384   # AFT-conv at 384 (§5.3)
    python eval.py runs/<run> --out results/runs          # a record meant for results/REPORT.md

The run's saved config (``<run>/.hydra/config.yaml``, resolved in this environment) rebuilds the
model and data; trailing ``key=value`` arguments override it (e.g. a resolution or a data path),
``+key=value`` adds a key. Records go to ``<out>/<experiment>-<config hash>-<split>[-<overrides
hash>].json`` with the metrics, the resolved config, the training objective the run logged over
its last epoch (``train_objective``, see :func:`aft.runs.train_objective`), the device and the
command. ``<out>`` is ``<run>/eval/`` unless ``--out`` is given: ``scripts/compare.py`` reads
``results/runs/``, the records committed for the report. Enwik8 scores every byte, CIFAR10 every
sub-pixel, ImageNet every image. A user error prints one line ``error: ...`` and exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from aft.cli import user_errors_exit
from aft.provenance import provenance
from aft.runs import load_config, load_weights, locate, train_objective
from aft.training.distributed import DistInfo
from aft.training.evaluate import evaluate, inference_speed
from aft.training.trainer import check_model_fits_data

RECORDS_DIR = "eval"  # the default --out, inside the run folder


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
    """``--device``: a CUDA device only where one is visible."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no GPU is visible here; use --device cpu")
    return device


def steps_per_epoch(data: Any, cfg: DictConfig) -> int:
    """Optimizer steps in one epoch of the run: its training split in batches of ``trainer.batch_size``."""
    return len(data.train_dataloader(cfg.trainer.batch_size, 0, 1, cfg.seed, 0))


def splits(data: Any, asked: list[str] | None) -> list[str]:
    """``--splits``, each one of the data's (its eval splits or ``train``); default: its eval splits."""
    known = [*data.eval_splits, "train"]
    unknown = [split for split in asked or [] if split not in known]
    if unknown:
        raise ValueError(f"--splits {' '.join(unknown)}: this run's data has the splits {' '.join(known)}")
    return asked or list(data.eval_splits)


def evaluate_run(args: argparse.Namespace) -> list[Path]:
    run_dir, checkpoint = locate(args.run)
    cfg, experiment = load_config(run_dir, args.overrides)
    device = eval_device(args.device)
    data = instantiate(cfg.data)
    model = instantiate(cfg.model)
    check_model_fits_data(model, data)
    state = load_weights(model, checkpoint, args.weights)
    model.to(device)
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    precision = args.precision or cfg.trainer.precision
    config = OmegaConf.to_container(cfg, resolve=True)
    base = {
        "experiment": experiment,
        "config_hash": config_hash(config),
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint),
        "step": state["step"],
        "overrides": args.overrides,
        "precision": precision,
        "weights": args.weights,
        "train_objective": train_objective(run_dir, state["step"], steps_per_epoch(data, cfg)),
        "config": config,
        **provenance(device),
    }
    speed = None
    if args.speed:
        speed = inference_speed(model, speed_example(data, args.speed_batch_size), device, precision)
    out = args.out or run_dir / RECORDS_DIR
    written = []
    for split in splits(data, args.splits):
        loader = data.eval_dataloader(split, args.batch_size or cfg.trainer.eval_batch_size)
        metrics = evaluate(model, loader, data.task, dist, precision)
        if data.task == "lm":
            metrics["unit"] = data.bits_unit
        record = {**base, "split": split, "metrics": {**metrics, **(speed or {})}}
        written.append(_write(record, out, args.overrides))
        print(json.dumps({"split": split, **record["metrics"]}), flush=True)
    print(f"wrote {', '.join(map(str, written))}", flush=True)
    return written


def _write(record: dict[str, Any], out: Path, overrides: list[str]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    name = f"{record['experiment']}-{record['config_hash']}-{record['split']}"
    if record["weights"] != "model":
        name += f"-{record['weights']}"
    if overrides:
        name += "-" + hashlib.sha256(" ".join(overrides).encode()).hexdigest()[:8]
    path = out / f"{name}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run folder (runs/<name>) or a checkpoint file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the saved config")
    parser.add_argument("--splits", nargs="+", help="default: the data's eval splits")
    parser.add_argument("--batch-size", type=int, help="default: trainer.eval_batch_size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], help="default: the run's")
    parser.add_argument("--speed", action="store_true", help="measure inference samples/s and memory")
    parser.add_argument("--speed-batch-size", type=int, default=256, help="Table 7 protocol: 256")
    parser.add_argument(
        "--weights", choices=["model", "model_ema"], default="model",
        help="the trained weights, or their moving average (runs trained with trainer.ema_decay)",
    )
    parser.add_argument("--out", type=Path, help=f"records folder; default <run>/{RECORDS_DIR}/ (results/runs: for the report)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    with user_errors_exit():
        evaluate_run(parse_args(argv))


if __name__ == "__main__":
    main()
