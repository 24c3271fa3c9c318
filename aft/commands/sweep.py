"""Train the rows of one table of the paper: one Hydra multirun over the table's experiments.

With ``--miniature`` the table's miniature (``configs/experiment/mini/<table>/``, aft/miniature.py)
runs instead, on this machine (Hydra's basic launcher, unless ``hydra/launcher=...`` is given), one
multirun per seed of ``--seeds`` (``--jobs N``: N multiruns at once, each seed's rows dealt out among
them, the cores shared out through OMP_NUM_THREADS), each finished run evaluated into ``--records``
(``results/runs/miniature``); a (row, seed) that already has its records is skipped, so a re-run
completes what is missing. ``all`` puts every table's multiruns in one queue, so a job slot that one
table leaves free takes the next table's first multirun, and a row two tables share trains once:

    python scripts/sweep.py table9 --miniature                # seeds 0 1 2
    python scripts/sweep.py table9 --miniature --jobs 2       # two jobs at once, one core each
    python scripts/sweep.py table5 --miniature --seeds 3 4    # two more seeds
    python scripts/sweep.py all --miniature --jobs 2          # every table's, in order, in one queue

A stop signal (SIGTERM, SIGUSR1, SIGUSR2) to this command reaches the running jobs, which checkpoint
and exit 75 (aft/training/preemption.py); no other row or seed starts, and the same command resumes.

The tables' rows are data, ``sweep_tables.yaml`` beside this module (table -> experiments, sweeps
expanded). From the folder that is to hold ``runs/``, with the environment active,

    python scripts/sweep.py table5 --dry-run                 # print the command and the jobs (aft-sweep, installed)
    python scripts/sweep.py table5 data.root=/data/enwik8    # submit, wait, exit 0 iff every job finished
    python scripts/sweep.py table7 hydra.launcher.partition=a100 hydra.launcher.gpus_per_node=4

runs ``python -m aft.commands.train -m hydra/launcher=slurm_v100 hydra.sweep.dir=runs/sweeps/<table>-<time>
experiment=<a>,<b>,... <overrides>`` (what ``python train.py`` runs; the launcher needs ``aft[slurm]``):
one Slurm job per experiment through hydra-submitit-launcher
(configs/hydra/launcher/slurm_v100.yaml, the paper's 8 x V100 node; ``hydra.launcher.*`` changes
the node shape; ``hydra/launcher=<other>`` replaces it). Each job trains in the folder a single
``python train.py experiment=<a> <overrides>`` would use, ``runs/<a>[-<hash>]`` (aft/run_name.py),
so an experiment shared by two tables trains once and a relaunched sweep resumes. Each sweep's
record (``multirun.yaml``, the submitit logs) stays in its own ``runs/sweeps/<table>-<time>``.

Every other override is passed as a one-value sweep, ``key=choice(value)``: Hydra composes a
multirun's base config with the sweeps left out (the default experiment, whose data group is not
the table's), so a plain ``data.split_bytes=...`` would fail there before any job is composed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from aft.experiments import experiment_names
from aft.miniature import TABLE_RULES, canonical_miniature
from aft.resources import results_dir
from aft.run_name import run_name
from aft.training.preemption import EXIT_PREEMPTED, STOP_SIGNALS

TABLES = Path(__file__).with_name("sweep_tables.yaml")  # package data of aft.commands
TRAIN = ["-m", "aft.commands.train"]  # python train.py, from any folder
EVAL = ["-m", "aft.commands.eval"]  # python eval.py
LAUNCHER = "hydra/launcher=slurm_v100"  # configs/hydra/launcher/slurm_v100.yaml
POLL_SECONDS = 0.5  # how often a running miniature job is checked for its end


def load_tables(path: Path = TABLES) -> dict[str, dict]:
    """``{table: {"about": str, "experiments": [entry, ...]}}`` as written in ``path``."""
    return yaml.safe_load(path.read_text())


def expand(entries: Sequence[str | dict]) -> list[str]:
    """The experiment names of a table's entries: a name, or ``{experiment: pattern, key: values}``."""
    names: list[str] = []
    for entry in entries:
        if isinstance(entry, str):
            names.append(entry)
            continue
        pattern, [(key, values)] = entry["experiment"], [(k, v) for k, v in entry.items() if k != "experiment"]
        names.extend(pattern.format(**{key: value}) for value in values)
    return list(dict.fromkeys(names))


