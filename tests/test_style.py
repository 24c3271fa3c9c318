"""The code passes ruff's lint and format checks, as configured in ``pyproject.toml`` ([tool.ruff])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_checks_every_package_of_the_project() -> None:
    """The configuration leaves no part of the code out of the checks (an exclude too wide would pass)."""
    listed = _ruff("check", "--show-files", ".")
    assert listed.returncode == 0, listed.stderr
    files = {Path(line).resolve().relative_to(ROOT).parts[0] for line in listed.stdout.split() if line.endswith(".py")}
    assert {"aft", "data", "configs", "scripts", "tests", "train.py", "eval.py"} <= files


def test_ruff_lint_passes() -> None:
    result = _ruff("check", "--output-format", "concise", ".")
    assert result.returncode == 0, f"ruff check . found:\n{result.stdout}{result.stderr}\n(fix, or ruff check --fix .)"


def test_ruff_format_passes() -> None:
    result = _ruff("format", "--check", ".")
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n(run: ruff format .)"
