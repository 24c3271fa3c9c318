"""Evaluation over whole splits (every target once, summed over ranks) and inference speed.

A whole-split evaluation shows a progress bar on rank 0 when its stderr is a terminal (tqdm),
as training does; periodic evaluations during training show none.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from aft.training.distributed import DistInfo, all_reduce_sum

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device, precision: str):
    """Autocast context for ``trainer.precision`` (``fp32`` disables it)."""
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r}: use one of {sorted(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return nullcontext()
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("trainer.precision=fp16 needs a GPU: use bf16 or fp32 on the CPU")
    return torch.autocast(device.type, dtype=dtype)


def lm_nll(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Per-target NLL in nats of next-token prediction: ``(B, T)`` for windows ``(B, T + 1)``."""
    logits = model(tokens[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten(), reduction="none").view_as(
        tokens[:, 1:]
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    task: str,
    dist: DistInfo,
    precision: str = "fp32",
    max_batches: int | None = None,
    progress: str | None = None,
) -> dict[str, Any]:
    """Mean loss (nats) and, for images, top-1/top-5 (%) over this rank's shard, summed over ranks.

    For ``task="lm"`` every masked target counts once, so over a whole split the mean is per
    byte / sub-pixel and ``bits = loss / ln 2`` is bpc or bits/dim. ``max_batches`` limits a
    periodic evaluation during training (``complete`` is then False). ``progress`` labels a
    progress bar over the batches (rank 0, a terminal only); None shows none.
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=dist.device)  # loss sum, count, top1, top5
    complete = True
    show = progress is not None and dist.is_main
    bar = tqdm(loader, desc=progress, unit="batch", leave=False, dynamic_ncols=True, disable=None if show else True)
    for i, batch in enumerate(bar):
        if max_batches is not None and i >= max_batches:
            complete = False
            break
        with autocast(dist.device, precision):
            if task == "lm":
                tokens, mask = (t.to(dist.device, non_blocking=True) for t in batch)
                nll = lm_nll(model, tokens)
                totals[0] += nll[mask].sum().double()
                totals[1] += mask.sum()
            else:
                images, labels = (t.to(dist.device, non_blocking=True) for t in batch)
                logits = model(images).float()
                totals[0] += F.cross_entropy(logits, labels, reduction="sum").double()
                totals[1] += labels.numel()
                top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
                totals[2] += (top5[:, 0] == labels).sum()
                totals[3] += (top5 == labels[:, None]).any(dim=-1).sum()
    bar.close()
    all_reduce_sum(totals)
    model.train(was_training)
    loss_sum, count, top1, top5 = totals.tolist()
    if count == 0:
        raise ValueError("evaluation saw no targets: the split is empty")
    result: dict[str, Any] = {"loss": loss_sum / count, "count": int(count), "complete": complete}
    if task == "lm":
        result["bits"] = result["loss"] / math.log(2)
    else:
        result.update(top1=100.0 * top1 / count, top5=100.0 * top5 / count)
    return result


@torch.no_grad()
def inference_speed(
    model: nn.Module, example: torch.Tensor, device: torch.device, precision: str = "fp32", repeats: int = 10
) -> dict[str, float]:
    """Samples/s and peak memory of forward passes on ``example`` (Table 7: batch 256).

    Memory is ``torch.cuda.max_memory_allocated`` in GB on a GPU, absent on the CPU.
    """
    model.eval()
    example = example.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with autocast(device, precision):
        model(example)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            model(example)
        _sync(device)
    seconds = (time.perf_counter() - start) / repeats
    result = {"samples_per_sec": example.shape[0] / seconds, "batch_size": example.shape[0]}
    if device.type == "cuda":
        result["mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
