"""The training loop behind ``train.py``.

One optimizer update consumes ``trainer.batch_size`` samples (the global batch), split over
``world_size`` processes and ``accumulation`` micro-batches of ``trainer.micro_batch_size``
each, so the run does not depend on the number of GPUs. Every ``checkpoint_every`` updates
(and at the end, and on SIGTERM/SIGUSR1 from SLURM) rank 0 writes an atomic checkpoint with
the model, optimizer, grad scaler, scheduler, RNG states and the data position; relaunching
the same command resumes from it and continues the same loss curve. Each start appends a
line to ``provenance.jsonl`` in the run folder: the commit, device, torch version, command,
world size and the step it started from.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from aft.position_bias import sparsity_regularizer
from aft.provenance import provenance
from aft.training import checkpoint as ckpt
from aft.training.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown
from aft.training.evaluate import autocast, evaluate, lm_nll
from aft.training.logger import MetricLogger


PROVENANCE_FILE = "provenance.jsonl"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class Position:
    """Where training stands: optimizer ``step`` and the data position of the next batch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed by this rank


class _Preemption:
    """Turns SIGTERM/SIGUSR1 (SLURM preemption, ``scancel``) into a flag checked after each update.

    After the checkpoint is written, :meth:`hand_over` calls the handler that was installed
    before (submitit's, which requeues the job).
    """

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGUSR1)}

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = signum

    def hand_over(self) -> None:
        previous = self._previous.get(self.requested)
        if callable(previous):
            previous(self.requested, None)


class _SkipSampler(Sampler[int]):
    """The indices of ``sampler`` after the first ``skip`` (resuming mid-epoch)."""

    def __init__(self, sampler: Sampler[int], skip: int) -> None:
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        for i, index in enumerate(self.sampler):
            if i >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def _resume_loader(loader: DataLoader, skip_batches: int) -> DataLoader:
    """``loader`` without its first ``skip_batches`` batches, reading nothing it skips."""
    if skip_batches == 0:
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=_SkipSampler(loader.sampler, skip_batches * loader.batch_size),
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        generator=loader.generator,
    )


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


def _train_loss(
    model: nn.Module, batch: Any, task: str, mixup: Any, device: torch.device
) -> tuple[torch.Tensor, int]:
    """Mean training loss (nats) of one micro-batch and the number of targets/images in it."""
    if task == "lm":
        tokens = batch.to(device, non_blocking=True)
        return lm_nll(model, tokens).mean(), tokens[:, 1:].numel()
    images, labels = (t.to(device, non_blocking=True) for t in batch)
    if mixup is not None:
        images, labels = mixup(images, labels)
    logits = model(images).float()
    if labels.dim() == 2:  # soft targets from Mixup/CutMix with label smoothing
        return torch.sum(-labels * F.log_softmax(logits, dim=-1), dim=-1).mean(), images.shape[0]
    return F.cross_entropy(logits, labels), images.shape[0]


def _state(model: nn.Module, optimizer, scaler, scheduler, position: Position) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": ckpt.rng_state(),
        "step": position.step,
        "epoch": position.epoch,
        "batch_in_epoch": position.batch_in_epoch,
    }


def _check_model_fits_data(model: nn.Module, data: Any) -> None:
    """A decoder must embed every input token and cover the data's sequence length."""
    if data.task != "lm":
        return
    rows, seq_len = getattr(model, "input_vocab_size", None), getattr(model, "seq_len", None)
    if rows is not None and rows < data.input_vocab_size:
        raise ValueError(
            f"the data has {data.input_vocab_size} input tokens but the model embeds {rows}: "
            f"set model.input_vocab_size={data.input_vocab_size}"
        )
    if seq_len is not None and seq_len < data.seq_len:
        raise ValueError(f"data.seq_len={data.seq_len} exceeds model.seq_len={seq_len}: set model.seq_len=${{data.seq_len}}")


