"""Compare the paper's tables with our evaluation records: ``results/REPORT.md`` and PNG figures.

    python scripts/compare.py                     # aft-compare, installed
    python scripts/compare.py --runs results/runs --report results/REPORT.md --figures results/figures

Inputs: ``results/paper_tables.csv`` (every number of Tables 2-12 and of the §5.3 and §8 text,
columns ``table,row,experiment,metric,value``; an installed package carries its copy) and the JSON
records that ``eval.py`` writes under ``results/runs/`` (``eval.py run=<run> out=results/runs``). The
default folders are the checkout's ``results/`` from any folder, or ``./results`` for an installed
package (:func:`aft.resources.results_dir`). A record counts for a paper row only
when its config equals the row's experiment config (``configs/experiment/<name>.yaml`` composed as
``train.py`` composes it), ignoring the keys of :data:`aft.run_name.NON_RESULT_KEYS` (paths,
workers, device, logging, evaluation and checkpoint frequency, ...); the other records of the
row's experiment are listed apart as "modified", with the keys that differ. Per experiment and
metric the newest complete counted record (its ``created`` time) that measures the metric is used:

* Train columns (``train_loss``, ``train_bpc``): the training objective the run logged, which
  eval.py carries as ``train_objective`` (the mean of ``metrics.jsonl``'s ``train_loss`` over the
  last epoch's logged steps, see :func:`aft.runs.train_objective`): with Mixup, CutMix, label
  smoothing and dropout as configured, as the paper's train losses are; in bits for LM records.
* LM records (``unit`` bpc or bits_per_dim): ``bits`` of the ``test`` split -> ``test_bpc`` /
  ``test_loss`` (bits/dim).
* Image records: ``top1`` of the ``val`` split; ``samples_per_sec`` -> ``images_per_sec`` and
  ``mem_gb`` (``eval.py speed=true``).
* A record evaluated with the override ``data.eval_image_size=N`` counts for ``<experiment>_evalN``
  (§5.3 "Variable size inputs": the last Table 7 row evaluated on 384 crops).
* ``params_m`` is counted from the experiment config on the meta device, with or without a run;
  ``params_per_layer_m`` counts the first block's token mixer without its output projection
  (Q, K, V and the position bias), as the paper's Table 3 does.

Cells read "paper / ours (difference)"; "not run" when the experiment has no record, "modified
runs only" when all its records differ from its config, "not measured" when its records lack the
metric (e.g. training iters/s), "no config" for rows without a model (PixelCNN family). The report
holds no timestamp but the records' own.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from aft.cli import user_errors_exit
from aft.experiments import build_on_meta, compose_experiment, count_parameters
from aft.extras import require
from aft.resources import PAPER_TABLES, project_path, results_dir
from aft.run_name import result_config

TEST_SPLITS = ("test", "val")  # Enwik8/CIFAR10 test split; ImageNet's test set is its val split
CONFIG_METRICS = ("params_m", "params_per_layer_m")
EVAL_SIZE_OVERRIDE = re.compile(r"^data\.eval_image_size=(\d+)$")
OUTPUT_PROJECTION = "proj."  # the AFT layers' output projection, left out of params_per_layer_m
SHOWN_DIFFERENCES = 4  # keys listed per modified record

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
TRAIN_NOTE = (
    "Train columns: the training objective as logged (`metrics.jsonl` `train_loss`, the mean over the "
    "last epoch's logged steps; with Mixup/CutMix, label smoothing and dropout as configured), as the "
    "paper's; bits for bits/dim and bpc."
)
NOTES = {
    "2": _TRAINING_SPEED,
    "3": "#params/layer: the token mixer's Q, K, V projections and position bias, without its output "
    "projection, which is what the paper's 0.6M / 9.6M count; Table 7's #params count every parameter.",
    "4": _TRAINING_SPEED,
}
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


def eval_size_overrides(record: dict[str, Any]) -> tuple[str, ...]:
    """The record's ``data.eval_image_size=N`` override, if it has one."""
    return tuple(o for o in record.get("overrides", []) if EVAL_SIZE_OVERRIDE.match(o))[:1]


