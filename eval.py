"""Evaluate a trained run on whole splits and write one JSON record per evaluation.

    python eval.py runs/default                           # every eval split of the run's data
    python eval.py runs/<run> --splits test --speed       # + Table 7 inference speed/memory (batch 256)
    python eval.py runs/<run>/checkpoints/last.pt data.eval_image_size=384   # AFT-conv at 384 (§5.3)

The run's saved config (``<run>/.hydra/config.yaml``) rebuilds the model and data; trailing
``key=value`` arguments override it (e.g. a resolution or a data path). Records go to
``results/runs/<experiment>-<config hash>-<split>[-<overrides hash>].json`` with the metrics,
device and command. Enwik8 scores every byte, CIFAR10 every sub-pixel, ImageNet every image.
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

from aft.provenance import provenance
from aft.runs import load_config, locate
from aft.training import checkpoint as ckpt
from aft.training.distributed import DistInfo
from aft.training.evaluate import evaluate, inference_speed


def config_hash(cfg: DictConfig) -> str:
    """First 12 hex digits of the SHA-256 of the resolved config."""
    text = json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def speed_example(data: Any, batch_size: int) -> torch.Tensor:
    """A batch of inputs of the run's shape: tokens ``(B, T)`` or images ``(B, 3, H, W)``."""
    if data.task == "lm":
        return torch.randint(0, data.vocab_size, (batch_size, data.seq_len))
    images, _ = next(iter(data.eval_dataloader(data.eval_splits[0], 1)))
    return images.expand(batch_size, *images.shape[1:]).contiguous()


def evaluate_run(args: argparse.Namespace) -> list[Path]:
    run_dir, checkpoint = locate(args.run)
    cfg, experiment = load_config(run_dir, args.overrides)
    device = torch.device(args.device)
    data = instantiate(cfg.data)
    model = instantiate(cfg.model)
    state = ckpt.load(checkpoint)
    model.load_state_dict(state["model"])
    model.to(device)
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    precision = args.precision or cfg.trainer.precision
    base = {
        "experiment": experiment,
        "config_hash": config_hash(cfg),
        "run_dir": str(run_dir),
        "checkpoint": str(checkpoint),
        "step": state["step"],
        "overrides": args.overrides,
        "precision": precision,
        **provenance(device),
    }
    speed = None
    if args.speed:
        speed = inference_speed(model, speed_example(data, args.speed_batch_size), device, precision)
    written = []
    for split in args.splits or data.eval_splits:
        loader = data.eval_dataloader(split, args.batch_size or cfg.trainer.eval_batch_size)
        metrics = evaluate(model, loader, data.task, dist, precision)
        if data.task == "lm":
            metrics["unit"] = data.bits_unit
        record = {**base, "split": split, "metrics": {**metrics, **(speed or {})}}
        written.append(_write(record, args.out, args.overrides))
        print(json.dumps({"split": split, **record["metrics"]}), flush=True)
    return written


def _write(record: dict[str, Any], out: Path, overrides: list[str]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    name = f"{record['experiment']}-{record['config_hash']}-{record['split']}"
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
    parser.add_argument("--out", type=Path, default=Path("results/runs"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    evaluate_run(parse_args())
