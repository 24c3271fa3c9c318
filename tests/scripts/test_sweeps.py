"""scripts/sweeps/<table>.py --dry-run prints one SLURM multirun over the table's experiments."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = {  # script -> the table of results/paper_tables.csv it trains
    **{f"table{n}": str(n) for n in range(2, 13)},
    "sec5_3": "sec5.3",
    "sec8": "sec8",
}
EVALUATED_NOT_TRAINED = {"imagenet_aft_conv_small_k15_h384_eval384"}  # eval.py on the kernel-15 run (§5.3)


def paper_experiments(table: str) -> list[str]:
    """The table's experiments in the CSV's order, without repeats."""
    with open(ROOT / "results" / "paper_tables.csv", newline="") as f:
        names = [r["experiment"] for r in csv.DictReader(f) if r["table"] == table and r["experiment"]]
    return [n for n in dict.fromkeys(names) if n not in EVALUATED_NOT_TRAINED]


def dry_run(script: str, *overrides: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, f"scripts/sweeps/{script}.py", "--dry-run", *overrides],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("script", sorted(SWEEPS))
def test_dry_run_lists_the_tables_experiments(script: str) -> None:
    lines = dry_run(script)
    expected = paper_experiments(SWEEPS[script])
    assert lines[1] == "python train.py -m hydra/launcher=slurm_v100 experiment=" + ",".join(expected)
    assert lines[2:] == [f"job {i}: experiment={name}" for i, name in enumerate(expected)]


def test_every_sweep_script_is_checked() -> None:
    assert sorted(p.stem for p in (ROOT / "scripts" / "sweeps").glob("*.py") if p.stem != "launch") == sorted(SWEEPS)


def test_overrides_reach_every_job() -> None:
    lines = dry_run("table6", "trainer.micro_batch_size=8")
    assert lines[1].endswith(" trainer.micro_batch_size=8")
    assert all(line.endswith(" trainer.micro_batch_size=8") for line in lines[2:])


def test_unknown_experiment_is_refused_before_submitting(tmp_path: Path) -> None:
    script = tmp_path / "bad.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(ROOT / 'scripts' / 'sweeps')!r})\n"
                      "from launch import main\nmain('bad', ['no_such_experiment'])\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "no_such_experiment" in result.stderr
