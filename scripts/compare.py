"""Compare the paper's tables with our evaluation records: ``results/REPORT.md`` and PNG figures.

    python scripts/compare.py
    python scripts/compare.py --runs results/runs --report results/REPORT.md --figures results/figures

Inputs: ``results/paper_tables.csv`` (every number of Tables 2-12 and of the §5.3 and §8 text,
columns ``table,row,experiment,metric,value``) and the JSON records that ``eval.py`` writes under
``results/runs/``. Per experiment and metric the newest complete record (its ``created`` time)
that measures the metric is used:

* LM records (``unit`` bpc or bits_per_dim): ``bits`` of the ``test`` split -> ``test_bpc`` /
  ``test_loss``; of the ``train`` split -> ``train_bpc`` / ``train_loss`` (bits/dim).
* Image records: ``top1`` of the ``val`` split; ``loss`` (nats) of the ``train`` split ->
  ``train_loss``; ``samples_per_sec`` -> ``images_per_sec`` and ``mem_gb`` (``eval.py --speed``).
* A record evaluated with the override ``data.eval_image_size=N`` counts for ``<experiment>_evalN``
  (§5.3 "Variable size inputs": the last Table 7 row evaluated on 384 crops).
* ``params_m`` / ``params_per_layer_m`` are counted from the experiment config on the meta
  device, with or without a run.

Cells read "paper / ours (difference)"; "not run" when the experiment has no record,
"not measured" when its records lack the metric (e.g. training iters/s), "no config" for rows
without a model (PixelCNN family). The report holds no timestamp but the records' own.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from aft.experiments import build_on_meta, compose_experiment, count_parameters

TEST_SPLITS = ("test", "val")  # Enwik8/CIFAR10 test split; ImageNet's test set is its val split
TRAIN_SPLIT = "train"
CONFIG_METRICS = ("params_m", "params_per_layer_m")
EVAL_SIZE_OVERRIDE = re.compile(r"^data\.eval_image_size=(\d+)$")

TITLES = {
    "2": "Table 2: CIFAR10 NLL in bits/dim; iters/s and GB/GPU while training (batch 32, 8 V100)",
    "3": "Table 3: factorized position bias, CIFAR10 (bits/dim)",
    "4": "Table 4: Enwik8 bpc; iters/s and GB/GPU while training (batch 128, 8 V100)",
    "5": "Table 5: Enwik8 bpc vs the local window size s of AFT-local (L=24, d=256)",
    "6": "Table 6: Enwik8 bpc vs the sequence length T (AFT-local-32, L=24, d=256)",
    "7": "Table 7: ImageNet-1K, 224 crops; images/s and memory in inference (batch 256, one V100)",
    "8": "Table 8: fine-tuning AFT-conv from DeiT base on 384 crops",
    "9": "Table 9: factorized position bias of AFT-full (ImageNet-1K)",
    "10": "Table 10: reparameterization of AFT-conv, kernel 7 x 7 (ImageNet-1K)",
    "11": "Table 11: kernel size of AFT-conv small, 384 heads (ImageNet-1K)",
    "12": "Table 12: AFT-conv without the query term (ImageNet-1K)",
    "sec5.3": "§5.3 text: global connectivity (kernel 7) and 384-crop evaluation (kernel 15)",
    "sec8": "§8 text: sparsity regularization (Eq. 9) and Gumbel-softmax position biases (Eq. 10)",
}
_TRAINING_SPEED = "iters/s and GB/GPU are training measurements; eval.py records inference speed only."
_TRAIN_LOSS = (
    "Train loss: the paper's is the training objective (Mixup/CutMix, label smoothing, nats); ours is "
    "the loss of an un-augmented `eval.py --splits train` pass."
)
NOTES = {"2": _TRAINING_SPEED, "4": _TRAINING_SPEED, "9": _TRAIN_LOSS, "10": _TRAIN_LOSS, "11": _TRAIN_LOSS}
METRIC_LABELS = {
    "train_loss": "train loss",
    "test_loss": "test loss",
    "train_bpc": "train bpc",
    "test_bpc": "test bpc",
    "iters_per_sec": "iters/s",
    "gb_per_gpu": "GB/GPU",
    "top1": "top-1 %",
    "params_m": "#params (M)",
    "params_per_layer_m": "#params/layer (M)",
    "images_per_sec": "images/s",
    "mem_gb": "mem (GB)",
}
# table -> (x axis label, regex of x in the row label, metrics): line plots of paper vs ours
CURVES = {
    "5": ("window size s", r"AFT-local-(\d+)", ("train_bpc", "test_bpc")),
    "6": ("sequence length T", r"T=(\d+)", ("train_bpc", "test_bpc")),
    "11": ("kernel size", r"kernel=(\d+)", ("train_loss", "top1")),
}
# table -> (speed metric, memory metric): grouped bars of paper vs ours
BARS = {
    "2": ("iters_per_sec", "gb_per_gpu"),
    "4": ("iters_per_sec", "gb_per_gpu"),
    "7": ("images_per_sec", "mem_gb"),
    "8": ("images_per_sec", "mem_gb"),
}


@dataclass(frozen=True)
class PaperValue:
    """One number of the paper (a row of ``paper_tables.csv``); ``text`` keeps its printed digits."""

    table: str
    row: str
    experiment: str
    metric: str
    text: str

    @property
    def value(self) -> float:
        return float(self.text)


@dataclass(frozen=True)
class Measured:
    """One of our numbers and where it comes from: a record file name, or ``config``."""

    value: float
    source: str


@dataclass(frozen=True)
class Cell:
    """A paper number next to ours; ``ours`` is None with a ``status`` explaining why."""

    paper: PaperValue
    ours: Measured | None
    status: str


def load_paper(path: Path) -> list[PaperValue]:
    """The rows of ``paper_tables.csv`` in file order."""
    with open(path, newline="") as f:
        return [PaperValue(r["table"], r["row"], r["experiment"], r["metric"], r["value"]) for r in csv.DictReader(f)]


def load_records(runs_dir: Path) -> dict[str, dict[str, Any]]:
    """``eval.py`` records of ``runs_dir`` by file name (none if the folder does not exist)."""
    return {path.name: json.loads(path.read_text()) for path in sorted(runs_dir.glob("*.json"))}


def record_experiment(record: dict[str, Any]) -> str:
    """The experiment a record measures: ``<experiment>_evalN`` when evaluated at another crop size."""
    for override in record.get("overrides", []):
        match = EVAL_SIZE_OVERRIDE.match(override)
        if match:
            return f"{record['experiment']}_eval{match.group(1)}"
    return record["experiment"]


def paper_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The paper metrics a record measures (see the module docstring)."""
    metrics, split = record["metrics"], record["split"]
    if split not in (*TEST_SPLITS, TRAIN_SPLIT) or not metrics.get("complete", True):
        return {}
    role = "train" if split == TRAIN_SPLIT else "test"
    if "unit" in metrics:  # language / pixel modeling
        return {f"{role}_bpc" if metrics["unit"] == "bpc" else f"{role}_loss": metrics["bits"]}
    if role == "train":
        return {"train_loss": metrics["loss"]}
    found = {"top1": metrics["top1"]}
    if "samples_per_sec" in metrics:
        found["images_per_sec"] = metrics["samples_per_sec"]
    if "mem_gb" in metrics:
        found["mem_gb"] = metrics["mem_gb"]
    return found


