"""Launch the training runs of one table of the paper: Hydra multirun on SLURM (submitit).

Every ``scripts/sweeps/<table>.py`` lists the experiments (configs/experiment/) of its table's
rows and calls :func:`main`, which runs, from the repository root,

    python train.py -m hydra/launcher=slurm_v100 experiment=<a>,<b>,... [overrides]

one SLURM job per experiment on an 8 x V100 node (configs/hydra/launcher/slurm_v100.yaml).
Each job trains in ``runs/multirun/experiment=<name>``, so an experiment shared by two tables
trains once: launching it again resumes (or finds it finished). Usage:

    python scripts/sweeps/table5.py --dry-run                         # print the command and jobs
    python scripts/sweeps/table5.py                                   # submit
    python scripts/sweeps/table7.py trainer.micro_batch_size=64      # extra overrides for every job
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = "slurm_v100"  # configs/hydra/launcher/slurm_v100.yaml


def check_experiments(experiments: Sequence[str]) -> None:
    """Every name must be a file of configs/experiment/ (a typo would fail only on the cluster)."""
    missing = [name for name in experiments if not (ROOT / "configs" / "experiment" / f"{name}.yaml").is_file()]
    if missing:
        raise SystemExit(f"error: no configs/experiment/<name>.yaml for {missing}")


def sweep_command(experiments: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """The ``train.py`` multirun command line (without the interpreter)."""
    return ["train.py", "-m", f"hydra/launcher={LAUNCHER}", "experiment=" + ",".join(experiments), *overrides]


def main(table: str, experiments: Sequence[str], argv: Sequence[str] | None = None) -> None:
    """Submit (or with ``--dry-run`` print) the jobs of ``table``, one per experiment."""
    parser = argparse.ArgumentParser(description=f"Train the rows of {table} on SLURM (see scripts/sweeps/launch.py).")
    parser.add_argument("--dry-run", action="store_true", help="print the command and the jobs, submit nothing")
    parser.add_argument("overrides", nargs="*", help="key=value Hydra overrides added to every job")
    args = parser.parse_args(argv)
    check_experiments(experiments)
    command = sweep_command(experiments, args.overrides)
    print(f"# {table}: {len(experiments)} jobs on hydra/launcher={LAUNCHER}")
    print("python " + " ".join(command))
    for i, name in enumerate(experiments):
        print(f"job {i}: experiment={name}", *args.overrides)
    if not args.dry_run:
        sys.exit(subprocess.run([sys.executable, *command], cwd=ROOT).returncode)
