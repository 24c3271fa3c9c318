"""Rehearse the whole life of every experiment config on tiny files in the real data formats.

    python scripts/rehearse.py        # every configs/experiment/*.yaml and mini/*/*.yaml (aft-rehearse)
    python scripts/rehearse.py --ci   # the CI subset (see ci_subset)
    python scripts/rehearse.py --only enwik8_aft_local32_l24_d256 --keep /tmp/rehearsal
    python scripts/rehearse.py --record results/rehearsal/full.json

Each experiment is composed as ``train.py experiment=<name>`` composes it, then shrunk by overrides
(``shrink``): depth, width, sequence length, image size, steps and batch get small; what defines the
row stays (backbone, mixer and its options, data module, task, optimizer, schedule, precision,
augmentation, regularizers, ``model_init``). A miniature (``configs/experiment/mini/``, already small,
on packaged data) keeps its model and data and only gets the shorter run. Its life, as a user runs
it, in its own folder:

1. ``python train.py experiment=<name> <overrides>`` (run as ``python -m aft.commands.train``; periodic
   evaluation every ``EVAL_EVERY`` and a checkpoint every ``CHECKPOINT_EVERY`` steps), SIGKILLed (its
   whole process group) as soon as its ``metrics.jsonl`` shows step ``KILL_AT``;
2. the same command again: it resumes from the last checkpoint; the training losses it logs for the
   steps logged before the kill must equal them (relative 1e-5), every step 1..``STEPS`` must be
   logged, every periodic evaluation and the final evaluation of every eval split must be recorded;
3. ``python eval.py run=<run>``: one record per eval split, equal to the run's final evaluation;
4. once for all: ``python scripts/compare.py`` over the records; every experiment must be in the report.

The data files (``data.formats``) are written once: CIFAR10 pickles and parquet, an ImageFolder of
JPEGs and the ImageNet parquet copy, enwik8 as zip and raw; experiments of one data module take
the formats in turn. The fine-tune row gets a shrunk DeiT state dict of its shrunk shape. One line
is printed per experiment; the exit status is 1 if any failed. It needs ``aft[parquet,figures]``
(the parquet files, compare's figures).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from aft.experiments import compose_experiment, experiment_names
from aft.extras import require
from aft.miniature import miniature_names
from aft.provenance import code_revision
from aft.resources import PAPER_TABLES, checkout, project_path
from data import formats

STEPS = 16  # optimizer updates per rehearsal run
CHECKPOINT_EVERY = 4
EVAL_EVERY = 4
KILL_AT = CHECKPOINT_EVERY + 1  # the first step after a checkpoint: the resume must redo it
LENGTH_FACTOR = 16  # LM sequence length T -> max(MIN_SEQ_LEN, T / 16); windows and chunks scale alike
MIN_SEQ_LEN = 64
LM_DEPTH, LM_DIM, LM_BATCH = 2, 32, 4
VIT_DEPTH, VIT_DIM, VIT_BATCH = 2, 48, 8  # depth 2: drop-path's linear rule gives the last block a nonzero rate
IMAGE_FACTOR = 4  # image side / 4 with the patch side / 2: the patch grid halves (224 -> 56 px, 7 x 7 patches)
BIAS_DIM = 16  # factorized position-bias rank d' (a dense bias, null, stays dense)
MAX_WORKERS = 2
ENWIK8_SPLIT = (4096, 1024, 1024)
IMAGES_PER_CLASS = {"train": 8, "val": 2}
CIFAR_PER_BATCH, CIFAR_TEST = 8, 8  # 40 train images: 10 updates of 4 per epoch
DEIT_MODEL = "deit_base_patch16_384"  # the weights init_from_deit documents for Table 8 "ft"
TOLERANCE = 1e-5
PROCESS_TIMEOUT = 600  # seconds per train.py / eval.py launch
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "HF_DATASETS_OFFLINE": "1"}
if checkout() is not None:  # the commands below run this checkout's code, as python train.py in it would
    ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout()), os.environ.get("PYTHONPATH")]))


class StageError(Exception):
    """One stage of an experiment's life failed; the message is the one-line cause."""

    def __init__(self, stage: str, cause: str) -> None:
        super().__init__(f"{stage}: {cause}")
        self.stage, self.cause = stage, cause


