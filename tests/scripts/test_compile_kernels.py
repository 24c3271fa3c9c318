"""scripts/compile_kernels.py: every Triton kernel compiles for an H100 (sm_90), without a GPU.

The interpreter tests (tests/aft/test_kernels*.py) check what the kernels compute; this checks
that Triton's compiler and ptxas accept them, which the interpreter does not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.scripts.scripts import SCRIPTS

pytest.importorskip("triton")


def test_every_kernel_launch_compiles_for_sm90(tmp_path: Path) -> None:
    out = tmp_path / "compiled.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")  # compile afresh
    command = [
        sys.executable,
        str(SCRIPTS / "compile_kernels.py"),
        "--arch",
        "90",
        "--dtypes",
        "float32",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, cwd=SCRIPTS.parent, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["target"] == "sm_90"
    kernels = {(row["kernel"].rsplit(".", 1)[-1], row["kernel"].split(".")[2]) for row in record["rows"]}
    assert kernels == {
        ("_forward_kernel", "banded"),
        ("_backward_kernel", "banded"),
        ("_summary_kernel", "banded"),
        ("_forward_kernel", "conv2d"),
        ("_backward_kernel", "conv2d"),
        ("_row_totals_kernel", "conv2d"),
        ("_row_prefix_kernel", "conv2d"),
    }
    products = [row for row in record["rows"] if row["constexprs"].get("PRODUCTS") == "True"]
    assert {row["kernel"].rsplit(".", 1)[-1] for row in products} == {"_forward_kernel", "_backward_kernel"}
    assert all(0 < row["registers"] <= 255 and row["shared_bytes"] >= 0 for row in record["rows"])


def test_unknown_ops_name_the_choices() -> None:
    command = [sys.executable, str(SCRIPTS / "compile_kernels.py"), "--ops", "aft_nonsense"]
    result = subprocess.run(command, cwd=SCRIPTS.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "choose from" in result.stderr and "aft_local" in result.stderr
