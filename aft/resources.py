"""Where the project's files beside the Python code are found: in a checkout, or in an installed package.

A checkout holds them at the repository's top level: ``configs/`` (the Hydra config tree) and
``results/`` (``paper_tables.csv``, the report and the records). An installed package
(``pip install .``, not editable) carries the repository's ``configs/`` and
``results/paper_tables.csv`` as package data at the same paths inside the package
(``aft/configs/``, ``aft/results/paper_tables.csv``: pyproject.toml's ``package-dir`` mapping), so
:func:`project_path` is the one rule for both. Hydra reads the installed configs through its
``pkg://aft.configs`` search path and a checkout's through their folder, so that edits to
``configs/`` take effect without a reinstall. Outside a checkout, reports go to ``./results``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from hydra import initialize_config_dir, initialize_config_module

CONFIG_PACKAGE = "aft.configs"  # the installed copy of configs/ (it holds configs/__init__.py)
PAPER_TABLES = "results/paper_tables.csv"  # every number of the paper's tables
_PACKAGE = Path(__file__).resolve().parent


def installed() -> bool:
    """Whether this code is an installed copy, which carries its configs inside the package."""
    return (_PACKAGE / "configs").is_dir()


def checkout() -> Path | None:
    """The repository this code runs from (an editable install or ``python train.py`` in a
    checkout); ``None`` for an installed copy."""
    return None if installed() else _PACKAGE.parent


def project_path(relative: str) -> Path:
    """The repository's file or folder ``relative`` (``configs``, ``results/paper_tables.csv``):
    the checkout's own, or the installed package's copy."""
    return (checkout() or _PACKAGE) / relative


def config_dir() -> Path:
    """The Hydra config tree (``configs/``) as a folder, for listing its groups and experiments."""
    return project_path("configs")


def config_search_path() -> str:
    """The ``config_path`` of the Hydra apps: ``pkg://aft.configs`` installed, the folder in a checkout."""
    return f"pkg://{CONFIG_PACKAGE}" if installed() else str(config_dir())


def initialize_configs() -> AbstractContextManager:
    """Hydra's compose API over the config tree, found as the Hydra apps find it."""
    if installed():
        return initialize_config_module(CONFIG_PACKAGE, version_base=None)
    return initialize_config_dir(str(config_dir()), version_base=None)


def results_dir() -> Path:
    """Where reports and records go by default: the checkout's ``results/`` (from any folder), else ``./results``."""
    root = checkout()
    return Path("results") if root is None else root / "results"
