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

    python scripts/compare.py --miniature         # results/runs/miniature -> results/MINIATURE.md, figures/miniature/

``--miniature`` reports the miniatures instead: the tables (``sweep_tables.yaml``'s order) that have
configs ``configs/experiment/mini/<table>/<experiment>.yaml``, their rows in the paper's order. A
record counts for a miniature when its config is the miniature's but for ``seed`` and the keys of
``NON_RESULT_KEYS`` (whatever the name it ran under: a row two tables share counts the runs of
either); the others of a miniature's experiment are listed as modified. Per seed and metric the
newest record counts; each of the paper's train and test columns of the row reads the paper's
number and ours as ``mean ± std (n=seeds)`` (:mod:`aft.seed_statistics`). Per table: the paper's
order of the rows by its main metric (top-1, else the test bpc or bits/dim) and our means' order,
the verdict of :data:`aft.seed_statistics.VERDICT_RULE` on every pair the paper orders, the
learning curves of the records' ``history`` (mean over seeds), and the records used; last, Table
3's #params per layer counted both ways (without the output projection, as the paper's, and with it).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from aft.cli import user_errors_exit
from aft.commands.sweep import load_tables
from aft.experiments import build_on_meta, compose_experiment, count_parameters
from aft.extras import require
from aft.resources import PAPER_TABLES, config_dir, project_path, results_dir
from aft.run_name import result_config
from aft.seed_statistics import MIN_SEEDS, NOT_RESOLVED, REPRODUCED, REVERSED, VERDICT_RULE, Summary, judge, summarize

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
    return config_leaves(result_config(config))


def _without(leaves: dict[str, Any], ignored: frozenset[str]) -> dict[str, Any]:
    return {key: value for key, value in leaves.items() if key not in ignored}