def newest_measurements(records: dict[str, dict[str, Any]]) -> dict[tuple[str, str], Measured]:
    """``(experiment, metric) -> Measured`` from the newest record measuring it (ties: file name)."""
    best: dict[tuple[str, str], tuple[str, str, float]] = {}
    for name, record in records.items():
        for metric, value in paper_metrics(record).items():
            key = (record_experiment(record), metric)
            candidate = (record.get("created", ""), name, value)
            if key not in best or candidate[:2] > best[key][:2]:
                best[key] = candidate
    return {key: Measured(value, name) for key, (_, name, value) in best.items()}


@cache
def config_count(experiment: str, metric: str) -> float:
    """#params in millions of the experiment's model (``params_m``) or of its first token mixer."""
    model = build_on_meta(compose_experiment(experiment).model)
    counted = model.blocks[0].mixer if metric == "params_per_layer_m" else model
    return count_parameters(counted) / 1e6


def join(paper: list[PaperValue], records: dict[str, dict[str, Any]]) -> list[Cell]:
    """Every paper number with ours, or the reason it is missing."""
    measured = newest_measurements(records)
    experiments_run = {record_experiment(r) for r in records.values()}
    cells = []
    for value in paper:
        if not value.experiment:
            cells.append(Cell(value, None, "no config"))
        elif value.metric in CONFIG_METRICS:
            cells.append(Cell(value, Measured(config_count(value.experiment, value.metric), "config"), ""))
        elif (value.experiment, value.metric) in measured:
            cells.append(Cell(value, measured[value.experiment, value.metric], ""))
        else:
            cells.append(Cell(value, None, "not measured" if value.experiment in experiments_run else "not run"))
    return cells


