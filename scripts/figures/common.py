"""What the figure scripts share: where the model comes from, and a grid of 2-d maps.

Every figure script takes a trained model (``--run``: a ``train.py`` run folder or checkpoint
file, with ``key=value`` overrides of its saved config, e.g. ``data.root=...``) or a randomly
initialized one (``--random-init <experiment>``, with Hydra overrides that may shrink it,
e.g. ``model.depth=2 model.dim=32``), and writes one PNG (``--out``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import nn

from aft.experiments import compose_experiment
from aft.runs import load_model


def parser_with_model(description: str) -> argparse.ArgumentParser:
    """An argument parser with ``--run`` | ``--random-init``, ``--seed``, ``--out`` and overrides."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a train.py run folder or checkpoint file")
    source.add_argument("--random-init", metavar="EXPERIMENT", help="a randomly initialized configs/experiment/ model")
    parser.add_argument("--seed", type=int, default=0, help="initialization (--random-init) and sampling seed")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the run's or experiment's config")
    return parser


def load(args: argparse.Namespace) -> tuple[nn.Module, DictConfig]:
    """The model (CPU, eval mode) and its config from ``--run`` or ``--random-init``."""
    if args.run is not None:
        return load_model(args.run, args.overrides)
    cfg = compose_experiment(args.random_init, args.overrides)
    torch.manual_seed(args.seed)
    return instantiate(cfg.model).eval(), cfg


def map_grid(
    maps: Sequence[Sequence[np.ndarray]],
    row_labels: Sequence[str],
    title: str,
    panel_titles: Sequence[Sequence[str]] = (),
    cell_inches: float = 1.0,
) -> Figure:
    """A figure with ``maps[r][c]`` in a grid, no ticks: 2-d arrays each on its own colour scale, or
    RGB images; ``panel_titles[r][c]`` above a panel where given."""
    rows, cols = len(maps), max(len(row) for row in maps)
    fig = Figure(figsize=(cols * cell_inches + 0.6, rows * cell_inches + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, row in enumerate(maps):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                ax.imshow(row[c], cmap="viridis", interpolation="nearest")
            else:
                ax.set_axis_off()
            if c == 0:
                ax.set_ylabel(row_labels[r], fontsize=7)
            if r < len(panel_titles) and c < len(panel_titles[r]):
                ax.set_title(panel_titles[r][c], fontsize=7)
    fig.suptitle(title, fontsize=9)
    return fig


def save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")