def config_leaves(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every non-mapping value of a nested mapping (a list is one value)."""
    if not isinstance(config, dict) or not config:
        return {prefix.removesuffix("."): config}
    leaves: dict[str, Any] = {}
    for key, value in config.items():
        leaves.update(config_leaves(value, f"{prefix}{key}."))
    return leaves


def config_differences(record: dict[str, Any], ignored: frozenset[str] = frozenset()) -> list[str]:
    """``key: paper -> ours`` for each key that changes the result, other than the ``ignored`` keys,
    where the record's config differs from its experiment's config (empty: the record counts for the
    paper row)."""
    if "config" not in record:
        return ["the record holds no config (written before eval.py stored it): re-run eval.py on the run"]
    paper = _without(_paper_config(record["experiment"], eval_size_overrides(record)), ignored)
    ours = _without(config_leaves(result_config(record["config"])), ignored)
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


def newest_measurements(
    records: dict[str, dict[str, Any]], group: Callable[[dict[str, Any]], Hashable] = record_experiment
) -> dict[tuple[Any, str], Measured]:
    """``(group, metric) -> Measured`` from the newest record measuring it (ties: file name); the group
    of a record is its experiment, or e.g. its seed."""
    best: dict[tuple[Any, str], tuple[str, str, float]] = {}
    for name, record in records.items():
        for metric, value in paper_metrics(record).items():
            key = (group(record), metric)
            candidate = (record.get("created", ""), name, value)
            if key not in best or candidate[:2] > best[key][:2]:
                best[key] = candidate
    return {key: Measured(value, name) for key, (_, name, value) in best.items()}


@cache
def config_count(experiment: str, metric: str, output_projection: bool = False) -> float:
    """#params in millions of the experiment's model (``params_m``) or of its first token mixer
    (``params_per_layer_m``), without its output projection unless ``output_projection``."""
    model = build_on_meta(compose_experiment(experiment).model)
    if metric == "params_m":
        return count_parameters(model) / 1e6
    mixer = model.blocks[0].mixer
    counted = (p for name, p in mixer.named_parameters() if output_projection or not name.startswith(OUTPUT_PROJECTION))
    return sum(p.numel() for p in counted) / 1e6


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


def source_line(name: str, record: dict[str, Any]) -> str:
    """A record behind a number: file, split, weights, step, device, creation time, commit."""
    weights = "EMA weights" if record.get("weights") == "model_ema" else "trained weights"
    line = f"`{name}`: split {record['split']}, {weights}, step {record.get('step')}, {record.get('device')}"
    return line + f", {record.get('created')}" + (f", commit {record['commit']}" if "commit" in record else "")


def sources(cells: list[Cell], records: dict[str, dict[str, Any]]) -> list[str]:
    """The records behind a table's numbers (:func:`source_line`)."""
    names = sorted({c.ours.source for c in cells if c.ours is not None and c.ours.source != "config"})
    return [f"- {source_line(name, records[name])}" for name in names]


def modified_lines(
    names: Iterable[str], records: dict[str, dict[str, Any]], modified: dict[str, list[str]]
) -> list[str]:
    """The modified records ``names`` (not counted): file, split, step and the first differing keys."""
    lines = []
    for name in names:
        r, differences = records[name], modified[name]
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
        experiments = {c.paper.experiment for c in table_cells}
        changed = modified_lines(
            [n for n in modified if record_experiment(records[n]) in experiments], records, modified
        )
        if changed:
            lines += [
                "",
                "Modified runs (config differs from the experiment's: `key: paper -> ours`; not counted):",
                *changed,
            ]
    return "\n".join(lines) + "\n"


# The miniature report (--miniature): small models on real CPU-sized data, several seeds per row.
MINIATURE = "mini"  # configs/experiment/mini/<table>/<experiment>.yaml, run as experiment=mini/<table>/<experiment>
SEED_KEYS = frozenset({"seed"})  # a miniature row's runs differ in these keys only
SEED_METRICS = ("train_loss", "train_bpc", "test_loss", "test_bpc", "top1")  # the columns averaged over seeds
MAIN_METRICS = {"top1": "top-1 %", "test_bpc": "bpc", "test_loss": "bits/dim"}  # a table's: the first it has
TRAIN_CURVE = "train_loss"  # history's training loss (nats)


@dataclass(frozen=True)
class MiniRow:
    """A paper row that has a miniature config in ``table`` (a key of ``sweep_tables.yaml``), with the
    paper's numbers of :data:`SEED_METRICS` by metric."""

    table: str
    label: str
    experiment: str
    paper: dict[str, PaperValue]

    @property
    def name(self) -> str:
        """The miniature's experiment: ``mini/<table>/<experiment>``."""
        return f"{MINIATURE}/{self.table}/{self.experiment}"


def paper_table(table: str) -> str:
    """The ``table`` of ``paper_tables.csv`` for a key of ``sweep_tables.yaml`` (``table9`` -> ``9``)."""
    return table.removeprefix("table")


def miniature_configs(table: str) -> list[str]:
    """The experiments shrunk for ``table``: ``configs/experiment/mini/<table>/*.yaml``."""
    return sorted(path.stem for path in (config_dir() / "experiment" / MINIATURE / table).glob("*.yaml"))


def miniature_rows(paper: list[PaperValue], tables: Iterable[str]) -> dict[str, list[MiniRow]]:
    """``table -> rows`` (paper order) for each of ``tables`` (in that order) that has miniature configs."""
    found: dict[str, list[MiniRow]] = {}
    for table in tables:
        configs = set(miniature_configs(table))
        if not configs:
            continue
        rows: dict[tuple[str, str], dict[str, PaperValue]] = {}
        for value in paper:
            if value.table == paper_table(table) and value.experiment in configs:
                metrics = rows.setdefault((value.row, value.experiment), {})
                if value.metric in SEED_METRICS:
                    metrics[value.metric] = value
        found[table] = [MiniRow(table, label, experiment, metrics) for (label, experiment), metrics in rows.items()]
    return found


def _config_key(leaves: dict[str, Any]) -> str:
    """What a miniature's records share: the result keys but the seed."""
    return json.dumps(_without(leaves, SEED_KEYS), sort_keys=True)


def match_miniatures(
    records: dict[str, dict[str, Any]], names: Iterable[str]
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, list[str]]]:
    """The records of each miniature of ``names`` (``name -> {file: record}``: their config is the
    miniature's but for the seed, so a row shared by two tables counts the runs of either table's
    config) and the differences of the other records of those experiments (records of other
    experiments are in neither)."""
    by_key: dict[str, list[str]] = defaultdict(list)
    counted: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        by_key[_config_key(_paper_config(name, ()))].append(name)
        counted[name] = {}
    modified = {}
    for file, record in records.items():
        matches = (
            by_key.get(_config_key(config_leaves(result_config(record["config"])))) if "config" in record else None
        )
        for name in matches or []:
            counted[name][file] = record
        if not matches and record["experiment"] in counted:
            modified[file] = config_differences(record, SEED_KEYS)
    return counted, modified


