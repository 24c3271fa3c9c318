"""Import a script of ``scripts/`` as a module, so tests call its ``main`` in-process."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def load_script(relative: str) -> ModuleType:
    """``scripts/<relative>`` as a fresh module ``script_<stem>``; its folder goes on ``sys.path`` for
    sibling imports."""
    path = SCRIPTS / relative
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    name = f"script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