def table_experiments(table: str, tables: dict[str, dict], path: Path = TABLES) -> list[str]:
    """The experiments of ``table``; an unknown table or experiment exits with the fix."""
    if table not in tables:
        raise SystemExit(f"error: no table {table!r} in {path}: choose one of {', '.join(tables)}")
    names = expand(tables[table]["experiments"])
    known = set(experiment_names())
    missing = [name for name in names if name not in known]
    if missing:
        raise SystemExit(f"error: {table} lists {missing}, which have no configs/experiment/<name>.yaml: fix {path}")
    return names


def as_sweep(override: str) -> str:
    """``key=value`` as the one-value sweep ``key=choice(value)``; Hydra's own and sweeps unchanged."""
    parsed = OverridesParser.create().parse_overrides([override])[0]
    if parsed.is_hydra_override() or parsed.is_sweep_override() or parsed.is_delete():
        return override
    return f"{parsed.get_key_element()}=choice({parsed.get_value_element_as_str()})"


def sweep_command(
    sweep_dir: str, experiments: Sequence[str], overrides: Sequence[str], launcher: str | None = LAUNCHER
) -> list[str]:
    """The ``train.py`` multirun command line, without the interpreter; ``launcher`` unless one is given."""
    given = any(o.startswith("hydra/launcher=") for o in overrides)
    return [
        *TRAIN,
        "-m",
        *([launcher] if launcher and not given else []),
        f"hydra.sweep.dir=runs/sweeps/{sweep_dir}-${{now:%Y-%m-%d_%H-%M-%S}}",
        "experiment=" + ",".join(experiments),
        *(as_sweep(o) for o in overrides),
    ]


def has_records(experiment: str, seed: int, records: dict[str, dict]) -> bool:
    """Whether ``records`` hold a complete evaluation of ``experiment`` at ``seed`` with today's config."""
    from aft.commands.compare import config_differences

    return any(
        record["experiment"] == experiment
        and record.get("config", {}).get("seed") == seed
        and record["metrics"].get("complete", True)
        and not config_differences(record, frozenset({"seed"}))
        for record in records.values()
    )


def run_forwarding_stops(
    commands: Sequence[Sequence[str]],
    jobs: int = 1,
    ended: Callable[[int, int, bool], int] = lambda index, code, stopped: 0,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run each ``python command``, at most ``jobs`` at once, in order, passing the stop signals this process
    receives on to every running one (a miniature job checkpoints and exits :data:`EXIT_PREEMPTED`); after a
    stop signal, or a job's exit :data:`EXIT_PREEMPTED`, none of the rest starts. ``ended(index, code,
    stopped)`` is called as each exits and returns a further exit code (its evaluation's). The exit code:
    :data:`EXIT_PREEMPTED` if stopped and anything failed (a signal that came before a job set its handler
    kills that job outright), else 0 iff every code was 0."""
    waiting = list(enumerate(commands))
    running: dict[int, subprocess.Popen] = {}
    stopped = False
    failed = 0

    def forward(signum: int, _: object) -> None:
        nonlocal stopped
        stopped = True
        for child in list(running.values()):
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS}
    try:
        while running or (waiting and not stopped):
            while waiting and len(running) < jobs and not stopped:
                index, command = waiting.pop(0)
                running[index] = subprocess.Popen([sys.executable, *command], env=env)
            time.sleep(POLL_SECONDS)
            for index, child in list(running.items()):
                if (code := child.poll()) is not None:
                    del running[index]
                    stopped = stopped or code == EXIT_PREEMPTED
                    failed |= code | ended(index, code, stopped)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_PREEMPTED if stopped and failed else failed


def thread_env(jobs: int) -> dict[str, str] | None:
    """The environment of ``jobs`` concurrent jobs: this machine's cores shared out (OMP_NUM_THREADS); None for one."""
    if jobs == 1:
        return None
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}


Unit = tuple[list[str], list[str], list[str]]  # (overrides, rows, command) of one miniature multirun


