"""The benchmark scripts run end to end on the CPU at tiny sizes and write their JSON records.

These check that the scripts work and record what they measured (command, device, rows), not
the numbers: timings are never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aft.provenance import code_revision
from tests.scripts.scripts import SCRIPTS, load_script

ROOT = SCRIPTS.parent


def run_script(name: str, out: Path, *args: str, env: dict[str, str] | None = None) -> dict:
    command = [sys.executable, str(SCRIPTS / name), "--device", "cpu", "--repeats", "1", "--out", str(out), *args]
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=None if env is None else {**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert record["command"].startswith(f"python {SCRIPTS / name}") and "CPU" in record["device"]
    assert record["commit"] == code_revision()
    return record


def test_bench_ops_records_every_operator_at_every_length(tmp_path: Path) -> None:
    record = run_script(
        "bench_ops.py",
        tmp_path / "ops.json",
        "--batch",
        "1",
        "--dim",
        "16",
        "--heads",
        "2",
        "--bias-dim",
        "4",
        "--lengths",
        "36",
        "64",
    )
    ops = {row["op"] for row in record["rows"]}
    assert {"aft_simple", "aft_local_w32", "aft_conv1d_k32_h8", "aft_full", "attention_sdpa_h8"} <= ops
    bidirectional = {"aft_conv2d_k7_h8_bidirectional", "attention_sdpa_h8_bidirectional"}
    assert {(row["op"], row["T"]) for row in record["rows"] if row["op"] in bidirectional} == {
        (op, T) for op in bidirectional for T in (36, 64)
    }
    assert all(row["saved_bytes"] > 0 and row["seconds"] > 0 for row in record["rows"])
    assert record["bandwidth"] is None  # copy bandwidth is a CUDA measurement


@pytest.mark.interpreter
def test_bench_ops_times_each_kernel_variant_where_the_kernels_run(tmp_path: Path) -> None:
    """Under Triton's interpreter the kernels run on the CPU: every AFT op appears as
    ``[triton]`` and ``[torch]``, AFT-local also as ``[triton products]``."""
    pytest.importorskip("triton")
    record = run_script(
        "bench_ops.py",
        tmp_path / "ops.json",
        "--batch",
        "1",
        "--dim",
        "16",
        "--heads",
        "2",
        "--bias-dim",
        "4",
        "--lengths",
        "16",
        env={"TRITON_INTERPRET": "1"},
    )
    ops = {row["op"] for row in record["rows"]}
    assert {
        "aft_local_w32[triton]",
        "aft_local_w32[triton products]",
        "aft_local_w32[torch]",
        "aft_simple[triton]",
        "aft_simple[torch]",
    } <= ops
    assert not any(op.startswith(("aft_simple", "aft_conv")) and "products" in op for op in ops)


def test_bench_revision_times_both_versions_of_every_operator(tmp_path: Path) -> None:
    record = run_script(
        "bench_revision.py",
        tmp_path / "revision.json",
        "--rev",
        "HEAD",
        "--batch",
        "1",
        "--dim",
        "16",
        "--heads",
        "2",
        "--bias-dim",
        "4",
        "--lengths",
        "36",
        "--model-length",
        "32",
        "--image-size",
        "8",
        "--depth",
        "1",
        "--repeats",
        "1",
    )
    ops = [row for row in record["rows"] if row["kind"] == "op"]
    assert {row["op"] for row in ops} == {
        "aft_simple",
        "aft_local_w32",
        "aft_local_w256",
        "aft_conv1d_k32_h8",
        "aft_full",
        "aft_conv2d_k7_h8_bidirectional",
    }
    assert {row["op"] for row in record["rows"] if row["kind"] == "model"} == {
        "decoder_aft_local_w32",
        "decoder_aft_simple",
        "vit_aft_conv2d_k7",
    }
    for row in record["rows"]:
        assert set(row["seconds"]) == {"HEAD", "working tree", "working tree (rerun)"}
        assert row["time_ratio"] > 0 and row["noise_ratio"] > 0
    for row in ops:
        assert set(row["saved_bytes"]) == {"HEAD", "working tree"} and min(row["saved_bytes"].values()) > 0
    assert len(record["load_average_before"]) == 3


def test_bench_revision_names_the_fix_for_an_unknown_revision(tmp_path: Path) -> None:
    command = [sys.executable, str(SCRIPTS / "bench_revision.py"), "--rev", "no-such-rev", "--device", "cpu"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "git log --oneline" in result.stderr.strip().splitlines()[-1]


def test_bench_decode_times_recurrent_and_recomputed_sampling(tmp_path: Path) -> None:
    record = run_script(
        "bench_decode.py",
        tmp_path / "decode.json",
        "--tokens",
        "24",
        "--depth",
        "1",
        "--dim",
        "16",
        "--window",
        "4",
        "--bias-dim",
        "4",
        "--probes",
        "3",
    )
    rows = {row["mixer"]: row for row in record["rows"]}
    assert set(rows) == {"aft_simple", "aft_local_w4"}
    # the recurrent state: O(D) per layer for AFT-simple, the last `window` keys and values for AFT-local
    assert rows["aft_simple"]["recurrent_state_bytes"] < rows["aft_local_w4"]["recurrent_state_bytes"]
    assert rows["aft_simple"]["recompute_probe_lengths"] == [1, 12, 24]


def test_bench_aft_pytorch_times_both_packages_and_records_their_defects(tmp_path: Path) -> None:
    """Runs where ``aft-pytorch`` is installed (it is not a dependency of ours)."""
    pytest.importorskip("aft_pytorch")
    record = run_script(
        "bench_aft_pytorch.py",
        tmp_path / "aft_pytorch.json",
        "--batch",
        "1",
        "--length",
        "32",
        "--dim",
        "8",
        "--window",
        "4",
        "--local-length",
        "16",
        "--check-length",
        "16",
    )
    rows = record["rows"]
    assert {(row["variant"], row["package"]) for row in rows} == {
        (variant, package) for variant in ("simple", "full", "local") for package in ("aft-pytorch", "ours")
    }
    assert all(row["fwd_bwd_seconds"] > 0 and row["memory_bytes"] > 0 for row in rows)
    assert all(row["max_abs_difference"] < 1e-5 for row in rows if "max_abs_difference" in row)
    assert record["defects"]["aft_pytorch_local_bias_gets_gradient"] is False


def test_bench_model_measures_every_mixer_of_a_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper shapes are too large for a test: run the same code on a shrunken one."""
    bench = load_script("bench_model.py")
    monkeypatch.setattr(bench, "SHAPES", {"enwik8": {"seq_len": 16, "window": 4, "bias_dim": 4, "heads": 2}})
    monkeypatch.setattr(bench, "DEPTH", 1)
    monkeypatch.setattr(bench, "DIM", 16)
    rounds: list[int] = []  # how many models took turns in each timed group
    alternating_medians = bench.alternating_medians

    def counted(runs: dict, *args: object) -> dict:
        rounds.append(len(runs))
        return alternating_medians(runs, *args)

    monkeypatch.setattr(bench, "alternating_medians", counted)
    rows = bench.run(
        argparse.Namespace(batch=1, repeats=1, sweep=[16, 32], compile_mode=None), bench.torch.device("cpu")
    )
    measured = [row for row in rows if "skipped" not in row]
    assert {row["mixer"] for row in measured} >= {"transformer", "aft_local", "aft_simple"}
    assert all(row["memory_kind"] == "saved_for_backward" and row["memory_bytes"] > 0 for row in measured)
    assert all(row["iters_per_sec"] > 0 for row in measured)
    # one timed group per shape: the enwik8 shape (all its mixers), then the sweep's T=16 and T=32
    assert rounds[0] == sum(row["shape"] == "enwik8" for row in rows) and rounds[1:] == [3, 3]
    assert "enwik8   aft_local" in bench.summarize(rows)


