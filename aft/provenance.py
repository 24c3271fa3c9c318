"""Where a number came from: the code revision, the device, the software and the command.

Every record this codebase writes (a benchmark under ``results/bench/``, an evaluation under
``results/runs/``, each start of a training run in its folder) carries :func:`provenance`, so a
number can be traced to the commit that produced it and re-run. An installed copy of the package
(``pip install .``) has no checkout: its records carry the package version and the commit
``"unknown"``, or ``$AFT_CODE_REVISION`` where that is set.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from aft.resources import checkout

REVISION_ENV = (
    "AFT_CODE_REVISION"  # set it where the code is a copy without .git (a device machine, an installed package)
)
DISTRIBUTION = "aft"  # pyproject.toml's project name


def code_revision(repository: Path | None = None) -> str:
    """The git commit of ``repository`` (default: this code's checkout), with ``+dirty`` when tracked
    files differ from it; ``$AFT_CODE_REVISION`` when set; ``"unknown"`` outside a git checkout."""
    if os.environ.get(REVISION_ENV):
        return os.environ[REVISION_ENV]
    repository = repository or checkout()
    if repository is None or not (repository / ".git").exists():  # an installed copy: no checkout of its own
        return "unknown"

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repository), *args], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU and its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def package_version() -> str:
    """The installed version of this package (pyproject.toml's), or ``"unknown"`` when it is not installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def command_line(argv: list[str]) -> str:
    """The command as typed: ``python <script> <args>``, or an installed command (``aft-eval <args>``)."""
    program = Path(argv[0])
    if program.suffix == ".py" or not program.is_file():  # a script, a module (-m) or -c
        return "python " + " ".join(argv)
    return " ".join([program.name, *argv[1:]])


def provenance(device: torch.device) -> dict[str, Any]:
    """``command``, ``commit``, package ``version``, ``device``, ``torch`` version and ``created`` (UTC) of
    this process."""
    return {
        "command": command_line(sys.argv),
        "commit": code_revision(),
        "version": package_version(),
        "device": device_name(device),
        "torch": torch.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
