"""scripts/compare.py joins the paper's numbers with eval.py records, with all, some or no runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.scripts.scripts import load_script

compare = load_script("compare.py")
PAPER = Path(__file__).resolve().parents[2] / "results" / "paper_tables.csv"


def record(experiment: str, split: str, created: str, overrides: list[str] | None = None, **metrics: Any) -> dict:
    """A record as eval.py writes it."""
    return {
        "experiment": experiment, "config_hash": "0" * 12, "split": split, "step": 1000, "device": "test GPU",
        "overrides": overrides or [], "created": created, "command": "python eval.py ...", "commit": "0123abc",
        "metrics": {"count": 10, "complete": True, **metrics},
    }


SYNTHETIC = {
    "old.json": record("enwik8_aft_local32_l24_d256", "test", "2026-01-01T00:00:00+00:00", loss=0.9, bits=1.3, unit="bpc"),
    "new.json": record("enwik8_aft_local32_l24_d256", "test", "2026-02-01T00:00:00+00:00", loss=0.8, bits=1.16, unit="bpc"),
    "train.json": record("enwik8_aft_local32_l24_d256", "train", "2026-02-01T00:00:00+00:00", loss=0.7, bits=0.98, unit="bpc"),
    "valid.json": record("enwik8_aft_local32_l24_d256", "valid", "2026-03-01T00:00:00+00:00", loss=0.1, bits=0.5, unit="bpc"),
    "cifar.json": record("cifar10_aft_simple_l24_d256", "test", "2026-02-01T00:00:00+00:00", loss=2.0, bits=2.95, unit="bits_per_dim"),
    "k15.json": record(
        "imagenet_aft_conv_small_k15_h384", "val", "2026-02-01T00:00:00+00:00",
        loss=1.0, top1=80.5, top5=95.0, samples_per_sec=900.0, mem_gb=3.0,
    ),
    "k15_384.json": record(
        "imagenet_aft_conv_small_k15_h384", "val", "2026-02-02T00:00:00+00:00", ["data.eval_image_size=384"],
        loss=1.0, top1=81.2, top5=95.0,
    ),
    "partial.json": {
        **record("imagenet_aft_conv_small_k11_h384", "val", "2026-02-03T00:00:00+00:00", loss=1.0, top1=10.0, top5=20.0),
        "metrics": {"loss": 1.0, "top1": 10.0, "top5": 20.0, "count": 3, "complete": False},
    },
}


def run(tmp_path: Path, records: dict[str, dict]) -> str:
    runs = tmp_path / "runs"
    runs.mkdir(parents=True)
    for name, content in records.items():
        (runs / name).write_text(json.dumps(content))
    report, figures = tmp_path / "out" / "REPORT.md", tmp_path / "out" / "figures"
    compare.main(["--tables", str(PAPER), "--runs", str(runs), "--report", str(report), "--figures", str(figures)])
    pngs = sorted(p.name for p in figures.glob("*.png"))
    assert pngs == [f"table{t}_{kind}.png" for t, kind in
                    [("11", "curve"), ("2", "speed_memory"), ("4", "speed_memory"), ("5", "curve"),
                     ("6", "curve"), ("7", "speed_memory"), ("8", "speed_memory")]]
    return report.read_text()


def row(report: str, section: str, label: str) -> str:
    """The Markdown line of row ``label`` in the section whose heading starts with ``section``."""
    body = report.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    (line,) = [line for line in body.splitlines() if line.startswith(f"| {label} |")]
    return line


def test_report_with_some_runs(tmp_path: Path) -> None:
    report = run(tmp_path, SYNTHETIC)
    assert "from 8 run record(s)" in report
    local32 = row(report, "Table 4:", "AFT-local-32 L=24 d=256 h=1 T=1024")
    # the newest test record, the train record; no training speed in eval records
    assert "0.972 / 0.9800 (+0.0080)" in local32 and "1.154 / 1.1600 (+0.0060)" in local32
    assert "2.04 / not measured" in local32 and "11.2 / not measured" in local32
    assert "1.154 / 1.1600 (+0.0060)" in row(report, "Table 5:", "AFT-local-32 L=24 d=256")
    assert "2.89 / 2.950 (+0.060)" in row(report, "Table 2:", "AFT-simple L=24 d=256 h=1")  # bits/dim
    k15 = row(report, "Table 7:", "AFT-conv small kernel=15 heads=384")
    assert "81.0 / 80.50 (-0.50)" in k15 and "936 / 900.0 (-36.0)" in k15 and "3.2 / 3.00 (-0.20)" in k15
    assert "23.0 / 23.02 (+0.02)" in k15  # #params from the config
    assert "81.6 / 81.20 (-0.40)" in row(report, "§5.3", "AFT-conv small kernel=15 heads=384 eval crop 384")
    assert "80.8 / not measured" in row(report, "Table 7:", "AFT-conv small kernel=11 heads=384")  # incomplete
    assert "76.9 / not run" in row(report, "Table 7:", "ResNet50 kernel=3")
    assert "3.14 / no config" in row(report, "Table 2:", "PixelCNN")
    assert "- `new.json`: split test, step 1000, test GPU, 2026-02-01T00:00:00+00:00, commit 0123abc" in report
    assert "old.json" not in report and "valid.json" not in report


def test_report_without_runs_is_deterministic(tmp_path: Path) -> None:
    first = run(tmp_path / "a", {})
    assert "from 0 run record(s)" in first and "0 of 191 paper numbers" in first
    assert "Records:" not in first and "1.154 / not run" in first
    assert "0.6 / 0.66 (+0.06)" in row(first, "Table 3:", "Factorized (default) (AFT-local-256 L=24 d=256)")
    second = run(tmp_path / "b", {})
    assert second == first.replace(str(tmp_path / "a"), str(tmp_path / "b"))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [([], "x"), (["data.root=/data"], "x"), (["data.eval_image_size=384"], "x_eval384")],
)
def test_records_at_another_crop_size_count_for_the_eval_experiment(overrides: list[str], expected: str) -> None:
    assert compare.record_experiment(record("x", "val", "", overrides)) == expected