def _seed(record: dict[str, Any]) -> int:
    return record["config"]["seed"]


def seed_summary(measured: dict[tuple[Any, str], Measured], metric: str) -> Summary | None:
    """``metric`` over the seeds of ``measured`` (:func:`newest_measurements` by seed), or None."""
    values = [m.value for (_, name), m in sorted(measured.items()) if name == metric]
    return summarize(values) if values else None


def main_metric(rows: list[MiniRow]) -> str | None:
    """The metric a table orders its rows by: top-1, else the test bpc or bits/dim."""
    return next((m for m in MAIN_METRICS if any(m in row.paper for row in rows)), None)


def _lower_is_better(metric: str) -> bool:
    """Bits and losses: lower is better; top-1: higher."""
    return metric != "top1"


def format_summary(summary: Summary, paper: PaperValue) -> str:
    """``mean ± std (n=N)`` with one decimal more than the paper (no std for one seed)."""
    digits = _decimals(paper.text) + 1
    spread = f" ± {summary.std:.{digits}f}" if summary.n >= MIN_SEEDS else ""
    return f"{summary.mean:.{digits}f}{spread} (n={summary.n})"


def miniature_table(rows: list[MiniRow], measured: dict[str, dict], status: dict[str, str]) -> list[str]:
    """One line per row: the paper's number and ours (or ``status[row.name]``) per metric."""
    metrics = list(dict.fromkeys(m for row in rows for m in row.paper))
    header = ["row", "miniature", *(f"{METRIC_LABELS[m]}: {who}" for m in metrics for who in ("paper", "ours"))]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.label, f"`{row.name}`"]
        for metric in metrics:
            paper = row.paper.get(metric)
            summary = seed_summary(measured[row.name], metric) if paper else None
            ours = format_summary(summary, paper) if summary else status[row.name] if paper else ""
            cells += [paper.text if paper else "", ours]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def ranking(values: list[tuple[str, float, str]], lower_is_better: bool) -> str:
    """``label value`` best first, joined by ``>`` (better) or ``=`` (tied): ``(label, value, text)``."""
    ranked = sorted(values, key=lambda v: v[1], reverse=not lower_is_better)
    text = f"{ranked[0][0]} ({ranked[0][2]})" if ranked else "none"
    for previous, (label, value, shown) in zip(ranked, ranked[1:], strict=False):
        text += f" {'=' if value == previous[1] else '>'} {label} ({shown})"
    return text


