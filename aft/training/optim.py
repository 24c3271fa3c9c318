"""Optimizer and learning-rate schedules (§5.1, §5.3).

* :func:`adamw` — AdamW with weight decay on the weights of linear transformations only
  (``nn.Linear`` and the patch-embedding/ResNet convolutions), never on biases, norms,
  embeddings or AFT position biases: §5.1 "a weight decay of 0.1 applied to all linear
  transformations weights".
* :func:`inverse_sqrt` — the warmup schedule of Vaswani et al. [1] used in §5.1: linear
  warmup to the peak ``lr``, then decay ``lr * sqrt(warmup / step)``.
* :func:`cosine` — DeiT's recipe (§5.3): timm's ``CosineLRScheduler`` with warmup.

Schedules are built as factories ``(optimizer, total_steps, steps_per_epoch) -> scheduler``
and stepped once per optimizer update with ``step_update(update)`` (timm's interface).
"""

from __future__ import annotations

import math

import torch
from timm.scheduler import CosineLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch import nn

DECAYED_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d)


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups: linear/conv weights (decayed) and everything else (not)."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (decay if name == "weight" and isinstance(module, DECAYED_MODULES) else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def adamw(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW [30] over :func:`weight_decay_groups`."""
    return torch.optim.AdamW(weight_decay_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps)


class InverseSqrtLRScheduler(Scheduler):
    """``lr * min(t / warmup, sqrt(warmup / t))`` at update ``t`` (Vaswani et al. 2017, §5.3)."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int) -> None:
        self.warmup_steps = max(1, warmup_steps)
        super().__init__(optimizer, param_group_field="lr", t_in_epochs=False)
        self.step_update(0)

    def _get_lr(self, t: int) -> list[float]:
        t = max(t, 1)
        factor = min(t / self.warmup_steps, math.sqrt(self.warmup_steps / t))
        return [base * factor for base in self.base_values]


def inverse_sqrt(
    optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int, warmup_steps: int
) -> InverseSqrtLRScheduler:
    """Factory for :class:`InverseSqrtLRScheduler` (``total_steps`` is not needed)."""
    return InverseSqrtLRScheduler(optimizer, warmup_steps)


def cosine(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float,
    lr_min: float,
    warmup_lr_init: float,
) -> CosineLRScheduler:
    """DeiT's cosine decay to ``lr_min`` with linear warmup from ``warmup_lr_init``, per update."""
    return CosineLRScheduler(
        optimizer,
        t_initial=total_steps,
        lr_min=lr_min,
        warmup_t=round(warmup_epochs * steps_per_epoch),
        warmup_lr_init=warmup_lr_init,
        t_in_epochs=False,
    )
