"""An optional part that is not installed (aft/extras.py) is a one-line error naming its extra."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from aft.cli import user_errors_exit
from aft.extras import MissingExtraError, require
from aft.training.logger import MetricLogger


def test_a_missing_extra_names_its_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(
        MissingExtraError,
        match=r"data.source=parquet needs datasets, which is not installed: pip install 'aft\[parquet\]'",
    ):
        require("datasets", "data.source=parquet")


def test_wandb_logging_without_wandb_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(SystemExit) as stopped, user_errors_exit():
        MetricLogger(tmp_path, "offline", "aft", "run", {})
    assert stopped.value.code == 1
    assert (
        capsys.readouterr().err
        == "error: logger.wandb_mode=offline needs wandb, which is not installed: pip install 'aft[wandb]'\n"
    )