def miniature_units(
    table: str,
    experiments: Sequence[str],
    args: argparse.Namespace,
    records: dict[str, dict],
    queued: set[tuple[str, int]],
) -> list[Unit]:
    """The multiruns that train the miniature of ``table`` for every seed without ``records``: each seed's pending
    rows dealt out among ``args.jobs`` multiruns, less the (row, seed) pairs already in ``queued`` (a row two
    tables share is trained once), which it extends; each printed as it is made."""
    try:
        names = list(dict.fromkeys(canonical_miniature(table, name) for name in experiments))
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    units: list[Unit] = []
    for seed in args.seeds:
        earlier = [name for name in names if (name, seed) in queued]
        pending = [name for name in names if name not in earlier and not has_records(name, seed, records)]
        queued.update((name, seed) for name in pending)
        done = len(names) - len(pending) - len(earlier)
        print(
            f"# seed {seed}: {done} of {len(names)} rows have records"
            + (f", {len(earlier)} queued by an earlier table" if earlier else "")
        )
        overrides = [f"seed={seed}", *args.overrides]
        parts = [pending[i :: args.jobs] for i in range(min(args.jobs, len(pending)))]
        for i, rows in enumerate(parts):
            sweep_dir = f"mini-{table}-seed{seed}" + (f"-part{i}" if len(parts) > 1 else "")
            units.append((overrides, rows, sweep_command(sweep_dir, rows, overrides, launcher=None)))
            print(shlex.join(["python", *units[-1][2]]), flush=True)
    return units


def run_units(units: Sequence[Unit], args: argparse.Namespace) -> int:
    """Run the multiruns ``units``, ``args.jobs`` at once in order, and evaluate each one's runs as it ends."""
    if args.dry_run or not units:
        return 0

    def evaluate(index: int, code: int, stopped: bool) -> int:
        overrides, rows, _ = units[index]
        failed = 0
        for name in rows:
            run_dir = Path("runs") / run_name(name, overrides)
            if not (run_dir / "final.json").exists():
                if not stopped:
                    print(f"error: {run_dir} did not finish: see its log, then re-run this command", file=sys.stderr)
                continue
            command = [*EVAL, f"run={run_dir}", f"out={args.records}"]
            failed |= subprocess.run([sys.executable, *command]).returncode
        return failed

    commands = [command for _, _, command in units]
    code = run_forwarding_stops(commands, args.jobs, evaluate, thread_env(args.jobs))
    if code == EXIT_PREEMPTED:
        print("stopped: the running jobs checkpointed, the same command resumes", file=sys.stderr)
    return code


def run_miniatures(names: Sequence[str], tables: dict[str, dict], args: argparse.Namespace) -> int:
    """Train and evaluate the miniatures of the tables ``names`` (:func:`miniature_units`), their multiruns in one
    queue, in table order, so that a core freed by one table's last run takes the next table's first."""
    from aft.commands.compare import load_records

    records = load_records(args.records)
    queued: set[tuple[str, int]] = set()
    units: list[Unit] = []
    for table in names:
        experiments = table_experiments(table, tables, args.tables)
        print(f"# {table}: {tables[table]['about']}", flush=True)
        units += miniature_units(table, experiments, args, records, queued)
    return run_units(units, args)


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/sweep.py`` / ``aft-sweep``: print the table's multirun and, unless ``--dry-run``, run it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "table", help=f"a table of {TABLES.name}: table2 ... table12, sec5.3, sec8; all (with --miniature)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the command and the jobs, submit nothing")
    parser.add_argument("--tables", type=Path, default=TABLES, help="the table file (default: %(default)s)")
    parser.add_argument("--miniature", action="store_true", help="the table's miniature, on this machine")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="miniature seeds (default: 0 1 2)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="miniature multiruns at once, the cores shared out (default: 1)"
    )
    parser.add_argument(
        "--records", type=Path, default=results_dir() / "runs" / "miniature", help="miniature records folder"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job (key=value)")
    args = parser.parse_intermixed_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: give at least 1")
    tables = load_tables(args.tables)
    if args.miniature:
        return run_miniatures(list(TABLE_RULES) if args.table == "all" else [args.table], tables, args)
    experiments = table_experiments(args.table, tables, args.tables)
    command = sweep_command(args.table, experiments, args.overrides)
    print(f"# {args.table}: {tables[args.table]['about']}; {len(experiments)} jobs")
    print(shlex.join(["python", *command]))
    for i, name in enumerate(experiments):
        print(f"job {i}: " + shlex.join([f"experiment={name}", *args.overrides]))
    if args.dry_run:
        return 0
    return subprocess.run([sys.executable, *command]).returncode


if __name__ == "__main__":  # python -m aft.commands.sweep
    sys.exit(main())
