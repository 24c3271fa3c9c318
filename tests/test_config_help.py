"""``python train.py --help`` lists the runnable experiments and the config groups (aft/config_help.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from aft.experiments import experiment_names

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_only_what_a_user_can_run() -> None:
    result = subprocess.run(
        [sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    experiments = lines[lines.index(next(line for line in lines if line.startswith("== Experiments"))) + 1]
    assert experiments.split(", ") == experiment_names()
    assert "experiment/base" not in result.stdout and "base/cifar10" not in result.stdout
    assert "model/mixer: aft_conv1d, aft_conv2d" in result.stdout and "data: cifar10" in result.stdout