@dataclass(frozen=True)
class Fixtures:
    """Folders of the tiny data files, one per format."""

    root: Path

    def data_overrides(self, data_target: str, variant: int) -> list[str]:
        """``data.*`` overrides that point a data module at its files; ``variant`` picks the format."""
        kind = data_target.rsplit(".", 1)[-1]
        if kind == "Cifar10":
            source = ("torchvision", "parquet")[variant % 2]
            train, test = 5 * CIFAR_PER_BATCH, CIFAR_TEST
            return [
                f"data.root={self.root / ('cifar10_' + source)}",
                f"data.source={source}",
                "data.verify_md5=false",
                f"data.expected_train={train}",
                f"data.expected_test={test}",
                f"data.hf_cache_dir={self.root / 'hf_cache'}",
            ]
        if kind == "ImageNet":
            source = ("folder", "parquet")[variant % 2]
            return [
                f"data.root={self.root / ('imagenet_' + source)}",
                f"data.source={source}",
                f"data.num_classes={len(formats.IMAGENET_CLASSES)}",
                f"model.num_classes={len(formats.IMAGENET_CLASSES)}",
                f"data.hf_cache_dir={self.root / 'hf_cache'}",
            ]
        if kind == "Enwik8":
            source = ("zip", "raw")[variant % 2]
            return [
                f"data.root={self.root / ('enwik8_' + source)}",
                f"data.split_bytes=[{','.join(map(str, ENWIK8_SPLIT))}]",
            ]
        return []  # embedded data: no files


def write_fixtures(root: Path) -> Fixtures:
    """Write every format once under ``root``."""
    datasets = require("datasets", "the rehearsal's parquet files")

    datasets.disable_progress_bars()
    rng = np.random.default_rng(0)
    rows = formats.write_cifar_batches(root / "cifar10_torchvision", rng, CIFAR_PER_BATCH, CIFAR_TEST)
    formats.write_cifar_parquet(root / "cifar10_parquet", rows, rng)
    formats.write_image_folder(root / "imagenet_folder", IMAGES_PER_CLASS, rng)
    formats.write_imagenet_parquet(root / "imagenet_parquet", IMAGES_PER_CLASS, rng)
    text = rng.integers(0, 256, size=sum(ENWIK8_SPLIT), dtype=np.uint8).tobytes()
    formats.write_enwik8_zip(root / "enwik8_zip", text)
    formats.write_enwik8_raw(root / "enwik8_raw", text)
    return Fixtures(root)


# ---------------------------------------------------------------- shrinking


def _target(node: Any) -> str:
    return str(node.get("_target_", "")) if isinstance(node, DictConfig) else ""


def _odd_kernel(kernel: int) -> int:
    """A kernel side for the halved patch grid: ``2 ceil((k - 1) / 4) + 1`` (3 -> 3, 7 -> 5, 27 -> 15)."""
    return 2 * math.ceil((kernel - 1) / 4) + 1


def _scaled_length(length: int, ratio: float, floor: int) -> int:
    """``length * ratio`` rounded, at least ``min(length, floor)``: short windows keep their size."""
    return max(round(length * ratio), min(length, floor))