def record_experiment(record: dict[str, Any]) -> str:
    """The experiment a record measures: ``<experiment>_evalN`` when evaluated at another crop size."""
    sizes = [EVAL_SIZE_OVERRIDE.match(o).group(1) for o in eval_size_overrides(record)]
    return record["experiment"] + "".join(f"_eval{size}" for size in sizes)


@cache
def _paper_config(experiment: str, overrides: tuple[str, ...]) -> dict[str, Any]:
    """The leaves of the experiment's composed config that change the result, by dotted key."""
    config = OmegaConf.to_container(compose_experiment(experiment, overrides), resolve=True)
    return _leaves(result_config(config))


def _leaves(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every non-mapping value of a nested mapping (a list is one value)."""
    if not isinstance(config, dict) or not config:
        return {prefix.removesuffix("."): config}
    leaves: dict[str, Any] = {}
    for key, value in config.items():
        leaves.update(_leaves(value, f"{prefix}{key}."))
    return leaves


def config_differences(record: dict[str, Any]) -> list[str]:
    """``key: paper -> ours`` for each key that changes the result where the record's config differs
    from its experiment's config (empty: the record counts for the paper row)."""
    if "config" not in record:
        return ["the record holds no config (written before eval.py stored it): re-run eval.py on the run"]
    paper = _paper_config(record["experiment"], eval_size_overrides(record))
    ours = _leaves(result_config(record["config"]))
    absent = "(absent)"
    return [
        f"{key}: {paper.get(key, absent)} -> {ours.get(key, absent)}"
        for key in sorted(paper.keys() | ours.keys())
        if paper.get(key, absent) != ours.get(key, absent)
    ]


def paper_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The paper metrics a record measures (see the module docstring)."""
    metrics, split = record["metrics"], record["split"]
    if not metrics.get("complete", True):
        return {}
    found: dict[str, float] = {}
    lm = "unit" in metrics  # language / pixel modeling
    objective = record.get("train_objective")
    if objective is not None:
        train_metric = "train_bpc" if metrics.get("unit") == "bpc" else "train_loss"
        found[train_metric] = objective["loss"] / math.log(2) if lm else objective["loss"]
    if split not in TEST_SPLITS:
        return found
    if lm:
        found["test_bpc" if metrics["unit"] == "bpc" else "test_loss"] = metrics["bits"]
        return found
    found["top1"] = metrics["top1"]
    if "samples_per_sec" in metrics:
        found["images_per_sec"] = metrics["samples_per_sec"]
    if "mem_gb" in metrics:
        found["mem_gb"] = metrics["mem_gb"]
    return found


def split_records(
    records: dict[str, dict[str, Any]], experiments: set[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """The records of the paper's ``experiments`` whose config is the experiment's, and the others'
    differences by file name (records of other experiments are in neither)."""
    counted, modified = {}, {}
    for name, record in records.items():
        if record_experiment(record) not in experiments:
            continue
        differences = config_differences(record)
        if differences:
            modified[name] = differences
        else:
            counted[name] = record
    return counted, modified


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
    """#params in millions of the experiment's model (``params_m``) or of its first token mixer
    without the output projection (``params_per_layer_m``)."""
    model = build_on_meta(compose_experiment(experiment).model)
    if metric == "params_m":
        return count_parameters(model) / 1e6
    mixer = model.blocks[0].mixer
    return sum(p.numel() for name, p in mixer.named_parameters() if not name.startswith(OUTPUT_PROJECTION)) / 1e6


def join(paper: list[PaperValue], records: dict[str, dict[str, Any]], modified_runs: set[str]) -> list[Cell]:
    """Every paper number with ours, from the counted ``records``, or the reason it is missing
    (``modified_runs``: the experiments that have records of another config)."""
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
            cells.append(Cell(value, None, _missing(value.experiment, experiments_run, modified_runs)))
    return cells


def _missing(experiment: str, experiments_run: set[str], modified_runs: set[str]) -> str:
    if experiment in experiments_run:
        return "not measured"
    return "modified runs only" if experiment in modified_runs else "not run"


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
    """The records behind a table's numbers: file, split, weights, step, device, creation time, commit."""
    names = sorted({c.ours.source for c in cells if c.ours is not None and c.ours.source != "config"})
    lines = []
    for name in names:
        r = records[name]
        weights = "EMA weights" if r.get("weights") == "model_ema" else "trained weights"
        line = f"- `{name}`: split {r['split']}, {weights}, step {r.get('step')}, {r.get('device')}, {r.get('created')}"
        lines.append(line + (f", commit {r['commit']}" if "commit" in r else ""))
    return lines


def modified_lines(cells: list[Cell], records: dict[str, dict[str, Any]], modified: dict[str, list[str]]) -> list[str]:
    """The table's modified records (not counted): file, split, step and the first differing keys."""
    experiments = {c.paper.experiment for c in cells}
    lines = []
    for name, differences in modified.items():
        r = records[name]
        if record_experiment(r) not in experiments:
            continue
        shown = "; ".join(differences[:SHOWN_DIFFERENCES])
        more = len(differences) - SHOWN_DIFFERENCES
        lines.append(
            f"- `{name}`: split {r['split']}, step {r.get('step')}: {shown}" + (f" (+{more} more)" if more > 0 else "")
        )
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


def _figure(size: tuple[float, float]) -> Any:
    """A matplotlib ``Figure`` of ``size`` inches (matplotlib: the ``figures`` extra)."""
    return require("matplotlib.figure", "compare's figures").Figure(figsize=size)


def plot_curve(cells: list[Cell], table: str, path: Path) -> None:
    """Paper vs ours against the table's varied quantity, one panel per metric (Tables 5, 6, 11)."""
    xlabel, pattern, metrics = CURVES[table]
    fig = _figure((5 * len(metrics), 3.6))
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
    fig = _figure((6 * len(metrics), 4))
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
    cells: list[Cell],
    records: dict[str, dict[str, Any]],
    modified: dict[str, list[str]],
    figures: dict[str, list[Path]],
    report: Path,
    args: str,
) -> str:
    """The Markdown of ``REPORT.md`` from every record and the differences of the ``modified`` ones."""
    tables = _by_table(cells)
    found = sum(c.ours is not None and c.ours.source != "config" for c in cells)
    lines = [
        "# The paper's tables vs our runs",
        "",
        f"Generated by `python scripts/compare.py{args}` from {len(records)} run record(s), "
        f"{len(modified)} of them of a modified config (listed per table, not counted). "
        f"{found} of {len(cells)} paper numbers have a measured counterpart; #params are counted from "
        "the experiment configs. Cells read `paper / ours (ours - paper)`.",
    ]
    for table, table_cells in tables.items():
        lines += ["", f"## {TITLES[table]}", ""]
        train_columns = any(c.paper.metric.startswith("train_") for c in table_cells)
        for note in (NOTES.get(table), TRAIN_NOTE if train_columns else None):
            if note:
                lines += [note, ""]
        lines += markdown_table(table_cells)
        for figure in figures.get(table, []):
            lines += ["", f"![{figure.stem}]({os.path.relpath(figure, report.parent)})"]
        used = sources(table_cells, records)
        if used:
            lines += ["", "Records:", *used]
        changed = modified_lines(table_cells, records, modified)
        if changed:
            lines += [
                "",
                "Modified runs (config differs from the experiment's: `key: paper -> ours`; not counted):",
                *changed,
            ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    results = results_dir()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=Path, default=project_path(PAPER_TABLES))
    parser.add_argument("--runs", type=Path, default=results / "runs", help="eval.py records (*.json)")
    parser.add_argument("--report", type=Path, default=results / "REPORT.md")
    parser.add_argument("--figures", type=Path, default=results / "figures")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """``python scripts/compare.py`` / ``aft-compare``: write the report and the figures."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    with user_errors_exit():
        records = load_records(args.runs)
        paper = load_paper(args.tables)
        counted, modified = split_records(records, {value.experiment for value in paper if value.experiment})
        cells = join(paper, counted, {record_experiment(records[name]) for name in modified})
        figures = write_figures(_by_table(cells), args.figures)
        command = "".join(f" {a}" for a in argv)
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(render_report(cells, records, modified, figures, args.report, command))
        print(f"wrote {args.report} and {sum(map(len, figures.values()))} figures in {args.figures}")


if __name__ == "__main__":  # python -m aft.commands.compare
    main()
