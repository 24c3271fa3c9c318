"""Provenance of records (aft/provenance.py): the commit of the code that produced a number."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from aft.provenance import REVISION_ENV, code_revision, command_line, provenance

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")


def _git(repository: Path, *args: str) -> str:
    command = ["git", "-C", str(repository), "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


@needs_git
def test_commit_and_dirty_tracked_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REVISION_ENV, raising=False)
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "a")
    commit = _git(tmp_path, "rev-parse", "HEAD")
    assert code_revision(tmp_path) == commit
    (tmp_path / "untracked.txt").write_text("not code of the commit's\n")
    assert code_revision(tmp_path) == commit  # untracked files (run folders, records) do not count
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_revision(tmp_path) == commit + "+dirty"


def test_unknown_outside_a_checkout_and_the_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REVISION_ENV, raising=False)
    assert code_revision(tmp_path) == "unknown"
    monkeypatch.setenv(REVISION_ENV, "abc123")
    assert code_revision(tmp_path) == "abc123"


def test_provenance_fields() -> None:
    record = provenance(torch.device("cpu"))
    assert set(record) == {"command", "commit", "version", "device", "torch", "created"}
    assert record["torch"] == torch.__version__ and "CPU" in record["device"]
    assert record["version"] == importlib.metadata.version("aft")


def test_the_command_as_typed(tmp_path: Path) -> None:
    installed = tmp_path / "bin" / "aft-eval"  # a console script of an installed package
    installed.parent.mkdir()
    installed.write_text("#!/usr/bin/env python\n")
    assert command_line([str(installed), "run=runs/x"]) == "aft-eval run=runs/x"
    assert command_line(["eval.py", "run=runs/x"]) == "python eval.py run=runs/x"
    assert command_line(["-c", "x"]) == "python -c x"
