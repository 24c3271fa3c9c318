"""The package installed from a wheel (``pip install .``, not editable) in a fresh virtual environment
runs the embedded default from a folder outside the checkout: ``aft-train`` (shrunk by overrides) and
``aft-eval`` on its run, with the configs and the paper's tables read from the package.

The environment reuses this interpreter's packages (``--system-site-packages``, no download: the
wheel is built with ``--no-build-isolation`` and installed with ``--no-deps --no-index``). Those hold
the editable install of this checkout; the test checks that the wheel's copy is what runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "aft", "data", "configs", "results/paper_tables.csv"]  # what the build reads
TINY = [
    "model.depth=1",
    "model.dim=32",
    "data.seq_len=32",
    "trainer.batch_size=4",
    "trainer.max_steps=3",
    "trainer.log_every=1",
    "trainer.eval_every=0",
    "trainer.eval_batches=2",
    "trainer.device=cpu",
]


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command[:3]}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def _copy_sources(into: Path) -> Path:
    """The files the build reads, copied from the working tree (no build folders, no caches)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in SOURCES:
        source, target = ROOT / name, into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=ignore)
        else:
            shutil.copy2(source, target)
    return into


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("packaging")
    source = _copy_sources(tmp / "source")
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-q",
        "-w",
        str(tmp / "dist"),
        str(source),
    ]
    _run(command, tmp, dict(os.environ))
    (path,) = (tmp / "dist").glob("aft-*.whl")
    return path


def test_the_wheel_holds_every_package_the_configs_and_the_paper_tables(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = find_packages(ROOT, include=["aft", "aft.*", "data", "data.*"])
    assert {f"{p.replace('.', '/')}/__init__.py" for p in packages} <= names  # pyproject.toml lists them all
    configs = {f"aft/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in (ROOT / "configs").rglob("*.yaml")}
    assert configs <= names and "aft/configs/__init__.py" in names
    assert {"aft/results/paper_tables.csv", "aft/commands/sweep_tables.yaml"} <= names
    assert not {n for n in names if n.startswith(("tests/", "scripts/", "results/", "configs/"))}


def test_installed_commands_train_and_evaluate_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp_path, dict(os.environ)
    )
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], tmp_path, dict(os.environ))
    work = tmp_path / "work"  # outside the checkout: nothing of it on the path
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AFT_CODE_REVISION")}
    env |= {"OMP_NUM_THREADS": "1", "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}
    where = _run([str(python), "-c", "import aft, data; print(aft.__file__); print(data.__file__)"], work, env).split()
    assert all(Path(path).is_relative_to(venv) for path in where), where  # the wheel's copy, not the editable one

    _run([str(bin_dir / "aft-train"), *TINY], work, env)
    (run,) = (work / "runs").iterdir()
    assert run.name.startswith("embedded_text_aft_local-") and (run / "checkpoints" / "last.pt").exists()
    _run([str(bin_dir / "aft-eval"), f"run={run.relative_to(work)}", "splits=[test]"], work, env)
    (path,) = (run / "eval").glob("*.json")
    record = json.loads(path.read_text())
    version = wheel.name.split("-")[1]  # aft-<version>-py3-none-any.whl
    assert record["experiment"] == "embedded_text_aft_local" and record["metrics"]["complete"]
    assert (record["commit"], record["version"]) == ("unknown", version)  # provenance outside a checkout
    assert record["command"].startswith("aft-eval run=runs/")

    check = "from aft.resources import PAPER_TABLES, project_path; print(project_path(PAPER_TABLES).read_text())"
    assert _run([str(python), "-c", check], work, env) == (ROOT / "results" / "paper_tables.csv").read_text() + "\n"
    sweep = _run([str(bin_dir / "aft-sweep"), "table5", "--dry-run"], work, env)
    assert "python -m aft.commands.train -m hydra/launcher=slurm_v100" in sweep
