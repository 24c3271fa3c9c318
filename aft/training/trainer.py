"""The training loop behind ``train.py``.

One optimizer update consumes ``trainer.batch_size`` samples (the global batch), split over
``world_size`` processes and ``accumulation`` micro-batches of ``trainer.micro_batch_size``
each, so the run does not depend on the number of GPUs. Every ``checkpoint_every`` updates
(and at the end, and on a preemption signal: ``preemption.py``) rank 0 writes an atomic checkpoint
(``resume.py``: the model, optimizer, grad scaler, every rank's RNG states, the data position),
but only of good weights (``loss_guard.py``); relaunching the same command resumes from it and
continues the same loss curve. With ``trainer.ema_decay`` an exponential moving average of the
weights (timm's ``ModelEmaV3``) is updated after every update, checkpointed under ``model_ema``
and evaluated beside the raw weights (``<split>_ema_<metric>``). Every ``eval_every`` updates the
data module's ``valid_split`` is evaluated on ``eval_batches x eval_batch_size`` evenly spaced
samples (the same ones for any number of processes), after that step's checkpoint; at the end every
eval split is evaluated whole, written to ``final.json`` and printed. A finished run relaunched prints its final metrics
and stops. Each start appends a line to ``provenance.jsonl`` in the run folder: the commit,
device, torch version, launch command and overrides, world size and the step it started from.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from aft.position_bias import sparsity_regularizer
from aft.provenance import provenance
from aft.training import checkpoint as ckpt
from aft.training import resume
from aft.training.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown,
)
from aft.training.evaluate import autocast, evaluate, lm_nll
from aft.training.logger import MetricLogger
from aft.training.loss_guard import LossGuard
from aft.training.preemption import Preemption

PROVENANCE_FILE = "provenance.jsonl"
FINAL_FILE = "final.json"  # the final evaluation of every eval split, written once the run is done
EMA_KEY = "model_ema"  # the checkpoint's exponential moving average of the weights (trainer.ema_decay)
DIVERGED_FILE = "diverged.json"  # in checkpoints/: where a resume from last.pt became non-finite


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def _batch_plan(cfg: DictConfig, dist: DistInfo) -> tuple[int, int]:
    """``(micro_batch_size, accumulation)`` for the global ``trainer.batch_size``."""
    global_batch = cfg.trainer.batch_size
    micro = cfg.trainer.micro_batch_size or global_batch // dist.world_size
    if micro < 1 or global_batch % (dist.world_size * micro):
        raise ValueError(
            f"trainer.batch_size={global_batch} must be a multiple of world_size ({dist.world_size}) x "
            f"trainer.micro_batch_size ({micro}): change one of them"
        )
    return micro, global_batch // (dist.world_size * micro)


def _train_loss(model: nn.Module, batch: Any, data: Any, mixup: Any, device: torch.device) -> tuple[torch.Tensor, int]:
    """Mean training objective (nats) of one micro-batch and the number of targets/images in it.

    Images: cross-entropy with the data's label smoothing, against Mixup/CutMix's soft targets
    (which carry the smoothing) when ``mixup`` is given.
    """
    if data.task == "lm":
        tokens = batch.to(device, non_blocking=True)
        return lm_nll(model, tokens).mean(), tokens[:, 1:].numel()
    images, labels = (t.to(device, non_blocking=True) for t in batch)
    if mixup is not None:
        images, labels = mixup(images, labels)
    logits = model(images).float()
    if labels.dim() == 2:  # soft targets from Mixup/CutMix with label smoothing
        return torch.sum(-labels * F.log_softmax(logits, dim=-1), dim=-1).mean(), images.shape[0]
    return F.cross_entropy(logits, labels, label_smoothing=data.label_smoothing), images.shape[0]


def check_model_fits_data(model: nn.Module, data: Any) -> None:
    """A decoder must embed every input token and cover the data's sequence length; a classifier
    must have one output per class of the data."""
    if data.task != "lm":
        classes = getattr(model, "num_classes", None)
        if classes is not None and classes != data.num_classes:
            raise ValueError(
                f"the data has {data.num_classes} classes but the model has {classes} outputs: "
                f"set model.num_classes={data.num_classes} (or data.num_classes={classes})"
            )
        return
    rows, seq_len = getattr(model, "input_vocab_size", None), getattr(model, "seq_len", None)
    if rows is not None and rows < data.input_vocab_size:
        raise ValueError(
            f"the data has {data.input_vocab_size} input tokens but the model embeds {rows}: "
            f"set model.input_vocab_size={data.input_vocab_size}"
        )
    if seq_len is not None and seq_len < data.seq_len:
        raise ValueError(
            f"data.seq_len={data.seq_len} exceeds model.seq_len={seq_len}: set model.seq_len=${{data.seq_len}}"
        )


def train(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; returns the final evaluation (rank 0's view).

    ``overrides`` are the command line's Hydra overrides, recorded in ``provenance.jsonl``.
    """
    dist = init_distributed(cfg.trainer.device)
    try:
        return _train(cfg, run_dir, dist, list(overrides))
    finally:
        shutdown()