def ordering_lines(rows: list[MiniRow], measured: dict[str, dict], metric: str) -> list[str]:
    """The paper's order of the rows by ``metric`` and the order of our means."""
    lower = _lower_is_better(metric)
    paper = [(row.label, row.paper[metric].value, row.paper[metric].text) for row in rows if metric in row.paper]
    ours = []
    for row in rows:
        summary = seed_summary(measured[row.name], metric) if metric in row.paper else None
        if summary:
            ours.append((row.label, summary.mean, f"{summary.mean:.{_decimals(row.paper[metric].text) + 1}f}"))
    direction = "lower" if lower else "higher"
    return [
        f"Order by {METRIC_LABELS[metric]} ({direction} is better), best first:",
        "",
        f"- paper: {ranking(paper, lower)}",
        f"- ours (means over seeds): {ranking(ours, lower)}",
    ]


def verdict_lines(rows: list[MiniRow], measured: dict[str, dict], metric: str) -> list[str]:
    """One line per pair of rows the paper orders by ``metric`` (better first), with our verdict."""
    lower = _lower_is_better(metric)
    ordered = sorted((r for r in rows if metric in r.paper), key=lambda r: r.paper[metric].value, reverse=not lower)
    header = ["better in the paper", "worse in the paper", "paper", "ours: d", "m", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    counts: dict[str, int] = defaultdict(int)
    ties = 0
    for i, better in enumerate(ordered):
        for worse in ordered[i + 1 :]:
            if better.paper[metric].value == worse.paper[metric].value:
                ties += 1
                continue
            result = judge(
                seed_summary(measured[better.name], metric), seed_summary(measured[worse.name], metric), lower
            )
            counts[result.verdict] += 1
            digits = _decimals(better.paper[metric].text) + 1
            d = "not run" if result.difference is None else f"{result.difference:+.{digits}f}"
            m = f"{result.margin:.{digits}f}" if result.margin is not None else f"n < {MIN_SEEDS}"
            paper = f"{better.paper[metric].text} vs {worse.paper[metric].text}"
            lines.append(f"| {better.label} | {worse.label} | {paper} | {d} | {m} | {result.verdict} |")
    total = sum(counts.values())
    summary = ", ".join(f"{counts[v]} {v}" for v in (REPRODUCED, REVERSED, NOT_RESOLVED))
    tied = f"; {ties} pair(s) tied in the paper, not judged" if ties else ""
    return [f"Verdicts on {total} pair(s) the paper orders: {summary}{tied}.", "", *lines] if total else []


def _curve_series(record: dict[str, Any], metric: str) -> dict[str, list] | None:
    """The record's learning curve of ``metric`` (history's name: ``train_loss``, ``bits`` or ``top1``)."""
    history = record.get("history")
    if not history:
        return None
    if metric == TRAIN_CURVE:
        return history["series"].get(TRAIN_CURVE)
    ema = "_ema" if record.get("weights") == "model_ema" else ""
    return history["series"].get(f"{history['valid_split']}{ema}_{metric}")


def mean_curve(curves: list[dict[str, list]]) -> tuple[list[int], list[float]]:
    """Steps and the mean value at each step over the curves (seeds) that have it."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for curve in curves:
        for step, value in zip(curve["step"], curve["value"], strict=True):
            by_step[step].append(value)
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[step]) for step in steps]


def plot_learning_curves(
    table: str, rows: list[MiniRow], curve_records: dict[str, list[dict[str, Any]]], metric: str, path: Path
) -> bool:
    """The valid split's ``metric`` and the training loss vs step, one line per row (mean over its
    seeds' records ``curve_records[row.name]``); False (no file) when no record has a curve."""
    valid = "bits" if _lower_is_better(metric) else "top1"
    panels = [(valid, f"{MAIN_METRICS[metric]} on the valid split"), (TRAIN_CURVE, "train loss (nats)")]
    lines = {
        (row.label, series): mean_curve(curves)
        for row in rows
        for series, _ in panels
        if (curves := [c for r in curve_records.get(row.name, []) if (c := _curve_series(r, series))])
    }
    if not lines:
        return False
    fig = _figure((11, 4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (series, label) in zip(axes[0], panels, strict=True):
        for (row_label, name), (steps, values) in lines.items():
            if name == series:
                ax.plot(steps, values, label=row_label)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if ax.lines:
            ax.legend(fontsize=6)
    fig.suptitle(f"Miniature of {TITLES[paper_table(table)]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def _layer_counts(experiment: str) -> list[str]:
    """#params (M) of the experiment's first token mixer without and with its output projection."""
    return [f"{config_count(experiment, 'params_per_layer_m', full):#.4g}" for full in (False, True)]


def layer_params_lines(paper: list[PaperValue]) -> list[str]:
    """Table 3's #params per layer: the paper's, our full-size and miniature models', both counts."""
    minis = set(miniature_configs("table3"))
    header = ["row", "paper", "ours: Q, K, V + bias", "ours: layer", "miniature: Q, K, V + bias", "miniature: layer"]
    lines = [
        "## Table 3: #params per layer",
        "",
        "The paper's 0.6M / 9.6M count the token mixer's Q, K and V projections and its position bias, "
        "without the output projection; so do REPORT.md's Table 3 and the `Q, K, V + bias` columns (M). "
        "The `layer` columns add the output projection. Table 7's #params count every parameter of the model.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for value in paper:
        if value.table != "3" or value.metric != "params_per_layer_m":
            continue
        counts = [_layer_counts(value.experiment)]
        counts.append(_layer_counts(f"{MINIATURE}/table3/{value.experiment}") if value.experiment in minis else None)
        cells = [value.row, value.text, *(c for pair in counts for c in (pair or ["no miniature"] * 2))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_miniature(
    tables: dict[str, list[MiniRow]],
    records: dict[str, dict[str, Any]],
    counted: dict[str, dict[str, dict[str, Any]]],
    modified: dict[str, list[str]],
    paper: list[PaperValue],
    figures_dir: Path,
    report: Path,
    args: str,
) -> str:
    """The Markdown of ``MINIATURE.md``; writes each table's learning-curve figure into ``figures_dir``."""
    used = {file for files in counted.values() for file in files}
    lines = [
        "# Miniatures of the paper's tables",
        "",
        f"Generated by `python scripts/compare.py{args}` from {len(records)} run record(s): {len(used)} counted "
        f"for a miniature row, {len(modified)} of a modified config (listed per table, not counted). Each row's "
        f"miniature is `configs/experiment/{MINIATURE}/<table>/<experiment>.yaml`: a smaller model, data set "
        "and schedule than the paper's, so our values are not the paper's numbers; what is compared is the "
        "order of the rows. A record counts for a miniature when its config is the miniature's but for the "
        "seed and the keys REPORT.md ignores (`aft.run_name.NON_RESULT_KEYS`); per seed and metric the newest "
        "one counts. Ours: mean ± sample standard deviation over seeds (n seeds).",
        "",
        f"Verdict rule: {VERDICT_RULE}",
    ]
    experiments_run = {name for name, files in counted.items() if files}
    modified_runs = {records[file]["experiment"] for file in modified}
    figures_dir.mkdir(parents=True, exist_ok=True)
    for table, rows in tables.items():
        measured = {row.name: newest_measurements(counted[row.name], _seed) for row in rows}
        status = {row.name: _missing(row.name, experiments_run, modified_runs) for row in rows}
        lines += ["", f"## Miniature of {TITLES[paper_table(table)]}", ""]
        if any(m.startswith("train_") for row in rows for m in row.paper):
            lines += [TRAIN_NOTE, ""]
        lines += miniature_table(rows, measured, status)
        shrunk = {row.experiment for row in rows}
        unmatched = sorted(set(miniature_configs(table)) - shrunk)
        if unmatched:
            lines += ["", f"Miniature configs with no paper row in this table: {', '.join(unmatched)}."]
        left = [v.row for v in paper if v.table == paper_table(table) and v.experiment and v.experiment not in shrunk]
        if left:
            lines += ["", f"Paper rows without a miniature: {'; '.join(dict.fromkeys(left))}."]
        metric = main_metric(rows)
        if metric:
            lines += ["", *ordering_lines(rows, measured, metric)]
            verdicts = verdict_lines(rows, measured, metric)
            lines += ["", *verdicts] if verdicts else []
            curve_records = {
                row.name: [counted[row.name][m.source] for (_, name), m in measured[row.name].items() if name == metric]
                for row in rows
            }
            figure = figures_dir / f"{table}_curves.png"
            if plot_learning_curves(table, rows, curve_records, metric, figure):
                lines += ["", f"![{figure.stem}]({os.path.relpath(figure, report.parent)})"]
        sources_used = sorted({(m.source, seed) for row in rows for (seed, _), m in measured[row.name].items()})
        if sources_used:
            lines += ["", "Records:", *(f"- seed {seed}, {source_line(f, records[f])}" for f, seed in sources_used)]
        names = {row.name for row in rows}
        changed = modified_lines([f for f in modified if records[f]["experiment"] in names], records, modified)
        if changed:
            lines += ["", "Modified runs (config differs from the miniature's: `key: miniature -> ours`):", *changed]
    lines += ["", *layer_params_lines(paper)]
    return "\n".join(lines) + "\n"


# --runs, --report and --figures under results/: for REPORT.md, and for MINIATURE.md (--miniature)
DEFAULTS = {
    False: {"runs": "runs", "report": "REPORT.md", "figures": "figures"},
    True: {"runs": "runs/miniature", "report": "MINIATURE.md", "figures": "figures/miniature"},
}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=Path, default=project_path(PAPER_TABLES))
    parser.add_argument(
        "--miniature", action="store_true", help="the miniatures' report (configs/experiment/mini/, seeds, verdicts)"
    )
    for key, help_text in [("runs", "eval.py records (*.json)"), ("report", "the report"), ("figures", "its figures")]:
        report, miniature = (DEFAULTS[m][key] for m in (False, True))
        parser.add_argument(
            f"--{key}", type=Path, help=f"{help_text}; default results/{report} (--miniature: {miniature})"
        )
    args = parser.parse_args(argv)
    for key, relative in DEFAULTS[args.miniature].items():
        if getattr(args, key) is None:
            setattr(args, key, results_dir() / relative)
    return args


def write_report(args: argparse.Namespace, command: str) -> int:
    """``REPORT.md`` and its figures; returns the number of figures."""
    records = load_records(args.runs)
    paper = load_paper(args.tables)
    counted, modified = split_records(records, {value.experiment for value in paper if value.experiment})
    cells = join(paper, counted, {record_experiment(records[name]) for name in modified})
    figures = write_figures(_by_table(cells), args.figures)
    args.report.write_text(render_report(cells, records, modified, figures, args.report, command))
    return sum(map(len, figures.values()))


def write_miniature(args: argparse.Namespace, command: str) -> int:
    """``MINIATURE.md`` and its learning-curve figures; returns the number of figures."""
    records = load_records(args.runs)
    paper = load_paper(args.tables)
    tables = miniature_rows(paper, load_tables())
    counted, modified = match_miniatures(records, [row.name for rows in tables.values() for row in rows])
    args.report.write_text(
        render_miniature(tables, records, counted, modified, paper, args.figures, args.report, command)
    )
    return len([table for table in tables if (args.figures / f"{table}_curves.png").exists()])


def main(argv: Sequence[str] | None = None) -> None:
    """``python scripts/compare.py`` / ``aft-compare``: write the report and the figures."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    with user_errors_exit():
        args.report.parent.mkdir(parents=True, exist_ok=True)
        write = write_miniature if args.miniature else write_report
        figures = write(args, "".join(f" {a}" for a in argv))
        print(f"wrote {args.report} and {figures} figures in {args.figures}")


if __name__ == "__main__":  # python -m aft.commands.compare
    main()
