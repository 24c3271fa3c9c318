"""Which checkpoints hold good weights: the rule that keeps ``last.pt`` from being a diverged run.

Rule: the weights at a checkpoint are good when the mean training loss over the updates since the
previous checkpoint is finite and at most ``factor`` times the lowest such mean of the run so far
(``trainer.divergence_factor``, 2 by default: a blow-up, not a bump). A checkpoint that fails it is
not written, so ``last.pt`` always holds the last good weights; training goes on, and a non-finite
loss stops the run naming that file. The state is checkpointed with the run, so a resumed run
applies the same rule.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class LossGuard:
    """Accumulates the per-update losses of the current checkpoint window and judges it.

    Args:
        factor: a window is good when its mean loss is at most ``factor`` times the best window's.
    """

    def __init__(self, factor: float) -> None:
        if not factor > 1:
            raise ValueError(f"divergence factor {factor} must be > 1")
        self.factor = factor
        self.best = math.inf
        self._sum: torch.Tensor | float = 0.0
        self._count = 0

    def add(self, loss: torch.Tensor) -> None:
        """Add one update's mean loss (kept on its device: no host synchronization)."""
        self._sum = self._sum + loss.detach().double()
        self._count += 1

    def window_mean(self) -> float:
        """Mean loss of the current window (NaN when it is empty)."""
        return float(self._sum) / self._count if self._count else math.nan

    def close_window(self) -> bool:
        """Whether the weights now are good; starts the next window. An empty window is good."""
        if self._count == 0:
            return True
        mean = self.window_mean()
        good = math.isfinite(mean) and mean <= self.factor * self.best
        if good:
            self.best = min(self.best, mean)
        self._sum, self._count = 0.0, 0
        return good

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state.get("best", math.inf))
