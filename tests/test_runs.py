"""aft/runs.py reads back what a run logged: its learning curves (``history``), kept short for records."""

from __future__ import annotations

import json
from pathlib import Path

from aft.runs import history


def _metrics(run_dir: Path, lines: list[dict]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run_dir


def test_the_curves_are_the_training_loss_and_the_valid_split_evaluations(tmp_path: Path) -> None:
    lines = [
        {"step": 1, "time": 0.0, "train_loss": 5.0, "lr": 1e-4, "iters_per_sec": 3.0},
        {"step": 2, "time": 0.0, "train_loss": 4.0, "lr": 1e-4, "iters_per_sec": 3.0},
        {"step": 2, "time": 0.0, "valid_loss": 4.5, "valid_bits": 6.5, "valid_count": 9, "valid_complete": False},
        {"step": 2, "time": 0.0, "valid_ema_loss": 4.75, "valid_ema_complete": False},
        {"step": 3, "time": 0.0, "train_loss": 3.0},
        {"step": 3, "time": 0.0, "test_loss": 3.5, "test_bits": 5.0},  # the final test split: not a curve
        {"step": 3, "time": 0.0, "valid_loss": 3.25, "valid_bits": 4.6888886, "valid_complete": True},
    ]
    curves = history(_metrics(tmp_path / "run", lines), "valid")
    assert curves == {
        "valid_split": "valid",
        "series": {
            "train_loss": {"step": [1, 2, 3], "value": [5.0, 4.0, 3.0]},
            "valid_loss": {"step": [2, 3], "value": [4.5, 3.25]},
            "valid_bits": {"step": [2, 3], "value": [6.5, 4.68889]},  # 6 significant digits
            "valid_ema_loss": {"step": [2], "value": [4.75]},
        },
    }
    assert history(tmp_path / "no_run", "val") == {"valid_split": "val", "series": {}}


def test_a_long_curve_is_averaged_over_consecutive_runs_of_steps(tmp_path: Path) -> None:
    lines = [{"step": step, "train_loss": float(step)} for step in range(1, 1001)]
    curve = history(_metrics(tmp_path, lines), "val", points=100)["series"]["train_loss"]
    assert len(curve["step"]) == 100
    assert curve["step"][:2] == [10, 20] and curve["step"][-1] == 1000  # each run's last step
    assert curve["value"][:2] == [5.5, 15.5] and curve["value"][-1] == 995.5  # the mean of steps 1-10, ...
    uneven = history(_metrics(tmp_path, lines[:7]), "val", points=3)["series"]["train_loss"]
    assert uneven == {"step": [2, 4, 7], "value": [1.5, 3.5, 6.0]}
