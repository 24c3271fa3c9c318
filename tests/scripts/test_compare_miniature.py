"""compare.py --miniature: the miniatures' report, MINIATURE.md, from records of several seeds per row:
mean and standard deviation over seeds, the paper's order of the rows, the verdict per ordered pair,
the learning curves, and the records of another config listed apart. The miniature configs here
are fake (depth 1 of the paper row) in a copy of the config tree."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aft import experiments, resources
from aft.commands import compare
from aft.seed_statistics import NOT_RESOLVED, REPRODUCED, REVERSED, Summary, judge, summarize
from tests.scripts.test_compare import PAPER, record, section

FULL, DENSE = "imagenet_aft_full_small", "imagenet_aft_full_small_dense"
K7, NAIVE, LOCAL, K15 = (
    "imagenet_aft_conv_small_k7_h384",
    "imagenet_aft_conv_small_k7_h384_naive",
    "imagenet_aft_conv_small_k7_h384_local_only",
    "imagenet_aft_conv_small_k15_h384",
)
CIFAR = "cifar10_aft_local256_l24_d256"
MINIATURES = {
    "table7": [FULL],  # the row Table 9 shares: the same config under another name
    "table9": [DENSE, FULL],
    "table10": [NAIVE, K7],
    "sec5.3": [K7, LOCAL, K15],
    "table3": [CIFAR],  # the dense row has no miniature here
}


def _clear_caches() -> None:
    for cached in (experiments._compose, compare._paper_config, compare.config_count):
        cached.cache_clear()


@pytest.fixture
def fake_minis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The config tree without its miniatures, plus :data:`MINIATURES`: each paper row at depth 1."""
    root = tmp_path / "configs"
    shutil.copytree(resources.config_dir(), root, ignore=shutil.ignore_patterns(compare.MINIATURE))
    for table, names in MINIATURES.items():
        folder = root / "experiment" / compare.MINIATURE / table
        folder.mkdir(parents=True)
        for name in names:
            text = f"# @package _global_\ndefaults:\n  - /experiment/{name}\n  - _self_\n\nmodel:\n  depth: 1\n"
            (folder / f"{name}.yaml").write_text(text)
    monkeypatch.setattr(resources, "config_dir", lambda: root)
    monkeypatch.setattr(compare, "config_dir", lambda: root)
    _clear_caches()
    yield root
    _clear_caches()


def curve(steps: list[int], values: list[float]) -> dict[str, list]:
    return {"step": steps, "value": values}


def image_record(name: str, seed: int, top1: float, train_loss: float, *run_overrides: str) -> dict[str, Any]:
    """A val record of seed ``seed`` of the miniature ``name``, with its learning curves."""
    result = record(
        name,
        "val",
        f"2026-03-0{seed + 1}T00:00:00+00:00",
        train_loss=train_loss,
        run_overrides=(f"seed={seed}", *run_overrides),
        loss=1.0,
        top1=top1,
        top5=99.0,
    )
    series = {"train_loss": curve([10, 20], [3.0, train_loss]), "val_top1": curve([10, 20], [top1 / 2, top1])}
    return {**result, "history": {"valid_split": "val", "series": series}}


def cifar_record(seed: int, bits: float) -> dict[str, Any]:
    name = f"mini/table3/{CIFAR}"
    result = record(
        name,
        "test",
        "2026-03-01T00:00:00+00:00",
        run_overrides=(f"seed={seed}",),
        loss=bits,
        bits=bits,
        unit="bits_per_dim",
    )
    return {**result, "history": {"valid_split": "test", "series": {"test_bits": curve([5, 10], [4.0, bits])}}}


def records() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for seed, (full, dense) in enumerate([(52.0, 41.0), (54.0, 40.0), (50.0, 42.0)]):
        found[f"full-{seed}.json"] = image_record(f"mini/table7/{FULL}", seed, full, 2.0 + seed / 10)
        found[f"dense-{seed}.json"] = image_record(f"mini/table9/{DENSE}", seed, dense, 2.5)
    for seed, (k7, naive, local) in enumerate([(30.0, 40.0, 30.5), (31.0, 41.0, 31.5), (32.0, 42.0, 32.5)]):
        found[f"k7-{seed}.json"] = image_record(f"mini/table10/{K7}", seed, k7, 2.0)
        found[f"naive-{seed}.json"] = image_record(f"mini/table10/{NAIVE}", seed, naive, 2.0)
        found[f"local-{seed}.json"] = image_record(f"mini/sec5.3/{LOCAL}", seed, local, 2.0)
    found["k7-ema.json"] = {**image_record(f"mini/sec5.3/{K7}", 3, 31.0, 2.0), "weights": "model_ema"}
    found["k15-0.json"] = image_record(f"mini/sec5.3/{K15}", 0, 33.0, 2.0)  # one seed
    found["dense-wide.json"] = image_record(f"mini/table9/{DENSE}", 3, 60.0, 2.0, "model.dim=48")  # another config
    found["cifar-0.json"], found["cifar-1.json"] = cifar_record(0, 3.0), cifar_record(1, 3.1)
    found["paper-row.json"] = record(FULL, "val", "2026-03-01T00:00:00+00:00", top1=79.0)  # not a miniature's
    return found


