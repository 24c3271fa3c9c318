"""Exponentiated position biases per layer (and head) of an AFT model: Fig. 1 (right), 3, 6, 7, 8.

* AFT-full / AFT-local (Fig. 3): ``exp(w)`` as a ``T x T`` map per layer (197 x 197 for the
  ImageNet AFT-full: class token first, then the 14 x 14 patches), where AFT-local's ``w`` is
  0 outside its window (Eq. 4) and causal layers leave ``t' > t`` blank.
* AFT-conv (Fig. 1 right, 6, 7, 8): ``exp(w) - 1`` (the weights of the convolution of Eq. 6)
  per layer (rows) and head (columns, the first 16), after the reparameterization of Eq. 8 and,
  for Gumbel models (§8), the inference-time one-hot of Eq. 10.

    python scripts/figures/position_biases.py --run runs/imagenet_aft_conv_small_k11_h384 --out fig6.png
    python scripts/figures/position_biases.py --run runs/imagenet_aft_full_small --out fig3.png
    python scripts/figures/position_biases.py --run <run> --layers 0 2 4 6 8 10 --out fig1_right.png
    python scripts/figures/position_biases.py --random-init imagenet_aft_conv_small_k11_h384 model.depth=2 \\
        --out demo.png
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch
from common import load, map_grid, parser_with_model, save
from matplotlib.figure import Figure
from torch import nn

from aft.layers import AFTConv1d, AFTConv2d, AFTFull, AFTLocal


@torch.no_grad()
def dense_bias(mixer: AFTFull | AFTLocal, positions: int) -> np.ndarray:
    """``exp(w)`` of the first ``positions`` positions, ``(P, P)``; NaN where a causal layer does not look."""
    w = mixer.position_bias.matrix(positions).float()
    offsets = torch.arange(positions)[None, :] - torch.arange(positions)[:, None]  # t' - t
    if isinstance(mixer, AFTLocal):
        w = torch.where(offsets.abs() < mixer.window, w, torch.zeros_like(w))  # Eq. 4
    biases = w.exp()
    if mixer.causal:
        biases = biases.masked_fill(offsets > 0, float("nan"))
    return biases.numpy()


@torch.no_grad()
def conv_kernels(mixer: AFTConv1d | AFTConv2d, heads: int) -> list[np.ndarray]:
    """``exp(w) - 1`` of the first ``heads`` heads, each ``(S, S)`` (2-d) or ``(1, S)`` (1-d)."""
    w = mixer.position_bias().float()[:heads]  # the module's mode selects Gumbel sampling or argmax
    return [np.atleast_2d(k) for k in (w.exp() - 1).numpy()]


def dense_figure(mixers: Sequence[nn.Module], layers: Sequence[int], positions: int | None, cols: int) -> Figure:
    """One ``exp(w)`` panel per layer, left to right then top to bottom (Fig. 3)."""
    panels = [dense_bias(mixers[i], positions or mixers[i].seq_len) for i in layers]
    names = [f"layer {i}" for i in layers]
    starts = range(0, len(panels), cols)
    return map_grid(
        [panels[r : r + cols] for r in starts],
        ["" for _ in starts],
        f"exp(w) of {type(mixers[0]).__name__}",
        [names[r : r + cols] for r in starts],
        cell_inches=2.0,
    )


def conv_figure(mixers: Sequence[nn.Module], layers: Sequence[int], heads: int) -> Figure:
    """``exp(w) - 1`` per layer (rows) and head (columns): Fig. 1 right, 6, 7, 8."""
    rows = [conv_kernels(mixers[i], heads) for i in layers]
    return map_grid(
        rows,
        [f"layer {i}" for i in layers],
        f"exp(w) - 1 of {type(mixers[0]).__name__} (kernel {mixers[0].kernel_size})",
        [[f"head {h}" for h in range(len(rows[0]))]],
    )


def main(argv: list[str]) -> None:
    parser = parser_with_model(__doc__)
    parser.add_argument("--layers", type=int, nargs="+", help="layer indices (default: all)")
    parser.add_argument("--heads", type=int, default=16, help="AFT-conv: the first N heads (Fig. 6: 16)")
    parser.add_argument("--positions", type=int, help="AFT-full/local: the first N positions (default: all)")
    parser.add_argument("--cols", type=int, default=4, help="AFT-full/local: panels per row")
    args = parser.parse_args(argv)
    model, _ = load(args)
    mixers = [block.mixer for block in model.blocks]
    layers = args.layers or list(range(len(mixers)))
    if isinstance(mixers[0], (AFTConv1d, AFTConv2d)):
        fig = conv_figure(mixers, layers, args.heads)
    elif isinstance(mixers[0], (AFTFull, AFTLocal)):
        fig = dense_figure(mixers, layers, args.positions, args.cols)
    else:
        raise SystemExit(f"error: {type(mixers[0]).__name__} learns no position biases (AFT-full, -local or -conv do)")
    save(fig, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
