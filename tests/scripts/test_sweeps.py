"""scripts/sweep.py and its tables (aft/commands/sweep.py, sweep_tables.yaml): one multirun per table, the
tables as in the CSV."""

from __future__ import annotations

import csv
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from aft.commands import sweep

ROOT = Path(__file__).resolve().parents[2]

EVALUATED_NOT_TRAINED = {"imagenet_aft_conv_small_k15_h384_eval384"}  # eval.py on the kernel-15 run (§5.3)


def paper_experiments(table: str) -> list[str]:
    """The experiments of ``table`` (``2``, ``sec5.3``) in results/paper_tables.csv's order, once each."""
    with open(ROOT / "results" / "paper_tables.csv", newline="") as f:
        names = [r["experiment"] for r in csv.DictReader(f) if r["table"] == table and r["experiment"]]
    return [n for n in dict.fromkeys(names) if n not in EVALUATED_NOT_TRAINED]


def csv_tables() -> set[str]:
    with open(ROOT / "results" / "paper_tables.csv", newline="") as f:
        return {r["table"] for r in csv.DictReader(f) if r["experiment"]}


def dry_run(*args: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "scripts/sweep.py", "--dry-run", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def table_name(csv_table: str) -> str:
    return csv_table if csv_table.startswith("sec") else f"table{csv_table}"


def test_every_trained_table_of_the_csv_has_a_sweep() -> None:
    assert sorted(sweep.load_tables()) == sorted(table_name(t) for t in csv_tables())


@pytest.mark.parametrize("csv_table", sorted(csv_tables()))
def test_a_table_lists_the_csvs_experiments_in_order(csv_table: str) -> None:
    assert sweep.table_experiments(table_name(csv_table), sweep.load_tables()) == paper_experiments(csv_table)


def test_dry_run_prints_one_shell_quoted_multirun() -> None:
    lines = dry_run("table5", "data.root=/data/my enwik8", "trainer.micro_batch_size=8")
    command = shlex.split(lines[1])  # the printed line must round-trip through the shell
    assert command[:5] == ["python", "-m", "aft.commands.train", "-m", "hydra/launcher=slurm_v100"]  # python train.py
    assert command[5] == "hydra.sweep.dir=runs/sweeps/table5-${now:%Y-%m-%d_%H-%M-%S}"  # one record folder per sweep
    assert command[6] == "experiment=" + ",".join(paper_experiments("5"))
    root, micro = OverridesParser.create().parse_overrides(command[7:])  # one-value sweeps of the same values
    assert (root.key_or_group, list(root.sweep_iterator())) == ("data.root", ["/data/my enwik8"])
    assert (micro.key_or_group, list(micro.sweep_iterator())) == ("trainer.micro_batch_size", [8])
    assert (
        lines[2]
        == "job 0: experiment=enwik8_aft_simple_l24_d256 'data.root=/data/my enwik8' trainer.micro_batch_size=8"
    )
    assert len(lines) == 2 + len(paper_experiments("5"))


def test_sweeps_hydras_own_and_deletions_pass_unchanged() -> None:
    for override in ["model.mixer.window=16,32", "hydra.launcher.gpus_per_node=4", "~trainer.compile"]:
        assert sweep.as_sweep(override) == override
    assert sweep.as_sweep("+data.extra=[1,2]") == "+data.extra=choice([1,2])"
    command = sweep.sweep_command("t", ["a"], ["hydra/launcher=basic"])
    assert command.count("hydra/launcher=basic") == 1 and sweep.LAUNCHER not in command


def test_sweep_table_expands_a_swept_value_in_order() -> None:
    entries = ["plain", {"experiment": "local{window}_x", "window": [1, 32]}, "plain"]
    assert sweep.expand(entries) == ["plain", "local1_x", "local32_x"]


def test_unknown_table_or_experiment_is_refused_before_submitting(tmp_path: Path) -> None:
    tables = tmp_path / "tables.yaml"
    tables.write_text("bad: {about: x, experiments: [no_such_experiment]}\n")
    for args in (["table99"], ["bad", "--tables", str(tables)]):
        result = subprocess.run(
            [sys.executable, "scripts/sweep.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1 and result.stderr.startswith("error: "), result.stderr
    assert "no_such_experiment" in result.stderr


def test_miniature_skips_the_rows_and_seeds_that_have_records(tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    for path in (ROOT / "results" / "runs" / "miniature").glob("mini__table6__*_t2048-*.json"):
        shutil.copy(path, records)  # one row of Table 6's miniature, seeds 0 1 2
    header, *lines = dry_run("table6", "--miniature", "--seeds", "0", "3", "--records", str(records))
    assert header.startswith("# table6: AFT-local-32")
    rows = ["mini/table4/enwik8_aft_local32_l24_d256", "mini/table6/enwik8_aft_local32_l24_d256_t4096"]
    assert lines[0] == "# seed 0: 1 of 3 rows have records"  # Table 4's row of T = 1024 trains Table 6's too
    command = shlex.split(lines[1])
    assert command[:4] == ["python", "-m", "aft.commands.train", "-m"] and sweep.LAUNCHER not in command  # here
    assert command[4] == "hydra.sweep.dir=runs/sweeps/mini-table6-seed0-${now:%Y-%m-%d_%H-%M-%S}"
    assert command[5:] == ["experiment=" + ",".join(rows), "seed=choice(0)"]
    assert lines[2] == "# seed 3: 0 of 3 rows have records"
    assert shlex.split(lines[3])[5] == "experiment=" + ",".join([rows[0], f"{rows[1][:-6]}_t2048", rows[1]])


def test_miniature_of_a_table_without_one_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/sweep.py", "table8", "--miniature"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1 and result.stderr.startswith("error: table8 has no miniature"), result.stderr


def test_miniature_jobs_deal_each_seeds_rows_out_among_concurrent_multiruns(tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    for path in (ROOT / "results" / "runs" / "miniature").glob("mini__table6__*_t2048-*.json"):
        shutil.copy(path, records)
    lines = dry_run("table6", "--miniature", "--seeds", "0", "3", "--jobs", "2", "--records", str(records))
    commands = {
        shlex.split(line)[4].split("=", 1)[1].removesuffix("-${now:%Y-%m-%d_%H-%M-%S}"): shlex.split(line)[5]
        for line in lines
        if line[0] != "#"
    }
    t1024, t2048, t4096 = (
        f"mini/table{t}/enwik8_aft_local32_l24_d256{s}" for t, s in ((4, ""), (6, "_t2048"), (6, "_t4096"))
    )
    assert commands == {
        "runs/sweeps/mini-table6-seed0-part0": f"experiment={t1024}",
        "runs/sweeps/mini-table6-seed0-part1": f"experiment={t4096}",
        "runs/sweeps/mini-table6-seed3-part0": f"experiment={t1024},{t4096}",
        "runs/sweeps/mini-table6-seed3-part1": f"experiment={t2048}",
    }


def test_jobs_below_one_are_refused() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/sweep.py", "table6", "--miniature", "--jobs", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--jobs 0: give at least 1" in result.stderr, result.stderr


def stop_in(seconds: float):
    """A timer that sends this process SIGTERM after ``seconds`` (cancel it when done)."""
    import os
    import threading

    timer = threading.Timer(seconds, os.kill, (os.getpid(), sweep.signal.SIGTERM))
    timer.start()
    return timer


@pytest.mark.parametrize(
    "job",
    [
        "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(75)); time.sleep(30)",
        "import time; time.sleep(30)",  # the signal comes before the job's handler: the child dies of it
    ],
    ids=["job-checkpoints", "before-the-handler"],
)
def test_a_stop_signal_reaches_the_running_job_and_counts_as_a_stop(job: str) -> None:
    timer = stop_in(1.0)
    try:
        assert sweep.run_forwarding_stops([["-c", job]]) == sweep.EXIT_PREEMPTED
    finally:
        timer.cancel()


def test_concurrent_jobs_share_the_cores_and_all_stop_on_a_signal(tmp_path: Path) -> None:
    job = (
        "import os, signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(75));"
        "open(sys.argv[1], 'w').write(os.environ['OMP_NUM_THREADS']); time.sleep(30)"
    )
    ended = []
    env = sweep.thread_env(2)
    timer = stop_in(3.0)  # the two first jobs sleep 30 s: both started only if they run at once
    try:
        code = sweep.run_forwarding_stops(
            [["-c", job, str(tmp_path / str(i))] for i in range(3)], 2, lambda *a: ended.append(a) or 0, env
        )
    finally:
        timer.cancel()
    assert code == sweep.EXIT_PREEMPTED and sorted(ended) == [(0, 75, True), (1, 75, True)]
    assert [(tmp_path / str(i)).exists() for i in range(3)] == [True, True, False]  # the third never started
    assert (tmp_path / "0").read_text() == str(max(1, (sweep.os.cpu_count() or 1) // 2))


def test_a_stopped_seed_ends_the_miniature_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started = tmp_path / "started"
    job = ["-c", f"import sys; open({str(started)!r}, 'a').write('x'); sys.exit(75)"]  # a job that checkpointed
    monkeypatch.setattr(sweep, "sweep_command", lambda *args, **kwargs: job)
    monkeypatch.chdir(tmp_path)  # no runs/ here: nothing finished, nothing to evaluate
    (tmp_path / "records").mkdir()
    assert sweep.main(["all", "--miniature", "--seeds", "0", "1", "--records", str(tmp_path / "records")]) == 75
    assert started.read_text() == "x"  # neither seed 1 nor any other table started


def test_all_queues_every_tables_rows_once_in_table_order(tmp_path: Path) -> None:
    from aft.miniature import TABLE_RULES

    (tmp_path / "records").mkdir()
    lines = dry_run("all", "--miniature", "--seeds", "0", "--jobs", "2", "--records", str(tmp_path / "records"))
    tables = [line.split(":")[0][2:] for line in lines if line.startswith("# ") and not line.startswith("# seed")]
    assert tables == list(TABLE_RULES)
    commands = [shlex.split(line) for line in lines if line[0] != "#"]
    order = [c[4].split("mini-", 1)[1].split("-seed")[0] for c in commands]
    assert order == sorted(order, key=list(TABLE_RULES).index)  # one queue, table after table
    rows = [row for c in commands for row in c[5].removeprefix("experiment=").split(",")]
    assert len(rows) == len(set(rows))  # a row two tables share (Table 4's T = 1024 in Table 6) is queued once
    assert "mini/table4/enwik8_aft_local32_l24_d256" in rows
    assert "# seed 0: 0 of 3 rows have records, 1 queued by an earlier table" in lines  # Table 6's