def row(report: str, heading: str, label: str) -> str:
    """The results line of row ``label`` in the section of ``heading`` (the first line that starts with it:
    the verdicts' lines follow)."""
    return next(line for line in section(report, heading).splitlines() if line.startswith(f"| {label} |"))


def run(tmp_path: Path, content: dict[str, dict[str, Any]]) -> tuple[str, Path]:
    runs = tmp_path / "miniature"
    runs.mkdir()
    for name, value in content.items():
        (runs / name).write_text(json.dumps(value))
    report, figures = tmp_path / "out" / "MINIATURE.md", tmp_path / "out" / "figures"
    compare.main(
        ["--miniature", "--tables", str(PAPER), "--runs", str(runs), "--report", str(report), "--figures", str(figures)]
    )
    return report.read_text(), figures


def test_the_report_averages_seeds_orders_rows_and_judges_pairs(tmp_path: Path, fake_minis: Path) -> None:
    report, figures = run(tmp_path, records())
    assert "from 21 run record(s): 19 counted for a miniature row, 1 of a modified config" in report
    headings = [line for line in report.splitlines() if line.startswith("## ")]
    assert [h.split(":")[0] for h in headings] == [
        "## Miniature of Table 3",
        "## Miniature of Table 7",
        "## Miniature of Table 9",
        "## Miniature of Table 10",
        "## Miniature of §5.3 text",
        "## Table 3",
    ]  # sweep_tables.yaml's order, then the #params per layer
    # Table 9: the factorized row's runs are Table 7's miniature (the same config); mean ± std (n)
    factorized = row(report, "Miniature of Table 9", "AFT-full small Factorized (default)")
    assert f"| `mini/table9/{FULL}` | 3.08 | 2.100 ± 0.100 (n=3) | 79.8 | 52.00 ± 2.00 (n=3) |" in factorized
    assert "| 78.2 | 41.00 ± 1.00 (n=3) |" in row(report, "Miniature of Table 9", "AFT-full small Non Factorized")
    table9 = section(report, "Miniature of Table 9")
    assert "- paper: AFT-full small Factorized (default) (79.8) > AFT-full small Non Factorized (78.2)" in table9
    assert "- ours (means over seeds): AFT-full small Factorized (default) (52.00) > AFT-full small Non" in table9
    # d = 52 - 41 = 11 > m = 2 * max(2, 1) / sqrt(3) = 2.31
    assert "| 79.8 vs 78.2 | +11.00 | 2.31 | reproduced |" in table9
    assert "Verdicts on 1 pair(s) the paper orders: 1 reproduced, 0 reversed, 0 not resolved." in table9
    (modified,) = [line for line in table9.splitlines() if line.startswith("- `dense-wide.json`")]
    assert "model.dim: 384 -> 48" in modified and "seed" not in modified  # the seed may differ
    assert "- seed 1, `full-1.json`: split val, trained weights, step 1000, test GPU" in table9
    assert "commit 0123abc" in table9
    # Table 10: the paper's better row is worse in ours by more than the margin
    assert "| 80.8 vs 79.4 | -10.00 | 1.15 | reversed |" in section(report, "Miniature of Table 10")
    # §5.3: kernel 7's runs are Table 10's and one more (the same config); a difference within the
    # margin, a row of one seed, a row without a miniature
    sec53 = section(report, "Miniature of §5.3")
    k7 = row(report, "Miniature of §5.3", "AFT-conv small kernel=7 heads=384 global connectivity (default)")
    assert "| 80.8 | 31.00 ± 0.82 (n=4) |" in k7
    assert "| 80.8 vs 79.9 | -0.50 | 1.15 | not resolved |" in sec53  # m = 2 * 1.0 / sqrt(3)
    assert "| 81.0 | 33.00 (n=1) |" in row(
        report, "Miniature of §5.3", "AFT-conv small kernel=15 heads=384 eval crop 224"
    )
    assert "| 81.0 vs 80.8 | +2.00 | n < 2 | not resolved |" in sec53
    assert "- seed 3, `k7-ema.json`: split val, EMA weights" in sec53
    assert "Paper rows without a miniature: AFT-conv small kernel=15 heads=384 eval crop 384." in sec53
    # Table 3 (bits/dim, lower is better): two seeds, and a row with no miniature
    table3 = section(report, "Miniature of Table 3")
    assert "| 2.74 | 3.050 ± 0.071 (n=2) |" in table3 and "Order by test loss (lower is better)" in table3
    assert "Verdicts" not in table3  # one row: no pair
    # the learning curves: one figure per table with curves, linked from the report
    assert sorted(p.name for p in figures.glob("*.png")) == [
        "sec5.3_curves.png",
        "table10_curves.png",
        "table3_curves.png",
        "table7_curves.png",
        "table9_curves.png",
    ]
    assert "![table9_curves](figures/table9_curves.png)" in table9
    assert "paper-row.json" not in report


