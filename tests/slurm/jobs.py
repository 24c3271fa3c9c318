"""Submitting tiny training jobs to a Slurm cluster and reading what they did, for tests/slurm/.

A run folder tells a job's history: ``provenance.jsonl`` has one line per start (``start_step``),
``metrics.jsonl`` the logged steps, ``checkpoints/last.pt`` the last checkpoint; the job's output
holds one ``stopped by SIG... at step N`` line per stop (aft/training/preemption.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"
# The embedded default experiment shrunk to seconds on one CPU (its mixer window 32 = seq_len).
TINY = [
    "model.depth=1",
    "model.dim=32",
    "data.seq_len=32",
    "trainer.batch_size=4",
    "trainer.device=cpu",
    "trainer.eval_every=0",
    "trainer.log_every=10",
]
# A CPU-only node shape for the submitit launcher (configs/hydra/launcher/slurm_v100.yaml).
LAUNCHER_SHAPE = [
    "hydra/launcher=slurm_v100",
    "hydra.launcher.tasks_per_node=1",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=10",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def cluster_problem() -> str | None:
    """Why no Slurm cluster can run the tests here, or None when one answers (with accounting)."""
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH"
    checks = {"sinfo": ["sinfo", "-h", "-o", "%t"], "sacct": ["sacct", "-n", "-X", "-S", "now-1minutes"]}
    for name, command in checks.items():
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            return f"{name} did not answer in 20 s"
        if result.returncode != 0:
            return f"{name} failed: {result.stderr.strip()[:200]}"
    return None


def cluster_snapshot() -> str:
    """The queue (with pending reasons) and the last hour's accounting, for a timed-out wait's message."""
    commands = (
        ["squeue", "-a", "-o", "%i %j %T %M %l %r"],
        ["sacct", "-a", "-X", "-S", "now-60minutes", "-o", "JobID,JobName,State,ExitCode,Start,End,Elapsed"],
    )
    return "\n".join(subprocess.run(c, capture_output=True, text=True, timeout=30).stdout for c in commands)


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {what}; the cluster:\n{cluster_snapshot()}"
            )
        time.sleep(1)


def sbatch(options: Sequence[str], overrides: Sequence[str], output: Path) -> str:
    """Submit scripts/slurm/train.sbatch from the repository root; the job id (once done with ``--wait``)."""
    command = ["sbatch", "--parsable", f"--output={output}", *options, str(SBATCH), *TINY, *overrides]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600, check=True)
    return result.stdout.strip().split(";")[0]


def launch(cwd: Path, overrides: Sequence[str]) -> subprocess.Popen:
    """``python train.py -m`` through the submitit launcher, run in ``cwd`` (its runs/ folder)."""
    command = [sys.executable, str(ROOT / "train.py"), "-m", *LAUNCHER_SHAPE, *TINY, *overrides]
    return subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def state(job_id: str) -> str:
    """The job's state in accounting (COMPLETED, CANCELLED, RUNNING, PENDING, ...; '' before it is known)."""
    result = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True, timeout=30
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return lines[-1].split()[0].rstrip("+") if lines else ""  # "CANCELLED by 0" -> CANCELLED


def run_folder(runs: Path) -> Path | None:
    """The one run folder under ``runs`` (runs/<experiment>[-<hash>]), once it exists."""
    found = [p for p in runs.glob("*") if (p / "provenance.jsonl").is_file()]
    assert len(found) <= 1, found
    return found[0] if found else None


def starts(run: Path | None) -> list[dict]:
    if run is None or not (run / "provenance.jsonl").is_file():
        return []
    return [json.loads(line) for line in (run / "provenance.jsonl").read_text().splitlines() if line.strip()]


def last_logged_step(run: Path | None) -> int:
    if run is None or not (run / "metrics.jsonl").is_file():
        return 0
    steps = [
        json.loads(line).get("step", 0) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]
    return max(steps, default=0)


def stops(output: str) -> list[tuple[str, int]]:
    """``(signal name, step)`` of each ``stopped by ...`` line of a job's output."""
    return [(name, int(step)) for name, step in re.findall(r"stopped by (SIG\w+) \([^)]*\) at step (\d+)", output)]


def submitit_output(sweep_records: Path) -> str:
    """Everything the submitit jobs of the sweeps under ``sweep_records`` printed."""
    return "".join(p.read_text(errors="replace") for p in sorted(sweep_records.glob("*/.submitit/*/*_log.*")))


def cancel(job_id: str) -> None:
    subprocess.run(["scancel", job_id], check=True, timeout=30)
