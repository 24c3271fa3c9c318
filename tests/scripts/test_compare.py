"""compare.py (aft/commands/compare.py) joins the paper's numbers with eval.py records, with all, some or no runs;
a record counts for a paper row only when its config is the row's experiment config."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from aft.commands import compare
from aft.experiments import compose_experiment

PAPER = Path(__file__).resolve().parents[2] / "results" / "paper_tables.csv"
ENWIK8 = "enwik8_aft_local32_l24_d256"
K15 = "imagenet_aft_conv_small_k15_h384"


def config(experiment: str, *overrides: str) -> dict[str, Any]:
    """The resolved config eval.py stores: the experiment composed as train.py composes it."""
    return OmegaConf.to_container(compose_experiment(experiment, overrides), resolve=True)


def record(
    experiment: str,
    split: str,
    created: str,
    overrides: list[str] | None = None,
    train_loss: float | None = None,
    run_overrides: tuple[str, ...] = (),
    **metrics: Any,
) -> dict:
    """A record as eval.py writes it, of a run of ``experiment`` launched with ``run_overrides``."""
    return {
        "experiment": experiment,
        "config_hash": "0" * 12,
        "split": split,
        "step": 1000,
        "device": "test GPU",
        "overrides": overrides or [],
        "created": created,
        "command": "python eval.py ...",
        "commit": "0123abc",
        "config": config(experiment, *run_overrides, *(overrides or [])),
        "train_objective": None if train_loss is None else {"loss": train_loss, "first_step": 900, "last_step": 1000},
        "metrics": {"count": 10, "complete": True, **metrics},
    }


SYNTHETIC = {
    "old.json": record(ENWIK8, "test", "2026-01-01T00:00:00+00:00", loss=0.9, bits=1.3, unit="bpc"),
    "new.json": record(
        ENWIK8, "test", "2026-02-01T00:00:00+00:00", train_loss=0.98 * math.log(2), loss=0.8, bits=1.16, unit="bpc"
    ),
    # an un-augmented pass over the train split is not the training objective: it fills no train column
    "train.json": record(ENWIK8, "train", "2026-03-01T00:00:00+00:00", loss=0.3, bits=0.5, unit="bpc"),
    "valid.json": record(ENWIK8, "valid", "2026-03-01T00:00:00+00:00", loss=0.1, bits=0.5, unit="bpc"),
    "cifar.json": {
        **record(
            "cifar10_aft_simple_l24_d256", "test", "2026-02-01T00:00:00+00:00", loss=2.0, bits=2.95, unit="bits_per_dim"
        ),
        "weights": "model_ema",
    },
    "k15.json": record(
        K15,
        "val",
        "2026-02-01T00:00:00+00:00",
        train_loss=2.9,
        loss=1.0,
        top1=80.5,
        top5=95.0,
        samples_per_sec=900.0,
        mem_gb=3.0,
    ),
    "k15_384.json": record(
        K15,
        "val",
        "2026-02-02T00:00:00+00:00",
        ["data.eval_image_size=384"],
        loss=1.0,
        top1=81.2,
        top5=95.0,
    ),
    "partial.json": {
        **record(
            "imagenet_aft_conv_small_k11_h384", "val", "2026-02-03T00:00:00+00:00", loss=1.0, top1=10.0, top5=20.0
        ),
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
    assert pngs == [
        f"table{t}_{kind}.png"
        for t, kind in [
            ("11", "curve"),
            ("2", "speed_memory"),
            ("4", "speed_memory"),
            ("5", "curve"),
            ("6", "curve"),
            ("7", "speed_memory"),
            ("8", "speed_memory"),
        ]
    ]
    return report.read_text()


def section(report: str, heading: str) -> str:
    """The body of the section whose heading starts with ``heading``."""
    return report.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]


def row(report: str, heading: str, label: str) -> str:
    """The Markdown line of row ``label`` in the section whose heading starts with ``heading``."""
    (line,) = [line for line in section(report, heading).splitlines() if line.startswith(f"| {label} |")]
    return line


def test_report_with_some_runs(tmp_path: Path) -> None:
    report = run(tmp_path, SYNTHETIC)
    assert "from 8 run record(s), 0 of them of a modified config" in report
    local32 = row(report, "Table 4:", "AFT-local-32 L=24 d=256 h=1 T=1024")
    # the newest test record; train bpc from the logged training objective (nats -> bits)
    assert "0.972 / 0.9800 (+0.0080)" in local32 and "1.154 / 1.1600 (+0.0060)" in local32
    assert "2.04 / not measured" in local32 and "11.2 / not measured" in local32
    assert "1.154 / 1.1600 (+0.0060)" in row(report, "Table 5:", "AFT-local-32 L=24 d=256")
    cifar = row(report, "Table 2:", "AFT-simple L=24 d=256 h=1")
    assert "2.89 / 2.950 (+0.060)" in cifar and "2.82 / not measured" in cifar  # bits/dim; no objective logged
    k15 = row(report, "Table 7:", "AFT-conv small kernel=15 heads=384")
    assert "81.0 / 80.50 (-0.50)" in k15 and "936 / 900.0 (-36.0)" in k15 and "3.2 / 3.00 (-0.20)" in k15
    assert "23.0 / 23.02 (+0.02)" in k15  # #params from the config
    assert "2.93 / 2.900 (-0.030)" in row(report, "Table 11:", "AFT-conv small kernel=15 heads=384")  # objective
    assert "81.6 / 81.20 (-0.40)" in row(report, "§5.3", "AFT-conv small kernel=15 heads=384 eval crop 384")
    assert "80.8 / not measured" in row(report, "Table 7:", "AFT-conv small kernel=11 heads=384")  # incomplete
    assert "76.9 / not run" in row(report, "Table 7:", "ResNet50 kernel=3")
    assert "3.14 / no config" in row(report, "Table 2:", "PixelCNN")
    assert (
        "- `new.json`: split test, trained weights, step 1000, test GPU, 2026-02-01T00:00:00+00:00, commit 0123abc"
        in report
    )
    assert "- `cifar.json`: split test, EMA weights, step 1000" in report
    assert "old.json" not in report and "valid.json" not in report and "train.json" not in report
    assert "logged steps" in section(report, "Table 11:") and "logged steps" in section(report, "Table 4:")


def test_only_records_of_the_experiments_config_count(tmp_path: Path) -> None:
    """A 20-step run of a shrunk model is listed apart, not put in the paper's row; paths, device and
    logging may differ."""
    shrunk = ("model.depth=1", "model.dim=32", "trainer.max_steps=20")
    elsewhere = ("data.root=/elsewhere/enwik8", "trainer.device=cpu", "trainer.log_every=1", "data.num_workers=0")
    records = {
        "paper.json": record(
            ENWIK8, "test", "2026-02-01T00:00:00+00:00", run_overrides=elsewhere, loss=0.8, bits=1.16, unit="bpc"
        ),
        "shrunk.json": record(
            ENWIK8, "test", "2026-03-01T00:00:00+00:00", run_overrides=shrunk, loss=3.0, bits=4.3, unit="bpc"
        ),
        "cifar.json": record(
            "cifar10_aft_simple_l24_d256",
            "test",
            "2026-02-01T00:00:00+00:00",
            run_overrides=("seed=1",),
            loss=2.0,
            bits=2.95,
            unit="bits_per_dim",
        ),
    }
    report = run(tmp_path, records)
    assert "from 3 run record(s), 2 of them of a modified config" in report
    assert "1.154 / 1.1600 (+0.0060)" in row(report, "Table 4:", "AFT-local-32 L=24 d=256 h=1 T=1024")
    table4 = section(report, "Table 4:")
    assert "- `paper.json`: split test" in table4
    (shrunk_line,) = [line for line in table4.splitlines() if line.startswith("- `shrunk.json`")]
    assert "model.depth: 24 -> 1" in shrunk_line and "model.dim: 256 -> 32" in shrunk_line
    assert "trainer.max_steps: None -> 20" in shrunk_line
    assert "2.89 / modified runs only" in row(report, "Table 2:", "AFT-simple L=24 d=256 h=1")
    assert "seed: 0 -> 1" in section(report, "Table 2:")


def test_a_record_without_its_config_is_not_counted() -> None:
    legacy = {**record(ENWIK8, "test", "2026-01-01T00:00:00+00:00", bits=1.2, unit="bpc")}
    del legacy["config"]
    counted, modified = compare.split_records({"legacy.json": legacy}, {ENWIK8})
    assert counted == {} and "re-run eval.py" in modified["legacy.json"][0]


def test_report_without_runs_is_deterministic(tmp_path: Path) -> None:
    first = run(tmp_path / "a", {})
    assert "from 0 run record(s)" in first and "0 of 191 paper numbers" in first
    assert "Records:" not in first and "1.154 / not run" in first
    # per layer: Q, K, V and the position bias without the output projection, as the paper counts
    assert "0.6 / 0.59 (-0.01)" in row(first, "Table 3:", "Factorized (default) (AFT-local-256 L=24 d=256)")
    assert "9.6 / 9.63 (+0.03)" in row(first, "Table 3:", "Non Factorized (AFT-local-256 L=24 d=256)")
    second = run(tmp_path / "b", {})
    assert second == first.replace(str(tmp_path / "a"), str(tmp_path / "b"))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [([], "x"), (["data.root=/data"], "x"), (["data.eval_image_size=384"], "x_eval384")],
)
def test_records_at_another_crop_size_count_for_the_eval_experiment(overrides: list[str], expected: str) -> None:
    assert compare.record_experiment({"experiment": "x", "overrides": overrides}) == expected
