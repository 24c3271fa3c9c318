"""The good-checkpoint rule (aft/training/loss_guard.py)."""

from __future__ import annotations

import math

import pytest
import torch

from aft.training.loss_guard import LossGuard


def _window(guard: LossGuard, *losses: float) -> bool:
    for loss in losses:
        guard.add(torch.tensor(loss))
    return guard.close_window()


def test_falling_and_slightly_rising_losses_are_good() -> None:
    guard = LossGuard(2.0)
    assert _window(guard, 5.0, 4.0) and _window(guard, 3.0, 2.0) and _window(guard, 2.6, 2.8)
    assert guard.best == pytest.approx(2.5)


def test_a_blown_up_window_is_not_good_and_does_not_move_the_bound() -> None:
    guard = LossGuard(2.0)
    assert _window(guard, 2.0)
    assert not _window(guard, 1.0, 6e9)
    assert not _window(guard, 4.1)
    assert _window(guard, 3.9) and guard.best == 2.0


def test_a_non_finite_window_is_not_good() -> None:
    guard = LossGuard(2.0)
    assert not _window(guard, math.nan) and not _window(guard, math.inf)


def test_an_empty_window_is_good_and_the_bound_survives_a_resume() -> None:
    guard = LossGuard(2.0)
    assert guard.close_window()
    _window(guard, 1.0)
    resumed = LossGuard(2.0)
    resumed.load_state_dict(guard.state_dict())
    assert not _window(resumed, 2.5)


def test_the_factor_must_exceed_one() -> None:
    with pytest.raises(ValueError, match="must be > 1"):
        LossGuard(1.0)
