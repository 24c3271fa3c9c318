"""The text of ``python train.py --help``: the runnable experiments and the config groups.

Hydra's own listing would also show ``experiment/base`` (the parts the experiments share), which
no one runs; these resolvers list the groups under ``configs/`` without it.
"""

from __future__ import annotations

from aft.experiments import experiment_names
from aft.resources import config_dir

HIDDEN_GROUPS = ("experiment", "experiment/base", "hydra")  # experiments are listed apart


def experiments_text() -> str:
    """One line of the runnable experiment names (``configs/experiment/*.yaml``)."""
    return ", ".join(experiment_names())


def groups_text() -> str:
    """``group: option, ...`` per config group under ``configs/``, one per line."""
    root = config_dir()
    lines = []
    for folder in sorted(p for p in root.rglob("*") if p.is_dir()):
        group = folder.relative_to(root).as_posix()
        options = sorted(f.stem for f in folder.glob("*.yaml"))
        if options and not group.startswith(HIDDEN_GROUPS):
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)