def test_table_3_counts_per_layer_as_the_paper_does(tmp_path: Path, fake_minis: Path) -> None:
    report, _ = run(tmp_path, {})
    layer = section(report, "Table 3: #params per layer")
    assert "without the output projection" in layer and "Table 7's #params count every parameter" in layer
    # the paper's models: Q, K, V + position bias (what 0.6M / 9.6M count), and with the output projection
    assert "| Non Factorized (AFT-local-256 L=24 d=256) | 9.6 | 9.635 | 9.700 | no miniature | no miniature |" in layer
    assert "| Factorized (default) (AFT-local-256 L=24 d=256) | 0.6 | 0.5906 | 0.6564 | 0.5906 | 0.6564 |" in layer
    assert "| 79.8 | not run |" in row(report, "Miniature of Table 9", "AFT-full small Factorized (default)")


def test_only_the_seeds_runs_and_other_experiments_records_are_told_apart(fake_minis: Path) -> None:
    names = [f"mini/table7/{FULL}", f"mini/table9/{FULL}", f"mini/table9/{DENSE}"]
    content = records()
    counted, modified = compare.match_miniatures(content, names)
    assert sorted(counted[f"mini/table9/{FULL}"]) == ["full-0.json", "full-1.json", "full-2.json"]
    assert counted[f"mini/table7/{FULL}"] == counted[f"mini/table9/{FULL}"]
    assert sorted(counted[f"mini/table9/{DENSE}"]) == ["dense-0.json", "dense-1.json", "dense-2.json"]
    assert list(modified) == ["dense-wide.json"]  # paper-row.json: no miniature's, in neither


def test_summaries_over_seeds() -> None:
    summary = summarize([1.0, 2.0, 3.0])
    assert (summary.mean, summary.std, summary.n) == (2.0, 1.0, 3)
    assert summary.standard_error == pytest.approx(1 / math.sqrt(3))
    one = summarize([5.0])
    assert one.mean == 5.0 and math.isnan(one.std) and one.n == 1
    with pytest.raises(ValueError):
        summarize([])


@pytest.mark.parametrize(
    ("better", "worse", "lower_is_better", "verdict"),
    [
        (Summary(80.0, 1.0, 4), Summary(77.0, 2.0, 4), False, REPRODUCED),  # d = 3 > m = 2 * 1.0
        (Summary(80.0, 1.0, 4), Summary(78.0, 2.0, 4), False, NOT_RESOLVED),  # d = 2, not more than m
        (Summary(77.0, 1.0, 4), Summary(80.0, 2.0, 4), False, REVERSED),  # d = -3 < -m
        (Summary(1.10, 0.01, 4), Summary(1.20, 0.02, 4), True, REPRODUCED),  # lower is better: d = 0.1 > 0.02
        (Summary(1.20, 0.01, 4), Summary(1.10, 0.02, 4), True, REVERSED),
        (Summary(80.0, 1.0, 4), Summary(70.0, math.nan, 1), False, NOT_RESOLVED),  # n < 2
        (Summary(80.0, 1.0, 4), None, False, NOT_RESOLVED),  # not run
    ],
)
def test_the_verdict_rule(better: Summary, worse: Summary | None, lower_is_better: bool, verdict: str) -> None:
    assert judge(better, worse, lower_is_better).verdict == verdict


def test_the_mean_curve_averages_the_seeds_that_logged_each_step() -> None:
    steps, values = compare.mean_curve([curve([1, 2, 3], [3.0, 2.0, 1.0]), curve([1, 2], [5.0, 4.0])])
    assert steps == [1, 2, 3] and values == [4.0, 3.0, 1.0]


def test_the_miniature_report_has_its_own_default_paths() -> None:
    results = resources.results_dir()
    args = compare.parse_args(["--miniature"])
    assert (args.runs, args.report, args.figures) == (
        results / "runs" / "miniature",
        results / "MINIATURE.md",
        results / "figures" / "miniature",
    )
    assert compare.parse_args([]).report == results / "REPORT.md"