def test_bench_model_adds_tile_products_where_the_kernels_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the kernels run, AFT-local also runs inside ``aft.ops.use(band_products=True)``."""
    bench = load_script("bench_model.py")
    shape = {"seq_len": 16, "window": 4, "bias_dim": 4, "heads": 2}
    cpu = bench.torch.device("cpu")
    assert "aft_local (tile products)" not in bench.mixers(shape, 16, cpu)
    monkeypatch.setattr(bench.kernels, "refusal", lambda *tensors: None)
    mixer = bench.mixers(shape, 16, cpu)["aft_local (tile products)"](dim=8)
    monkeypatch.undo()  # the layer itself takes the PyTorch path on this CPU
    seen: list[bool] = []
    mixer.layer.register_forward_hook(lambda *_: seen.append(bench.ops.settings().band_products))
    mixer(bench.torch.randn(1, 16, 8))
    assert seen == [True] and not bench.ops.settings().band_products


def test_alternating_medians_take_turns() -> None:
    benchlib = load_script("benchlib.py")
    calls: list[str] = []
    medians = benchlib.alternating_medians(
        {name: (lambda name=name: calls.append(name)) for name in ("a", "b")}, 3, benchlib.torch.device("cpu")
    )
    assert calls == ["a", "b"] * 4  # a warm-up round, then 3 timed rounds
    assert set(medians) == {"a", "b"} and all(seconds >= 0 for seconds in medians.values())


def test_profile_model_splits_a_step_by_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bench = load_script("bench_model.py")
    monkeypatch.setitem(sys.modules, "bench_model", bench)  # profile_model imports it by name
    monkeypatch.setitem(bench.SHAPES, "enwik8", {"seq_len": 16, "window": 4, "bias_dim": 4, "heads": 2})
    profiler = load_script("profile_model.py")
    monkeypatch.setattr(profiler, "DEPTH", 1)
    monkeypatch.setattr(profiler, "DIM", 16)
    out = tmp_path / "profile.json"
    monkeypatch.setattr(
        sys, "argv", ["profile_model.py", "--device", "cpu", "--batch", "1", "--top", "3", "--out", str(out)]
    )
    profiler.main()
    rows = json.loads(out.read_text())["rows"]
    assert [row["mixer"] for row in rows] == ["transformer", "aft_local", "aft_simple"]
    for row in rows:
        assert row["host_ms"] > 0 and row["cpu_ms"] > 0 and len(row["top_ops"]) == 3
        assert sum(op["share"] for op in row["top_ops"]) <= 1.0 + 1e-9
