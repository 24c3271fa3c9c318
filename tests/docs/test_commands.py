"""Every command of README.md and docs/*.md stays true: each is marked, ``[run]`` commands run as
written on the CPU in a copy of the checkout, ``[dry-run]`` commands and the scripts quoted in the
text pass their dry run (tests/docs/commands.py), ``[ci]`` commands are what ``.ci/run`` runs, and
``pip install`` asks only for extras that exist. The marks are explained in README.md (Extending).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from importlib.metadata import metadata
from pathlib import Path

import pytest

from tests.docs.commands import (
    ROOT,
    Command,
    documented_commands,
    dry_run,
    is_install,
    local_extras,
    segments,
    shell_line,
)

COMMANDS = documented_commands()
# The copy the [run] commands run in is shrunk: the quick start's 400 steps take ~3 min on a 2-core
# CPU, so it trains the default experiment for 20 (same config otherwise, same run folder, so eval.py
# finds it), and eval.py's speed check runs at batch 32 instead of Table 7's 256.
SHRINK = {
    "configs/experiment/embedded_text_aft_local.yaml": (r"(?m)^(  max_steps: )\d+$", r"\g<1>20"),
    "configs/eval.yaml": (r"(?m)^(speed_batch_size: )\d+", r"\g<1>32"),
}
RUN_TIMEOUT_S = 300


def unique(mark: str) -> list[Command]:
    """The commands with ``mark``, each text once (its first place), in the docs' order."""
    seen: dict[str, Command] = {}
    for command in COMMANDS:
        if command.mark == mark:
            seen.setdefault(command.text, command)
    return list(seen.values())


def checked_segments(command: Command) -> list[list[str]]:
    """The command's ``&&`` parts without its ``pip install`` (never run here)."""
    return [part for part in segments(command.text) if not is_install(part)]


RAN = [part for command in unique("run") for part in checked_segments(command)]
DRY = [c for c in unique("dry-run") if not all(part in RAN for part in checked_segments(c))]  # a run checks more


def test_extraction_of_blocks_and_text(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Run `python train.py trainer.max_steps=2` or `python scripts/sweep.py <table>`.\n"
        "```bash\n"
        "# a comment line\n"
        "A=1 python train.py \\\n"
        "    x=1 && python eval.py 'a # b'   # says what [run]\n"
        "$ python scripts/compare.py  # [dry-run]\n"
        "sbatch scripts/slurm/train.sbatch x=2\n"
        "```\n"
        "```console\n"
        "$ python -m pytest -q  # [ci]\n"
        "output # [none]\n"
        "```\n"
        "```python\n"
        "print(1)  # [run]\n"
        "```\n"
    )
    assert documented_commands((doc,)) == [
        Command(f"{doc}:4", "A=1 python train.py x=1 && python eval.py 'a # b'", "run"),
        Command(f"{doc}:6", "python scripts/compare.py", "dry-run"),
        Command(f"{doc}:7", "sbatch scripts/slurm/train.sbatch x=2", None),
        Command(f"{doc}:10", "python -m pytest -q", "ci"),
        Command(f"{doc}:1", "python train.py trainer.max_steps=2", "dry-run"),
    ]
    assert segments("A=1 python train.py x=1 && python eval.py 'a # b'") == [
        ["A=1", "python", "train.py", "x=1"],
        ["python", "eval.py", "a # b"],
    ]
    with pytest.raises(ValueError, match="operator '<'"):
        segments("python eval.py runs/<run>")


def test_every_command_is_marked() -> None:
    unmarked = [f"{c.source}: {c.text}" for c in COMMANDS if c.mark is None]
    assert not unmarked, (
        "commands without a mark ([run], [dry-run], [ci], [none]; README.md, Extending):\n" + "\n".join(unmarked)
    )


def test_install_commands_ask_for_existing_extras() -> None:
    extras = set(metadata("aft").get_all("Provides-Extra") or [])
    asked = {
        extra: command.source
        for command in COMMANDS
        if "pip" in command.text
        for part in segments(command.text)
        if is_install(part)
        for extra in local_extras(part)
    }
    assert set(asked) <= extras, (
        f"extras not in pyproject.toml: { {e: s for e, s in asked.items() if e not in extras} }"
    )


def test_ci_commands_are_lines_of_ci_run() -> None:
    lines = {line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()}
    missing = [f"{c.source}: {c.text}" for c in unique("ci") if c.text not in lines]
    assert not missing, "[ci] commands that .ci/run does not run as written:\n" + "\n".join(missing)


@pytest.mark.filterwarnings("ignore:Unable to enable fault handler")  # torchrun's, on captured stderr
@pytest.mark.parametrize("command", DRY, ids=lambda c: c.source)
def test_dry_run(command: Command) -> None:
    for part in checked_segments(command):
        dry_run(part)


def copy_of_checkout(destination: Path) -> Path:
    """The checkout's files (tracked, and untracked ones git does not ignore) copied, then shrunk."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    for name, (pattern, replacement) in SHRINK.items():
        path = destination / name
        text, count = re.subn(pattern, replacement, path.read_text())
        assert count == 1, f"{name}: the shrink {pattern!r} matched {count} times: update SHRINK"
        path.write_text(text)
    return destination


def test_cpu_commands_run_as_written(tmp_path: Path) -> None:
    """The [run] commands in the docs' order (later ones use earlier ones' runs), in one copy, each
    ``&&`` part once. One OpenMP thread each, as in the unit suite (tests/conftest.py): on shared
    cores two threads made the quick start ~4x slower."""
    checkout = copy_of_checkout(tmp_path / "checkout")
    path = os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    done: list[list[str]] = []
    for command in unique("run"):
        parts = [part for part in checked_segments(command) if part not in done]
        done += parts
        if not parts:
            continue
        line = shell_line(parts)
        result = subprocess.run(
            ["bash", "-c", line],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, (
            f"{command.source}: {line}: exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