def _find_resume(cfg: DictConfig, checkpoint_dir: Path) -> Path | None:
    resume = cfg.trainer.resume
    if resume in (None, "none", False):
        return None
    if resume == "auto":
        last = checkpoint_dir / ckpt.LAST
        return last if last.exists() else None
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"trainer.resume={resume} does not exist: give a checkpoint path, auto or none")
    return path


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.data``; returns the final evaluation (rank 0's view)."""
    dist = init_distributed(cfg.trainer.device)
    try:
        return _train(cfg, run_dir, dist)
    finally:
        shutdown()


def _train(cfg: DictConfig, run_dir: Path, dist: DistInfo) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    data = instantiate(cfg.data)
    model = instantiate(cfg.model)
    _check_model_fits_data(model, data)
    checkpoint_dir = run_dir / "checkpoints"
    resume_from = _find_resume(cfg, checkpoint_dir)
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
    position = Position()

    if resume_from is not None:
        state = ckpt.load(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        position = Position(state["step"], state["epoch"], state["batch_in_epoch"])
    else:
        torch.manual_seed(cfg.seed + dist.rank)  # per-rank dropout streams

    train_model: nn.Module = model
    if cfg.trainer.compile:
        train_model = torch.compile(train_model)
    if dist.world_size > 1:
        train_model = DistributedDataParallel(train_model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)

    logger = None
    if dist.is_main:
        logger = MetricLogger(
            run_dir,
            cfg.logger.wandb_mode,
            cfg.logger.project,
            run_dir.name,
            OmegaConf.to_container(cfg, resolve=True),
            resume_step=position.step,
        )
        (run_dir / "data.json").write_text(_json(data.describe()))
        with open(run_dir / PROVENANCE_FILE, "a") as starts:  # one line per start: resumes may run other code
            start = {**provenance(dist.device), "world_size": dist.world_size, "start_step": position.step}
            starts.write(json.dumps(start) + "\n")
        if resume_from is not None:
            print(f"resumed from {resume_from} at step {position.step}", flush=True)

    preemption = _Preemption()
    mixup = data.mixup_fn() if data.task == "classification" else None
    progress = tqdm(total=total_steps, initial=position.step, disable=not dist.is_main, dynamic_ncols=True)
    window_start, window_samples, window_steps = time.perf_counter(), 0, 0
    if dist.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dist.device)

    def save() -> None:
        if dist.is_main:
            ckpt.save_atomic(_state(model, optimizer, scaler, scheduler, position), checkpoint_dir)
        barrier()

    try:
        while position.step < total_steps:
            loader = data.train_dataloader(micro, dist.rank, dist.world_size, cfg.seed, position.epoch)
            batches = iter(_resume_loader(loader, position.batch_in_epoch))
            for _ in range((len(loader) - position.batch_in_epoch) // accumulation):
                train_model.train()
                loss_sum = torch.zeros((), device=dist.device)
                for micro_step in range(accumulation):
                    sync = micro_step == accumulation - 1 or dist.world_size == 1
                    context = train_model.no_sync() if not sync else nullcontext()
                    with context, autocast(dist.device, cfg.trainer.precision):
                        loss, samples = _train_loss(train_model, next(batches), data.task, mixup, dist.device)
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
                    raise NonFiniteLossError(
                        f"non-finite training loss at step {position.step + 1}; the last good checkpoint is "
                        f"{checkpoint_dir / ckpt.LAST}: lower optim.lr, set trainer.grad_clip or trainer.precision=fp32"
                    )
                if cfg.trainer.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                position.step += 1
                position.batch_in_epoch += accumulation
                window_steps += 1
                scheduler.step_update(position.step)
                progress.update(1)

                if logger is not None and position.step % cfg.trainer.log_every == 0:
                    elapsed = time.perf_counter() - window_start
                    metrics = _train_metrics(mean_loss.item(), data, elapsed, window_steps, window_samples, optimizer, dist)
                    logger.log(position.step, metrics)
                    progress.set_postfix(loss=f"{metrics['train_loss']:.3f}")
                    window_start, window_samples, window_steps = time.perf_counter(), 0, 0
                periodic_eval = cfg.trainer.eval_every and position.step % cfg.trainer.eval_every == 0
                if periodic_eval and position.step < total_steps:  # the last step is evaluated in full below
                    _log_eval(model, data, cfg, dist, logger, position.step, "valid", cfg.trainer.eval_batches)
                if position.step % cfg.trainer.checkpoint_every == 0 or stop_requested:
                    save()
                if stop_requested:
                    print(f"stopped by a signal at step {position.step}; relaunch the same command to resume", flush=True)
                    preemption.hand_over()
                    return {"preempted_at_step": position.step}
                if position.step >= total_steps:
                    break
            else:
                position.epoch += 1
                position.batch_in_epoch = 0

        save()
        progress.close()
        return {
            split: _log_eval(model, data, cfg, dist, logger, position.step, split, None)
            for split in data.eval_splits
        }
    finally:
        progress.close()
        if logger is not None:
            logger.close()


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
    max_batches: int | None,
) -> dict[str, Any]:
    loader = data.eval_dataloader(split, cfg.trainer.eval_batch_size, dist.rank, dist.world_size)
    result = evaluate(model, loader, data.task, dist, cfg.trainer.precision, max_batches)
    if logger is not None:
        logger.log(step, {f"{split}_{key}": value for key, value in result.items()})
    return result


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str) + "\n"