def _decimals(text: str) -> int:
    return len(text.partition(".")[2])


def format_cell(cell: Cell) -> str:
    """``paper / ours (difference)``, ours with one decimal more than the paper, or ``paper / status``."""
    if cell.ours is None:
        return f"{cell.paper.text} / {cell.status}"
    digits = _decimals(cell.paper.text) + 1
    ours, diff = cell.ours.value, cell.ours.value - cell.paper.value
    return f"{cell.paper.text} / {ours:.{digits}f} ({diff:+.{digits}f})"


def _by_table(cells: list[Cell]) -> dict[str, list[Cell]]:
    tables: dict[str, list[Cell]] = defaultdict(list)
    for cell in cells:
        tables[cell.paper.table].append(cell)
    return tables


def markdown_table(cells: list[Cell]) -> list[str]:
    """One line per paper row, one column per metric."""
    metrics = list(dict.fromkeys(c.paper.metric for c in cells))
    rows: dict[tuple[str, str], dict[str, Cell]] = defaultdict(dict)
    for cell in cells:
        rows[cell.paper.row, cell.paper.experiment][cell.paper.metric] = cell
    header = ["row", "experiment", *(f"{METRIC_LABELS[m]}: paper / ours (Δ)" for m in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (row, experiment), by_metric in rows.items():
        values = [format_cell(by_metric[m]) if m in by_metric else "" for m in metrics]
        lines.append("| " + " | ".join([row, f"`{experiment}`" if experiment else "", *values]) + " |")
    return lines


def sources(cells: list[Cell], records: dict[str, dict[str, Any]]) -> list[str]:
    """The records behind a table's numbers: file, split, step, device, creation time, commit."""
    names = sorted({c.ours.source for c in cells if c.ours is not None and c.ours.source != "config"})
    lines = []
    for name in names:
        r = records[name]
        line = f"- `{name}`: split {r['split']}, step {r.get('step')}, {r.get('device')}, {r.get('created')}"
        lines.append(line + (f", commit {r['commit']}" if "commit" in r else ""))
    return lines


def _points(cells: list[Cell], metric: str, pattern: str) -> tuple[list[tuple[int, float, float | None]], list[Cell]]:
    """``(x, paper, ours)`` of the rows whose label matches ``pattern``, and the other rows' cells."""
    points, references = [], []
    for cell in cells:
        if cell.paper.metric != metric:
            continue
        match = re.search(pattern, cell.paper.row)
        if match:
            points.append((int(match.group(1)), cell.paper.value, cell.ours.value if cell.ours else None))
        else:
            references.append(cell)
    return sorted(points), references


def plot_curve(cells: list[Cell], table: str, path: Path) -> None:
    """Paper vs ours against the table's varied quantity, one panel per metric (Tables 5, 6, 11)."""
    xlabel, pattern, metrics = CURVES[table]
    fig = Figure(figsize=(5 * len(metrics), 3.6))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        points, references = _points(cells, metric, pattern)
        positions = range(len(points))  # even spacing: the swept values are (mostly) powers of two
        ax.plot(positions, [p[1] for p in points], "o-", label="paper")
        ours = [(i, p[2]) for i, p in zip(positions, points, strict=True) if p[2] is not None]
        if ours:
            ax.plot(*zip(*ours, strict=True), "s--", label="ours")
        for reference in references:
            ax.axhline(reference.paper.value, color="gray", linestyle=":", label=f"{reference.paper.row} (paper)")
        ax.set_xticks(list(positions), [str(p[0]) for p in points])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.legend(fontsize=8)
    fig.suptitle(TITLES[table], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_bars(cells: list[Cell], table: str, path: Path) -> None:
    """Grouped bars, paper vs ours, of the speed and memory columns (Tables 2, 4, 7, 8)."""
    metrics = BARS[table]
    fig = Figure(figsize=(6 * len(metrics), 4))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        chosen = [c for c in cells if c.paper.metric == metric]
        positions = range(len(chosen))
        ax.barh([p - 0.2 for p in positions], [c.paper.value for c in chosen], height=0.4, label="paper")
        ours = [c.ours.value if c.ours else 0.0 for c in chosen]
        ax.barh([p + 0.2 for p in positions], ours, height=0.4, label="ours (0: not measured)")
        ax.set_yticks(list(positions), [c.paper.row for c in chosen], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(METRIC_LABELS[metric])
        ax.legend(fontsize=8)
    fig.suptitle(TITLES[table], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_figures(tables: dict[str, list[Cell]], figures_dir: Path) -> dict[str, list[Path]]:
    """The curve and bar figures of every table that has one: ``table -> [png]``."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[Path]] = defaultdict(list)
    for table, cells in tables.items():
        if table in CURVES:
            path = figures_dir / f"table{table}_curve.png"
            plot_curve(cells, table, path)
            written[table].append(path)
        if table in BARS:
            path = figures_dir / f"table{table}_speed_memory.png"
            plot_bars(cells, table, path)
            written[table].append(path)
    return written


def render_report(
    cells: list[Cell], records: dict[str, dict[str, Any]], figures: dict[str, list[Path]], report: Path, args: str
) -> str:
    """The Markdown of ``REPORT.md``."""
    tables = _by_table(cells)
    found = sum(c.ours is not None and c.ours.source != "config" for c in cells)
    lines = [
        "# The paper's tables vs our runs",
        "",
        f"Generated by `python scripts/compare.py{args}` from {len(records)} run record(s). "
        f"{found} of {len(cells)} paper numbers have a measured counterpart; #params are counted from "
        "the experiment configs. Cells read `paper / ours (ours - paper)`.",
    ]
    for table, table_cells in tables.items():
        lines += ["", f"## {TITLES[table]}", ""]
        if table in NOTES:
            lines += [NOTES[table], ""]
        lines += markdown_table(table_cells)
        for figure in figures.get(table, []):
            lines += ["", f"![{figure.stem}]({os.path.relpath(figure, report.parent)})"]
        used = sources(table_cells, records)
        if used:
            lines += ["", "Records:", *used]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=Path, default=Path("results/paper_tables.csv"))
    parser.add_argument("--runs", type=Path, default=Path("results/runs"), help="eval.py records (*.json)")
    parser.add_argument("--report", type=Path, default=Path("results/REPORT.md"))
    parser.add_argument("--figures", type=Path, default=Path("results/figures"))
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    records = load_records(args.runs)
    cells = join(load_paper(args.tables), records)
    figures = write_figures(_by_table(cells), args.figures)
    command = "".join(f" {a}" for a in argv)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(render_report(cells, records, figures, args.report, command))
    print(f"wrote {args.report} and {sum(map(len, figures.values()))} figures in {args.figures}")


if __name__ == "__main__":
    main(sys.argv[1:])