def _lm_overrides(cfg: DictConfig) -> list[str]:
    """Decoder LM: depth, width and (where the data sets it) the sequence length, with the mixer's lengths."""
    model, mixer = cfg.model, cfg.model.mixer
    overrides = [f"model.depth={LM_DEPTH}", f"model.dim={LM_DIM}", f"trainer.batch_size={LM_BATCH}"]
    old_len = int(cfg.data.get("seq_len") or model.seq_len)
    new_len = old_len
    if "seq_len" in cfg.data:  # enwik8 / embedded text; CIFAR10's 3072 sub-pixels are the image
        new_len = max(MIN_SEQ_LEN, old_len // LENGTH_FACTOR)
        overrides.append(f"data.seq_len={new_len}")
    ratio = new_len / old_len
    for key in ("window", "chunk_size"):
        if mixer.get(key) is not None:
            overrides.append(f"model.mixer.{key}={min(new_len, _scaled_length(int(mixer[key]), ratio, 4))}")
    return overrides


def _vit_geometry(cfg: DictConfig, patch: int) -> tuple[int, int, list[str]]:
    """``(image side, patch grid side, data overrides)`` of the shrunk images."""
    image = int(cfg.data.image_size) // IMAGE_FACTOR
    overrides = [f"data.image_size={image}", f"trainer.batch_size={VIT_BATCH}"]
    if cfg.data.get("eval_image_size"):
        overrides.append(f"data.eval_image_size={int(cfg.data.eval_image_size) // IMAGE_FACTOR}")
    return image, image // patch, overrides


def _vit_overrides(cfg: DictConfig) -> list[str]:
    """Our ViT: depth, width, patch and image halved/quartered; the mixer's shapes follow the grid."""
    model, mixer = cfg.model, cfg.model.mixer
    patch = int(model.patch_size) // 2
    image, grid, overrides = _vit_geometry(cfg, patch)
    overrides += [
        f"model.depth={VIT_DEPTH}",
        f"model.dim={VIT_DIM}",
        f"model.patch_size={patch}",
        f"model.img_size={image}",
    ]
    if mixer.get("kernel_size") is not None:  # AFT-conv: heads split the channels; keep channels per head
        overrides += [
            f"model.mixer.kernel_size={_odd_kernel(int(mixer.kernel_size))}",
            f"model.mixer.heads={max(1, int(mixer.heads) * VIT_DIM // int(model.dim))}",
        ]
    if mixer.get("grid_size") is not None:
        overrides.append(f"model.mixer.grid_size=[{grid},{grid}]")
    if mixer.get("seq_len") is not None:  # AFT-full over the patch tokens (+ the class token)
        overrides.append(f"model.mixer.seq_len={grid * grid + int(bool(model.class_token))}")
    return overrides


def _timm_overrides(cfg: DictConfig) -> list[str]:
    """A timm zoo model, shrunk through its constructor's keyword arguments."""
    name = str(cfg.model.model_name)
    overrides: list[str] = []
    if name.startswith("deit"):
        patch = int(name.split("patch")[1].split("_")[0]) // 2
        image, _, data = _vit_geometry(cfg, patch)
        return (
            overrides
            + data
            + [
                f"+model.img_size={image}",
                f"+model.patch_size={patch}",
                f"+model.embed_dim={VIT_DIM}",
                f"+model.depth={VIT_DEPTH}",
            ]
        )
    if name.startswith("resnet"):
        return (
            overrides
            + _vit_geometry(cfg, 1)[2]
            + [
                "+model.layers=[1,1,1,1]",
                "+model.channels=[8,16,32,64]",
                "+model.stem_width=8",  # 1 block a stage, 1/8 width
            ]
        )
    raise ValueError(f"rehearse.py cannot shrink timm model {name!r}: add its keyword arguments to _timm_overrides")


def _model_shrinker(model: DictConfig) -> Callable[[DictConfig], list[str]]:
    """By the model config's shape: a token decoder (``vocab_size``), a timm zoo model, or a ViT (``patch_size``)."""
    if "vocab_size" in model:
        return _lm_overrides
    if _target(model) == "timm.create_model":
        return _timm_overrides
    if "patch_size" in model:
        return _vit_overrides
    raise ValueError(f"rehearse.py cannot shrink model._target_={_target(model)}: add a rule to _model_shrinker")


def shrink(cfg: DictConfig, model: bool = True) -> list[str]:
    """Overrides that make the composed experiment ``cfg`` tiny while keeping what defines it; with
    ``model=False`` (a miniature, already small) its model and data stay, its run is shortened."""
    overrides = _model_shrinker(cfg.model)(cfg) if model else []
    mixer = cfg.model.get("mixer")
    if model and isinstance(mixer, DictConfig) and mixer.get("bias_dim") is not None:
        overrides.append(f"model.mixer.bias_dim={min(int(mixer.bias_dim), BIAS_DIM)}")
    if cfg.schedule.get("warmup_steps") is not None:
        overrides.append("schedule.warmup_steps=2")
    if cfg.schedule.get("warmup_epochs") is not None:
        overrides.append("schedule.warmup_epochs=1")
    return overrides + [
        f"trainer.max_steps={STEPS}",
        f"trainer.checkpoint_every={CHECKPOINT_EVERY}",
        f"trainer.eval_every={EVAL_EVERY}",
        "trainer.eval_batches=2",
        "trainer.eval_batch_size=4",
        "trainer.log_every=1",
        "trainer.device=cpu",
        "trainer.micro_batch_size=null",
        f"data.num_workers={min(int(cfg.data.num_workers), MAX_WORKERS)}",
    ]


# ---------------------------------------------------------------- the CI subset


def code_paths(cfg: DictConfig) -> set[tuple[Any, ...]]:
    """What of the code an experiment exercises, read from its composed config.

    The model class (a timm model by family), the data module, optimizer, schedule, precision, the
    mixer class, and per mixer option whether it is on/off (booleans) or set/unset (e.g. a dense
    position bias, a Gumbel temperature), the model's boolean switches, the sparsity regularizer,
    a separate evaluation size and a ``model_init``.
    """
    model, mixer = cfg.model, cfg.model.get("mixer")
    family = str(model.model_name).split("_")[0] if "model_name" in model else _target(model)
    paths: set[tuple[Any, ...]] = {
        ("model", family),
        ("data", _target(cfg.data)),
        ("optim", _target(cfg.optim)),
        ("schedule", _target(cfg.schedule)),
        ("precision", cfg.trainer.precision),
        ("sparsity", bool(cfg.trainer.sparsity_weight)),
        ("model_init", _target(cfg.get("model_init"))),
        ("eval_image_size", cfg.data.get("eval_image_size") is not None),
    }
    paths |= {("model", key, value) for key, value in model.items() if isinstance(value, bool)}
    if isinstance(mixer, DictConfig):
        kind = _target(mixer)
        paths.add(("mixer", kind))
        for key, value in mixer.items():
            if key not in ("_target_", "_partial_"):
                paths.add(("mixer", kind, key, value if isinstance(value, bool) else value is not None))
    return paths


def paper_tables(csv_path: Path | None = None) -> dict[str, set[str]]:
    """Experiment name -> the paper tables (and text sections) that report it."""
    tables: dict[str, set[str]] = {}
    with open(csv_path or project_path(PAPER_TABLES), newline="") as file:
        for row in csv.DictReader(file):
            if row["experiment"]:
                tables.setdefault(row["experiment"], set()).add(row["table"])
    return tables


def cost(cfg: DictConfig, overrides: Sequence[str]) -> int:
    """Tokens per sample of the shrunk experiment: its image's 8 x 8 patches, or its sequence length."""
    values = dict(item.lstrip("+").split("=", 1) for item in overrides)
    if "data.image_size" in values:
        return int(values["data.image_size"]) ** 2 // 64
    return int(values.get("data.seq_len", cfg.model.get("seq_len", 0)))


def ci_subset(configs: dict[str, DictConfig], tables: dict[str, set[str]]) -> list[str]:
    """A small set of experiments covering every paper table and every code path (greedy set cover).

    Each step takes the experiment that covers the most uncovered tables and code paths, the
    cheapest (``cost``) on ties, until nothing is left uncovered.
    """
    needs = {name: code_paths(cfg) | {("table", t) for t in tables.get(name, ())} for name, cfg in configs.items()}
    costs = {name: cost(cfg, shrink(cfg)) for name, cfg in configs.items()}
    uncovered = set().union(*needs.values())
    chosen: list[str] = []
    while uncovered:
        best = max(sorted(needs), key=lambda name: (len(needs[name] & uncovered), -costs[name]))
        chosen.append(best)
        uncovered -= needs[best]
    return sorted(chosen)


# ---------------------------------------------------------------- one experiment's life


@dataclass
class Outcome:
    experiment: str
    passed: bool
    seconds: float
    stage: str = ""
    cause: str = ""
    overrides: list[str] = field(default_factory=list)
    resumed_from: int | None = None

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        detail = f"resumed at step {self.resumed_from}" if self.passed else f"{self.stage}: {self.cause}"
        return f"{status}  {self.experiment:<48} {self.seconds:6.1f}s  {detail}"


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    return lines[-1].strip()[:300] if lines else "(no output)"


def read_records(run_dir: Path | None) -> list[dict[str, Any]]:
    """The run's ``metrics.jsonl`` records (a line being written is skipped); none before the run exists."""
    path = run_dir / "metrics.jsonl" if run_dir else None
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


def train_losses(records: Iterable[dict[str, Any]]) -> dict[int, float]:
    """``step -> train_loss`` of metrics records."""
    return {r["step"]: r["train_loss"] for r in records if "train_loss" in r}


def find_run(folder: Path) -> Path | None:
    """The run folder train.py made under ``folder/runs`` (the one holding ``.hydra/config.yaml``)."""
    found = sorted(p.parent.parent for p in (folder / "runs").rglob(".hydra/config.yaml"))
    return found[0] if found else None


def _launch(command: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=cwd, env=ENV, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def run_stage(stage: str, command: list[str], cwd: Path, log: Path) -> None:
    process = _launch(command, cwd, log)
    try:
        returncode = process.wait(timeout=PROCESS_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_tree(process)
        raise StageError(stage, f"timed out after {PROCESS_TIMEOUT} s; log {log}") from None
    if returncode != 0:
        raise StageError(stage, f"exit {returncode}: {_last_line(log)}")


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, read from ``/proc`` (Linux).

    A process group is not enough: torchrun starts each worker in a session of its own, so
    ``os.killpg`` of the launcher's group leaves the workers training.
    """
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL ``process`` and all its descendants at once, as a lost node would end them."""
    for pid in [process.pid, *descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def kill_mid_run(command: list[str], cwd: Path, log: Path) -> tuple[Path, dict[int, float]]:
    """Start training, SIGKILL it and its workers once step ``KILL_AT`` is logged; the run and its losses."""
    process = _launch(command, cwd, log)
    deadline = time.monotonic() + PROCESS_TIMEOUT
    run_dir = None
    while process.poll() is None and time.monotonic() < deadline:
        run_dir = run_dir or find_run(cwd)
        if max(train_losses(read_records(run_dir)), default=0) >= KILL_AT:
            break
        time.sleep(0.02)
    finished = process.poll()
    if finished is None:
        kill_tree(process)
    if finished is not None:
        raise StageError("train", f"exit {finished} before step {KILL_AT}: {_last_line(log)}")
    run_dir = run_dir or find_run(cwd)
    losses = train_losses(read_records(run_dir))
    if run_dir is None or not losses:
        raise StageError("train", f"nothing logged within {PROCESS_TIMEOUT} s: {_last_line(log)}")
    return run_dir, losses


def _check_resume(run_dir: Path, before_kill: dict[int, float]) -> int:
    """The resumed run continued the killed run's curve; returns the step it resumed from."""
    starts = [json.loads(line) for line in (run_dir / "provenance.jsonl").read_text().splitlines() if line.strip()]
    if len(starts) != 2 or starts[1]["start_step"] < CHECKPOINT_EVERY:
        raise StageError("resume", f"starts at steps {[s['start_step'] for s in starts]}: the relaunch did not resume")
    resumed_from = starts[1]["start_step"]
    losses = train_losses(read_records(run_dir))
    missing = sorted(set(range(1, STEPS + 1)) - set(losses))
    if missing:
        raise StageError("resume", f"no train_loss logged for steps {missing}")
    redone = [step for step in before_kill if step > resumed_from]
    if not redone:
        raise StageError(
            "resume", f"killed at step {max(before_kill)} but resumed at {resumed_from}: nothing to compare"
        )
    for step in redone:
        if not math.isclose(losses[step], before_kill[step], rel_tol=TOLERANCE, abs_tol=1e-6):
            raise StageError(
                "resume",
                f"step {step}: loss {losses[step]:.7g} after the resume, {before_kill[step]:.7g} before the kill",
            )
    return resumed_from


def _split_metrics(records: list[dict[str, Any]], step: int, split: str) -> dict[str, Any]:
    prefix = f"{split}_"
    return {k[len(prefix) :]: v for r in records if r["step"] == step for k, v in r.items() if k.startswith(prefix)}


def _check_evaluations(run_dir: Path) -> list[str]:
    """Periodic evaluations at every ``EVAL_EVERY`` step before the last, the final one on every split."""
    records = read_records(run_dir)
    splits = json.loads((run_dir / "data.json").read_text())["eval_splits"]
    for step in range(EVAL_EVERY, STEPS, EVAL_EVERY):
        logged = {k for r in records if r["step"] == step for k in r}
        if not any(k.endswith(("_bits", "_top1", "_loss")) and not k.startswith("train_") for k in logged):
            raise StageError("evaluate", f"no periodic evaluation logged at step {step}")
    for split in splits:
        if not _split_metrics(records, STEPS, split):
            raise StageError("evaluate", f"no final evaluation of split {split!r} at step {STEPS}")
    return splits


def _check_eval_records(run_dir: Path, records_dir: Path, splits: list[str]) -> None:
    """``eval.py``'s record of each split equals the run's final evaluation."""
    final = read_records(run_dir)
    written = [json.loads(p.read_text()) for p in records_dir.glob("*.json")]
    for split in splits:
        mine = [r for r in written if r.get("split") == split]
        if not mine:
            raise StageError("eval.py", f"no record of split {split!r} in {records_dir}")
        logged = _split_metrics(final, STEPS, split)
        for key in ("bits", "top1", "loss"):
            if key in logged and key in mine[-1]["metrics"]:
                if not math.isclose(mine[-1]["metrics"][key], logged[key], rel_tol=TOLERANCE, abs_tol=1e-6):
                    raise StageError(
                        "eval.py", f"{split} {key} {mine[-1]['metrics'][key]:.7g} != the run's final {logged[key]:.7g}"
                    )


def deit_weights(folder: Path, overrides: Sequence[str]) -> Path:
    """A DeiT state dict (``DEIT_MODEL``'s layout) of the shrunk model's shape, for ``model_init``."""
    import timm
    import torch

    values = dict(item.split("=", 1) for item in overrides)
    model = timm.create_model(
        DEIT_MODEL,
        pretrained=False,
        num_classes=int(values["model.num_classes"]),
        img_size=int(values["model.img_size"]),
        patch_size=int(values["model.patch_size"]),
        embed_dim=int(values["model.dim"]),
        depth=int(values["model.depth"]),
    )
    path = folder / f"{DEIT_MODEL}.pth"
    torch.save(model.state_dict(), path)
    return path


def rehearse(name: str, overrides: list[str], folder: Path, records_dir: Path) -> Outcome:
    """Run one experiment's life in ``folder``; the outcome says where it failed and why."""
    start = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    outcome = Outcome(name, False, 0.0, overrides=overrides)
    try:
        if compose_experiment(name).get("model_init") is not None:
            overrides = [*overrides, f"model_init.weights={deit_weights(folder, overrides)}"]
            outcome.overrides = overrides
        train = [sys.executable, "-m", "aft.commands.train", f"experiment={name}", *overrides]
        run_dir, before_kill = kill_mid_run(train, folder, folder / "train_killed.log")
        if not (run_dir / "checkpoints" / "last.pt").exists():
            raise StageError("checkpoint", f"no checkpoints/last.pt in {run_dir} at step {max(before_kill)}")
        run_stage("resume", train, folder, folder / "train_resumed.log")
        outcome.resumed_from = _check_resume(run_dir, before_kill)
        splits = _check_evaluations(run_dir)
        mine = records_dir / name
        evaluate = [sys.executable, "-m", "aft.commands.eval", f"run={run_dir}", f"out={mine}"]
        run_stage("eval.py", evaluate, folder, folder / "eval.log")
        _check_eval_records(run_dir, mine, splits)
        outcome.passed = True
    except StageError as error:
        outcome.stage, outcome.cause = error.stage, error.cause
    except Exception as error:  # a defect of the rehearsal itself: still one line, the run goes on
        outcome.stage, outcome.cause = "rehearse.py", f"{type(error).__name__}: {error}"
    outcome.seconds = time.monotonic() - start
    return outcome


def check_compare(outcomes: list[Outcome], records_dir: Path, work: Path) -> None:
    """``compare.py`` reads every record: each record of an experiment of the paper's tables must be
    named in its report (a shrunk run is listed as a modified config); otherwise that experiment
    fails at this stage."""
    merged = work / "records"
    merged.mkdir(exist_ok=True)
    for path in records_dir.glob("*/*.json"):
        (merged / path.name).write_bytes(path.read_bytes())
    report = work / "REPORT.md"
    command = [
        sys.executable,
        "-m",
        "aft.commands.compare",
        "--runs",
        str(merged),
        "--report",
        str(report),
        "--figures",
        str(work / "figures"),
    ]
    try:
        run_stage("compare.py", command, work, work / "compare.log")
    except StageError as error:
        failure: StageError | None = error
    else:
        failure = None
    text = report.read_text() if failure is None else ""
    tables = paper_tables()
    for outcome in outcomes:
        if not outcome.passed:
            continue
        unread = [p.name for p in (records_dir / outcome.experiment).glob("*.json") if p.name not in text]
        if failure is not None:
            outcome.passed, outcome.stage, outcome.cause = False, failure.stage, failure.cause
        elif outcome.experiment in tables and unread:
            outcome.passed, outcome.stage, outcome.cause = False, "compare.py", f"{unread[0]} not in {report}"


# ---------------------------------------------------------------- main


def experiment_overrides(cfg: DictConfig, fixtures: Fixtures, variant: int = 0, model: bool = True) -> list[str]:
    """The composed experiment's shrink plus the overrides pointing it at its data files."""
    return shrink(cfg, model) + fixtures.data_overrides(_target(cfg.data), variant)


def plan(names: Sequence[str], fixtures: Fixtures) -> dict[str, list[str]]:
    """Each experiment's overrides; experiments of one data module take its formats in turn."""
    turns: dict[str, int] = {}
    overrides = {}
    miniatures = set(miniature_names())
    for name in names:
        cfg = compose_experiment(name)
        data = _target(cfg.data)
        turns[data] = turns.get(data, -1) + 1
        overrides[name] = experiment_overrides(cfg, fixtures, turns[data], model=name not in miniatures)
    return overrides


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ci", action="store_true", help="only the CI subset (ci_subset)")
    parser.add_argument("--only", nargs="+", metavar="EXPERIMENT", help="these experiments")
    parser.add_argument("--list", action="store_true", help="print the selected experiments and their overrides")
    parser.add_argument("--jobs", type=int, default=2, help="experiments rehearsed at once (default 2)")
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one, removed)")
    parser.add_argument("--record", type=Path, help="write the outcomes as JSON (command, date, commit)")
    return parser.parse_args(argv)


def select(args: argparse.Namespace) -> list[str]:
    names = experiment_names() + miniature_names()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(
                f"error: no configs/experiment/{unknown[0]}.yaml: pick from python scripts/rehearse.py --list"
            )
        return sorted(args.only)
    if args.ci:  # the paper rows: a miniature adds no code path but its packaged data (tests/data)
        return ci_subset({name: compose_experiment(name) for name in experiment_names()}, paper_tables())
    return names


def run_all(names: Sequence[str], work: Path, jobs: int) -> list[Outcome]:
    fixtures = write_fixtures(work / "data")
    overrides = plan(names, fixtures)
    records_dir = work / "eval_records"
    outcomes = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [
            pool.submit(rehearse, name, overrides[name], work / "experiments" / name, records_dir) for name in names
        ]
        for future in as_completed(futures):
            outcomes.append(future.result())
            print(outcomes[-1].line(), flush=True)
    check_compare(outcomes, records_dir, work)
    return sorted(outcomes, key=lambda o: o.experiment)


def cpu_seconds() -> float:
    """User + system CPU seconds of every process the rehearsal waited for (train.py, eval.py, workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_record(path: Path, argv: Sequence[str], outcomes: list[Outcome], seconds: float) -> None:
    record = {
        "command": " ".join(["python", "scripts/rehearse.py", *argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": code_revision(),
        "wall_seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds(), 1),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "passed": sum(o.passed for o in outcomes),
        "failed": sum(not o.passed for o in outcomes),
        "experiments": [{**asdict(o), "seconds": round(o.seconds, 1)} for o in outcomes],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/rehearse.py`` / ``aft-rehearse``: rehearse the selected experiments; 1 if any failed."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    names = select(args)
    if args.list:
        with tempfile.TemporaryDirectory() as tmp:
            for name, overrides in plan(names, Fixtures(Path(tmp))).items():
                print(name, " ".join(overrides))
        return 0
    start = time.monotonic()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        outcomes = run_all(names, args.keep, args.jobs)
    else:
        with tempfile.TemporaryDirectory(prefix="rehearsal-") as tmp:
            outcomes = run_all(names, Path(tmp), args.jobs)
    seconds = time.monotonic() - start
    failed = [o for o in outcomes if not o.passed]
    print(
        f"{len(outcomes) - len(failed)} of {len(outcomes)} experiments passed in {seconds:.0f} s "
        f"({cpu_seconds():.0f} CPU s)",
        flush=True,
    )
    for outcome in failed:
        print(outcome.line(), flush=True)
    if args.record:
        write_record(args.record, argv, outcomes, seconds)
    return 1 if failed else 0


if __name__ == "__main__":  # python -m aft.commands.rehearse
    sys.exit(main())
