"""Training through a real Slurm cluster: sbatch, the submitit launcher, requeue, cancel, time limits.

Needs the daemons (``scripts/slurm/local_cluster.sh up``, which .ci/run does); skipped without them.
Every job is the embedded default experiment shrunk to one CPU (tests/slurm/jobs.py). The two
time-limit jobs are started together (module fixture) and run side by side on the node's CPUs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.slurm import jobs

pytestmark = pytest.mark.usefixtures("cluster")

CPU_NODE = ["--gpus-per-node=0", "--cpus-per-task=1", "--mem=2G", "--time=10"]


def checkpoint_step(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)["step"]


def assert_resumed_where_it_stopped(run: Path, output: str, signals: set[str]) -> None:
    """Each start after the first begins at the step the previous stop checkpointed: no lost step."""
    begun = [start["start_step"] for start in jobs.starts(run)]
    stopped = jobs.stops(output)
    assert len(begun) >= 2 and stopped, (begun, stopped)
    assert {name for name, _ in stopped} <= signals, stopped
    stopped_steps = sorted({step for _, step in stopped})  # every rank prints its stop
    assert begun[0] == 0 and begun[1:] == stopped_steps[: len(begun) - 1], (begun, stopped_steps)
    assert jobs.last_logged_step(run) > begun[-1] >= begun[1] > 0


def test_sbatch_runs_at_the_node_shape_given_on_the_command_line(tmp_path: Path) -> None:
    """Two processes on a CPU-only node: sbatch's own options replace the 8 x V100 defaults."""
    run = tmp_path / "run"
    job = jobs.sbatch(
        ["--ntasks-per-node=2", *CPU_NODE, "--wait"], ["trainer.max_steps=10", f"hydra.run.dir={run}"], tmp_path / "out"
    )
    output = (tmp_path / "out").read_text()
    assert jobs.state(job) == "COMPLETED", output[-3000:]
    [start] = jobs.starts(run)
    assert start["world_size"] == 2 and start["slurm_job_id"] == job
    assert json.loads((run / "final.json").read_text())
    allocated = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "AllocCPUS", "-j", job], capture_output=True, text=True
    )
    assert allocated.stdout.split() == ["2"]


