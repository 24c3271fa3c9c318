"""results/paper_tables.csv: every number of Tables 2-12 (and of the §5.3 and §8 text) once,
each tied to an experiment config that exists."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from aft.experiments import experiment_names

CSV = Path(__file__).resolve().parents[2] / "results" / "paper_tables.csv"
# Numbers per table, counted in the paper (descriptor columns L, d, h, T, Kernel, Heads and the
# swept window / T / kernel are part of the row label, not numbers):
EXPECTED_COUNTS = {
    "2": 28,  # PixelCNN 2, PixelCNN++ 1, PixelSNAIL 1, Sparse Transformer 1, Image Transformer 3, 5 rows x 4
    "3": 6,  # 2 rows x (#params/layer, train loss, test loss)
    "4": 36,  # 9 rows x (train bpc, test bpc, iters/s, GB/GPU)
    "5": 22,  # 11 window sizes x (train bpc, test bpc)
    "6": 6,  # 3 lengths x (train bpc, test bpc)
    "7": 48,  # 12 rows x (top-1, #params, images/s, memory)
    "8": 12,  # 3 rows x (top-1, #params, images/s, memory)
    "9": 4,  # 2 rows x (train loss, top-1)
    "10": 4,  # 2 rows x (train loss, top-1)
    "11": 14,  # 7 columns (6 kernels, DeiT small) x (train loss, top-1)
    "12": 4,  # 2 kernels x (with q, w/o q)
    "sec5.3": 4,  # global connectivity 80.8 vs 79.9; kernel 15 at 224 vs 384 crops: 81.0 vs 81.6
    "sec8": 3,  # default 80.8, sparsity 80.9, Gumbel 79.9
}
METRICS = {
    "train_loss",
    "test_loss",
    "train_bpc",
    "test_bpc",
    "iters_per_sec",
    "gb_per_gpu",
    "top1",
    "params_m",
    "params_per_layer_m",
    "images_per_sec",
    "mem_gb",
}
NOT_A_PAPER_ROW = {"embedded_text_aft_local", "embedded_images_aft_conv"}  # the CPU demos (text, images)


def rows() -> list[dict[str, str]]:
    with open(CSV, newline="") as f:
        return list(csv.DictReader(f))


def test_columns_and_values() -> None:
    table = rows()
    assert list(table[0]) == ["table", "row", "experiment", "metric", "value"]
    assert {r["metric"] for r in table} <= METRICS
    assert all(float(r["value"]) > 0 for r in table)
    keys = Counter((r["table"], r["row"], r["metric"]) for r in table)
    assert [key for key, n in keys.items() if n > 1] == []


def test_counts_per_table() -> None:
    assert Counter(r["table"] for r in rows()) == EXPECTED_COUNTS


def test_named_experiments_exist_and_every_experiment_is_named() -> None:
    named = {r["experiment"] for r in rows() if r["experiment"]}
    assert named - set(experiment_names()) == set()
    assert set(experiment_names()) - named == NOT_A_PAPER_ROW


@pytest.mark.parametrize(
    ("table", "row", "metric", "value"),
    [  # spot checks against the paper's text
        ("2", "AFT-local-256 L=24 d=256 h=1", "test_loss", "2.74"),
        ("4", "AFT-local-32 L=12 d=512 h=1 T=1024", "train_bpc", "0.854"),
        ("5", "AFT-local-32 L=24 d=256", "test_bpc", "1.154"),
        ("7", "AFT-conv small kernel=15 heads=384", "top1", "81.0"),
        ("8", "AFT-conv ft kernel=25 heads=32", "images_per_sec", "98.5"),
        ("12", "AFT-conv small kernel=15 heads=384 w/o q", "top1", "79.5"),
    ],
)
def test_spot_values(table: str, row: str, metric: str, value: str) -> None:
    found = [r["value"] for r in rows() if (r["table"], r["row"], r["metric"]) == (table, row, metric)]
    assert found == [value]