def _train(cfg: DictConfig, run_dir: Path, dist: DistInfo, overrides: list[str]) -> dict[str, Any]:
    preemption = Preemption()  # first: a signal while the data and model load stops after the first step
    if not dist.is_main:
        logging.getLogger("data").setLevel(logging.WARNING)  # the data record is logged by rank 0 only
    data = instantiate(cfg.data)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and at every launch
    model = instantiate(cfg.model)
    check_model_fits_data(model, data)
    checkpoint_dir = run_dir / "checkpoints"
    resume_from = resume.find_resume(cfg.trainer.resume, checkpoint_dir)
    _refuse_known_divergence(cfg, checkpoint_dir, resume_from)
    if resume_from is None and cfg.get("model_init") is not None:
        instantiate(cfg.model_init)(model)  # e.g. Table 8 "ft": weights from a pretrained DeiT
    model.to(dist.device)
    optimizer = instantiate(cfg.optim)(model)
    micro, accumulation = _batch_plan(cfg, dist)
    steps_per_epoch = len(data.train_dataloader(micro, dist.rank, dist.world_size, cfg.seed, 0)) // accumulation
    if steps_per_epoch == 0:
        raise ValueError(f"an epoch holds fewer than trainer.batch_size={cfg.trainer.batch_size} samples: lower it")
    total_steps = cfg.trainer.max_steps or cfg.trainer.epochs * steps_per_epoch
    scheduler = instantiate(cfg.schedule)(optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    scaler = torch.amp.GradScaler(dist.device.type, enabled=cfg.trainer.precision == "fp16")
    guard = LossGuard(cfg.trainer.divergence_factor)
    config = resume.resolved(cfg)
    position, notes = resume.Position(), []

    if resume_from is not None:
        state = ckpt.load(resume_from)
        fix = "resume it with the model.* config it was trained with, or start over with trainer.resume=none"
        ckpt.load_weights(model, state, resume_from, fix)
        resume.load_optimizer(optimizer, state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        guard.load_state_dict(state.get("loss_guard", {}))
        saved_position = resume.Position(state["step"], state["epoch"], state["batch_in_epoch"])
        position = resume.rescale_position(saved_position, state, micro, dist.world_size)
        notes.append(resume.restore_rng(state["rng"], dist, cfg.seed, position.step))
        changed = resume.changed_keys(state.get("config"), config)
        if changed:
            notes.append(f"resumed with changed {', '.join(changed)}: applied from step {position.step}")
        scheduler.step_update(position.step)
    else:
        ckpt.seed_all(cfg.seed + dist.rank)  # per-rank dropout and Mixup streams, the same at every launch
    ema = ModelEmaV3(model, decay=cfg.trainer.ema_decay) if cfg.trainer.ema_decay else None
    if ema is not None and resume_from is not None:
        if EMA_KEY in state:
            ckpt.load_weights(ema.module, state, resume_from, fix, key=EMA_KEY)
        else:
            notes.append(f"{resume_from} holds no EMA weights: the average starts from the resumed weights")

    final_file = run_dir / FINAL_FILE
    if position.step >= total_steps and final_file.exists():
        final = json.loads(final_file.read_text())
        if dist.is_main:
            print(f"{run_dir} finished at step {position.step}; its final evaluation:", flush=True)
            _print_final(final)
        return final

    train_model: nn.Module = model
    if cfg.trainer.compile:
        train_model = torch.compile(train_model, mode=cfg.trainer.compile_mode)
    if dist.world_size > 1:
        train_model = DistributedDataParallel(
            train_model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None
        )

    logger = None
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        logger = MetricLogger(
            run_dir, cfg.logger.wandb_mode, cfg.logger.project, run_dir.name, config, resume_step=position.step
        )
        (run_dir / "data.json").write_text(_json(data.describe()))
        with open(run_dir / PROVENANCE_FILE, "a") as starts:  # one line per start: resumes may run other code
            start = {
                **provenance(dist.device),
                **_launch(overrides),
                "world_size": dist.world_size,
                "start_step": position.step,
            }
            starts.write(json.dumps(start) + "\n")
        if resume_from is not None:
            print(f"resumed from {resume_from} at step {position.step}", flush=True)
        for note in filter(None, notes):
            print(f"note: {note}", flush=True)

    mixup = data.mixup_fn() if data.task == "classification" else None
    progress = tqdm(total=total_steps, initial=position.step, disable=not dist.is_main, dynamic_ncols=True)
    window_start, window_samples, window_steps = time.perf_counter(), 0, 0
    saved_step = position.step if resume_from is not None else -1
    if dist.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dist.device)

    def save() -> None:
        """Checkpoint the current step once, if its weights are good (``loss_guard.py``)."""
        nonlocal saved_step
        if saved_step == position.step:
            return
        good = guard.close_window()
        rng = all_gather_objects(ckpt.rng_state())
        if dist.is_main and good:
            extra = {
                **({EMA_KEY: ema.module.state_dict()} if ema is not None else {}),
                "loss_guard": guard.state_dict(),
                "config": config,
                "micro_batch_size": micro,
                "world_size": dist.world_size,
            }
            ckpt.save_atomic(resume.training_state(model, optimizer, scaler, position, rng, extra), checkpoint_dir)
        elif dist.is_main:
            print(
                f"warning: step {position.step}: the mean training loss since the last checkpoint is more than "
                f"trainer.divergence_factor={guard.factor} x the best; not checkpointed, "
                f"{checkpoint_dir / ckpt.LAST} keeps the last good weights",
                flush=True,
            )
        saved_step = position.step
        barrier()

    try:
        while position.step < total_steps:
            loader = data.train_dataloader(micro, dist.rank, dist.world_size, cfg.seed, position.epoch)
            batches = iter(resume.resume_loader(loader, position.batch_in_epoch))
            for _ in range((len(loader) - position.batch_in_epoch) // accumulation):
                train_model.train()
                loss_sum = torch.zeros((), device=dist.device)
                for micro_step in range(accumulation):
                    sync = micro_step == accumulation - 1 or dist.world_size == 1
                    context = train_model.no_sync() if not sync else nullcontext()
                    with context, autocast(dist.device, cfg.trainer.precision):
                        loss, samples = _train_loss(train_model, next(batches), data, mixup, dist.device)
                        total = loss
                        if cfg.trainer.sparsity_weight:
                            total = total + cfg.trainer.sparsity_weight * sparsity_regularizer(model)  # Eq. 9
                        scaler.scale(total / accumulation).backward()
                    loss_sum += loss.detach()
                    window_samples += samples * dist.world_size
                # one all-reduce: the mean loss over ranks and whether any rank was signalled
                reduced = all_reduce_sum(torch.stack([loss_sum / accumulation, _flag(preemption.requested, dist)]))
                mean_loss, stop_requested = reduced[0] / dist.world_size, bool(reduced[1] > 0)
                if not torch.isfinite(mean_loss):
                    _diverged(cfg, checkpoint_dir, position.step + 1, resume_from, dist)
                guard.add(mean_loss)
                if cfg.trainer.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                position.step += 1
                if ema is not None:
                    ema.update(model, step=position.step)
                position.batch_in_epoch += accumulation
                window_steps += 1
                scheduler.step_update(position.step)
                progress.update(1)

                if logger is not None and position.step % cfg.trainer.log_every == 0:
                    elapsed = time.perf_counter() - window_start
                    metrics = _train_metrics(
                        mean_loss.item(), data, elapsed, window_steps, window_samples, optimizer, dist
                    )
                    logger.log(position.step, metrics)
                    progress.set_postfix(loss=f"{metrics['train_loss']:.3f}")
                    window_start, window_samples, window_steps = time.perf_counter(), 0, 0
                if position.step % cfg.trainer.checkpoint_every == 0 or stop_requested:
                    save()
                periodic_eval = cfg.trainer.eval_every and position.step % cfg.trainer.eval_every == 0
                if periodic_eval and position.step < total_steps and not stop_requested:  # the last step: below
                    limit = cfg.trainer.eval_batches and cfg.trainer.eval_batches * cfg.trainer.eval_batch_size
                    _log_evals(model, ema, data, cfg, dist, logger, position.step, data.valid_split, limit)
                if stop_requested:
                    preemption.stop(position.step)  # exits non-zero (aft/training/preemption.py)
                if position.step >= total_steps:
                    break
            else:
                position.epoch += 1
                position.batch_in_epoch = 0

        save()
        progress.close()
        final: dict[str, Any] = {}
        for split in data.eval_splits:
            final.update(_log_evals(model, ema, data, cfg, dist, logger, position.step, split, None))
        if dist.is_main:
            final_file.write_text(_json(final))
            _print_final(final)
        return final
    finally:
        progress.close()
        if logger is not None:
            logger.close()


def _launch(overrides: list[str]) -> dict[str, Any]:
    """How this process was launched: ``launcher`` (python, torchrun or submitit), the overrides, and
    for torchrun the command a user would type (``provenance``'s ``command`` is the Python argv)."""
    record: dict[str, Any] = {"overrides": overrides, "launcher": "python"}
    if "TORCHELASTIC_RUN_ID" in os.environ:
        nodes, per_node = os.environ.get("GROUP_WORLD_SIZE", "1"), os.environ.get("LOCAL_WORLD_SIZE", "1")
        record["launcher"] = "torchrun"
        record["command"] = f"torchrun --nnodes={nodes} --nproc_per_node={per_node} " + shlex.join(sys.argv)
    elif "SUBMITIT_EXECUTOR" in os.environ:
        record["launcher"] = "submitit"
        record["command"] = "python train.py " + shlex.join(overrides)
    if "SLURM_JOB_ID" in os.environ:
        record["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return record


def _refuse_known_divergence(cfg: DictConfig, checkpoint_dir: Path, resume_from: Path | None) -> None:
    """Relaunching the same command after a non-finite loss would repeat it: say what to change."""
    marker = checkpoint_dir / DIVERGED_FILE
    if cfg.trainer.resume == "auto" and resume_from is not None and marker.exists():
        record = json.loads(marker.read_text())
        raise NonFiniteLossError(
            f"this run's loss became non-finite at step {record['step']}, after its last good checkpoint "
            f"{resume_from} (step {record['resumed_step']}), and the same command would repeat it: "
            f"{_divergence_fix(cfg, resume_from)}"
        )


def _diverged(cfg: DictConfig, checkpoint_dir: Path, step: int, resume_from: Path | None, dist: DistInfo) -> None:
    """Record where the loss became non-finite and stop with the fix."""
    last = checkpoint_dir / ckpt.LAST
    if dist.is_main and last.exists():
        resumed_step = ckpt.load(last)["step"]
        (checkpoint_dir / DIVERGED_FILE).write_text(json.dumps({"step": step, "resumed_step": resumed_step}) + "\n")
    where = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
    raise NonFiniteLossError(f"non-finite training loss at step {step}; {where}: {_divergence_fix(cfg, last)}")


def _divergence_fix(cfg: DictConfig, checkpoint: Path) -> str:
    changes = ["a lower optim.lr"]
    if not cfg.trainer.grad_clip:
        changes.append("trainer.grad_clip=1.0")
    if cfg.trainer.precision != "fp32":
        changes.append("trainer.precision=fp32")
    return f"relaunch with {' or '.join(changes)} and trainer.resume={checkpoint}"


def _print_final(final: dict[str, Any]) -> None:
    for split, result in final.items():
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
        print(f"final {split}: {json.dumps(shown)}", flush=True)


def _flag(value: object, dist: DistInfo) -> torch.Tensor:
    return torch.tensor(float(bool(value)), device=dist.device)


def _train_metrics(
    loss: float, data: Any, elapsed: float, steps: int, samples: int, optimizer, dist: DistInfo
) -> dict[str, float]:
    metrics = {
        "train_loss": loss,
        "lr": optimizer.param_groups[0]["lr"],
        "iters_per_sec": steps / elapsed,
    }
    if data.task == "lm":
        metrics["train_bits"] = loss / math.log(2)
        metrics["tokens_per_sec"] = samples / elapsed
    else:
        metrics["images_per_sec"] = samples / elapsed
    if dist.device.type == "cuda":
        metrics["gb_per_gpu"] = torch.cuda.max_memory_allocated(dist.device) / 1e9
    return metrics


def _log_eval(
    model: nn.Module,
    data: Any,
    cfg: DictConfig,
    dist: DistInfo,
    logger: MetricLogger | None,
    step: int,
    split: str,
    limit: int | None,
    name: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``split`` (``limit`` evenly spaced samples, or all) and log it as ``<name>_<metric>``."""
    loader = data.eval_dataloader(split, cfg.trainer.eval_batch_size, dist.rank, dist.world_size, limit=limit)
    label = None if limit is not None else name or split  # a bar over whole splits only
    result = evaluate(model, loader, data.task, dist, cfg.trainer.precision, progress=label)
    result["complete"] = limit is None
    if logger is not None:
        logger.log(step, {f"{name or split}_{key}": value for key, value in result.items()})
    return result


def _log_evals(
    model: nn.Module,
    ema: ModelEmaV3 | None,
    data: Any,
    cfg: DictConfig,
    dist: DistInfo,
    logger: MetricLogger | None,
    step: int,
    split: str,
    limit: int | None,
) -> dict[str, dict[str, Any]]:
    """``{split: result}`` of the raw weights and, with an EMA, ``{split}_ema`` of the averaged ones."""
    results = {split: _log_eval(model, data, cfg, dist, logger, step, split, limit)}
    if ema is not None:
        results[f"{split}_ema"] = _log_eval(ema.module, data, cfg, dist, logger, step, split, limit, f"{split}_ema")
    return results


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str) + "\n"
