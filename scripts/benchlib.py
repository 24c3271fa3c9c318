"""Measurement helpers shared by the benchmark scripts (imported as ``benchlib``)."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from aft.provenance import provenance


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(run: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of one ``run()``, queued GPU work included."""
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - start


def median_seconds(run: Callable[[], object], repeats: int, device: torch.device, warmup: int = 0) -> float:
    """Median wall-clock seconds of ``run()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    return statistics.median(seconds(run, device) for _ in range(repeats))


def alternating_medians(runs: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median wall-clock seconds of each ``run()``, the runs taking turns.

    One call of every run per round, ``repeats`` timed rounds after one warm-up round, so
    that all of them see the same load of a shared machine and their ratios are fair.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats + 1):
        for name, run in runs.items():
            times[name].append(seconds(run, device))
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def attempt(measure: Callable[[], dict]) -> dict:
    """``measure()``, or ``{"skipped": why}`` when it runs out of memory or fails to run.

    A failure is recorded rather than raised, so one broken row (``aft-pytorch``'s AFTLocal
    builds its bias on the CPU and cannot run on a GPU) does not end the benchmark.
    """
    try:
        return measure()
    except torch.OutOfMemoryError:
        return {"skipped": "out of memory"}
    except RuntimeError as error:
        return {"skipped": f"error: {str(error).splitlines()[0]}"}


def add_common_arguments(parser: argparse.ArgumentParser, repeats: int | None) -> None:
    """``--repeats`` (unless ``None``), ``--device`` (CUDA when there is one) and ``--out`` (the JSON record)."""
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats, help="timed repetitions (the median is reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="write the JSON record here (results/bench/...)")


def write_record(path: Path | None, device: torch.device, **fields: Any) -> None:
    """Write ``fields`` after :func:`aft.provenance.provenance` (command, commit, device, torch
    version, time) as JSON to ``path``."""
    if path is None:
        return
    record = {**provenance(device), **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