def test_submitit_sweep_of_two_experiments_with_data_overrides(tmp_path: Path) -> None:
    """scripts/sweep.py over two Enwik8 rows whose data group the default experiment lacks."""
    (tmp_path / "enwik8").mkdir()
    (tmp_path / "enwik8" / "enwik8").write_bytes(bytes(range(97, 123)) * 1154 + b"abcd")  # 30,008 bytes
    tables = tmp_path / "tables.yaml"
    tables.write_text(
        "tiny: {about: two Enwik8 rows, experiments: [enwik8_aft_local32_l24_d256, enwik8_aft_simple_l24_d256]}\n"
    )
    overrides = [
        f"data.root={tmp_path / 'enwik8'}",
        "data.split_bytes=[20008,5000,5000]",
        "data.num_workers=0",
        "data.seq_len=32",
        "model.depth=1",
        "model.dim=32",
        "trainer.batch_size=4",
        "trainer.max_steps=5",
        "trainer.device=cpu",
        "trainer.eval_every=0",
        *jobs.LAUNCHER_SHAPE,
    ]
    command = [sys.executable, str(jobs.ROOT / "scripts" / "sweep.py"), "tiny", "--tables", str(tables), *overrides]
    result = subprocess.run(command, cwd=tmp_path, env=jobs.ENV, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = {p.name.split("-")[0]: p for p in (tmp_path / "runs").glob("enwik8_*")}
    assert sorted(runs) == ["enwik8_aft_local32_l24_d256", "enwik8_aft_simple_l24_d256"]  # named by experiment
    for run in runs.values():
        assert json.loads((run / "data.json").read_text())["splits"]["train"]["bytes"] == 20008
        [start] = jobs.starts(run)
        assert start["launcher"] == "submitit" and f"data.root={tmp_path / 'enwik8'}" in start["overrides"]
        assert (run / "final.json").is_file()
    [record] = (tmp_path / "runs" / "sweeps").glob("tiny-*/multirun.yaml")  # this sweep's own record
    assert not (tmp_path / "runs" / "multirun.yaml").exists()


def test_scontrol_requeue_resumes_and_the_launcher_waits_for_the_end(tmp_path: Path) -> None:
    """SIGTERM from an external requeue: checkpoint, exit 75, resume; the launcher exits 0 only at the end."""
    launcher = jobs.launch(tmp_path, ["trainer.max_steps=1500"])
    try:
        jobs.wait_until(
            lambda: jobs.last_logged_step(jobs.run_folder(tmp_path / "runs")) >= 20, 240, "training to start"
        )
        run = jobs.run_folder(tmp_path / "runs")
        job = jobs.starts(run)[0]["slurm_job_id"]
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
        output, _ = launcher.communicate(timeout=400)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, output[-3000:]
    assert (run / "final.json").is_file() and checkpoint_step(run) == 1500  # it returned once the job was done
    jobs.wait_until(lambda: jobs.state(job) == "COMPLETED", 60, "accounting to record the end")
    assert_resumed_where_it_stopped(run, jobs.submitit_output(tmp_path / "runs" / "sweeps"), {"SIGTERM"})


def test_scancel_stops_the_run_and_says_so(tmp_path: Path) -> None:
    run = tmp_path / "run"
    job = jobs.sbatch(
        ["--ntasks-per-node=1", *CPU_NODE], ["trainer.max_steps=100000", f"hydra.run.dir={run}"], tmp_path / "out"
    )
    jobs.wait_until(lambda: jobs.last_logged_step(run) >= 20, 240, "training to start")
    jobs.cancel(job)
    jobs.wait_until(
        lambda: jobs.state(job) == "CANCELLED" and "srun: error" in (tmp_path / "out").read_text(), 60, "the cancel"
    )
    output = (tmp_path / "out").read_text()
    [(name, step)] = jobs.stops(output)
    assert name == "SIGTERM" and checkpoint_step(run) == step >= 20
    assert "exited with exit code 75" in output.lower() and "requeueing" not in output
    assert len(jobs.starts(run)) == 1 and jobs.state(job) == "CANCELLED"  # stays cancelled


@pytest.fixture(scope="module")
def time_limit_jobs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-minute sbatch job (SIGUSR1 60 s before its limit) and a 2-minute submitit job (SIGUSR2),
    both far from done when their limits come: each must checkpoint, requeue and resume."""
    sbatch_dir, submitit_dir = (
        tmp_path_factory.mktemp("sbatch_time_limit"),
        tmp_path_factory.mktemp("submitit_time_limit"),
    )
    job = jobs.sbatch(
        ["--ntasks-per-node=1", *CPU_NODE, "--time=2", "--signal=B:USR1@60"],
        ["trainer.max_steps=100000", f"hydra.run.dir={sbatch_dir / 'run'}"],
        sbatch_dir / "out",
    )
    launcher = jobs.launch(
        submitit_dir, ["trainer.max_steps=100000", "hydra.launcher.timeout_min=2", "hydra.launcher.signal_delay_s=60"]
    )
    yield {"sbatch": (job, sbatch_dir), "submitit": (launcher, submitit_dir)}
    jobs.cancel(job)
    launcher.kill()


def resumed_and_went_on(run: Path | None) -> bool:
    begun = jobs.starts(run)
    return len(begun) >= 2 and jobs.last_logged_step(run) > begun[-1]["start_step"]


def test_time_limit_through_sbatch_checkpoints_requeues_and_resumes(time_limit_jobs: dict) -> None:
    job, folder = time_limit_jobs["sbatch"]
    run = folder / "run"
    jobs.wait_until(lambda: resumed_and_went_on(run), 420, "a time-limit requeue and a resume")
    output = (folder / "out").read_text()
    assert "SIGUSR1: time limit near" in output and f"requeueing job {job}" in output
    assert "(restart 0)" in output and "(restart 1)" in output  # --open-mode=append kept the first run's output
    assert_resumed_where_it_stopped(run, output, {"SIGUSR1"})
    assert {start["slurm_job_id"] for start in jobs.starts(run)} == {job}  # the same job, requeued
    jobs.cancel(job)


def test_time_limit_through_the_submitit_launcher_checkpoints_requeues_and_resumes(time_limit_jobs: dict) -> None:
    launcher, folder = time_limit_jobs["submitit"]
    jobs.wait_until(
        lambda: resumed_and_went_on(jobs.run_folder(folder / "runs")), 420, "a time-limit requeue and a resume"
    )
    run = jobs.run_folder(folder / "runs")
    assert_resumed_where_it_stopped(run, jobs.submitit_output(folder / "runs" / "sweeps"), {"SIGUSR2"})
    assert launcher.poll() is None  # still waiting on its requeued job
    job = jobs.starts(run)[0]["slurm_job_id"]
    jobs.cancel(job)
    # submitit polls sacct every max(2 s, half the time since it submitted) up to 10 min: after ~4 min of
    # running, the launcher may take ~2-3 min to see the cancel.
    output, _ = launcher.communicate(timeout=360)
    assert launcher.returncode != 0 and "CANCELLED" in output  # a cancelled job fails the launcher, saying why
