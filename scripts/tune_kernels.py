"""Launch-shape sweep of the AFT Triton kernels (aft.kernels), forward and backward.

For each operator and launch shape (rows per tile, channels per program, row chunks,
warps; :class:`aft.kernels.common.Blocks`) it times the forward and the backward pass
separately (``triton.testing.do_bench``, median) and divides the fewest bytes each must
move (forward 5, backward 9 float32 ``(B, T, D)`` tensors, see scripts/bench_ops.py) by the
time, as a fraction of device-to-device copy bandwidth. ``default_blocks`` in
aft/kernels/banded.py was chosen from this sweep; its last part times AFT-local's band as
tile products (``Blocks.products``). CUDA only.

    python scripts/tune_kernels.py --out results/bench/kernels_launch_shapes_h100.json
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.testing
from bench_ops import MIN_TENSORS, copy_bandwidth
from benchlib import write_record

from aft import kernels
from aft.kernels.common import Blocks

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Blocks], torch.Tensor]
# (operators, (B, T, D), launch shapes (t, d, chunks, warps[, products])); chunks None: fill the device
SWEEPS = [
    (
        ("simple_causal", "local32_causal"),
        (4, 16384, 1024),
        [
            (32, 32, None, 4),
            (32, 32, 1, 4),
            (64, 32, 1, 4),
            (32, 16, 1, 4),
            (16, 32, 1, 2),
            (64, 64, 2, 8),
            (32, 64, 2, 4),
            (64, 16, 1, 4),
            (32, 16, 2, 4),
        ],
    ),
    (
        ("simple_causal", "local32_causal"),
        (4, 16384, 256),
        [(32, 16, None, 4), (32, 16, 2, 4), (64, 16, None, 4), (32, 32, None, 4)],
    ),
    (("simple", "local32", "local256_causal"), (4, 16384, 1024), [(32, 32, None, 4), (32, 16, 1, 4)]),
    # AFT-local's band as tile products (Blocks.products), against the term-by-term default above
    # (larger tiles spill hundreds of bytes of registers in float32: scripts/compile_kernels.py)
    (
        ("local32_causal", "local32", "local256_causal"),
        (4, 16384, 1024),
        [
            (32, 32, None, 8, True),
            (32, 32, None, 4, True),
            (16, 32, None, 4, True),
            (16, 32, None, 8, True),
            (32, 16, None, 4, True),
            (32, 32, 1, 8, True),
        ],
    ),
]


def operators(T: int, bias_dim: int, device: torch.device) -> dict[str, Kernel]:
    """AFT-simple and AFT-local (factorized bias, Eq. 7) kernels, gated, at length ``T``."""
    u = torch.randn(T, bias_dim, device=device) * 0.1
    return {
        "simple_causal": lambda q, k, v, b: kernels.aft_simple(q, k, v, True, b),
        "simple": lambda q, k, v, b: kernels.aft_simple(q, k, v, False, b),
        "local32_causal": lambda q, k, v, b: kernels.aft_local(q, k, v, (u, u), 32, True, b),
        "local32": lambda q, k, v, b: kernels.aft_local(q, k, v, (u, u), 32, False, b),
        "local256_causal": lambda q, k, v, b: kernels.aft_local(q, k, v, (u, u), 256, True, b),
    }


def measure(fn: Kernel, shape: tuple[int, int, int], blocks: Blocks, copy: float, device: torch.device) -> dict:
    """Forward and backward median seconds and their fractions of copy bandwidth."""
    g = torch.Generator(device="cpu").manual_seed(0)
    inputs = [torch.randn(*shape, generator=g).to(device).requires_grad_() for _ in range(3)]
    out = fn(*inputs, blocks)
    grad = torch.randn_like(out)
    steps = {
        "forward": lambda: fn(*inputs, blocks),
        "backward": lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True),
    }
    row: dict = {}
    elements = shape[0] * shape[1] * shape[2]
    for kind, step in steps.items():
        seconds = triton.testing.do_bench(step, return_mode="median") * 1e-3
        row[f"{kind}_seconds"] = seconds
        row[f"{kind}_copy_fraction"] = MIN_TENSORS[kind] * elements * 4 / seconds / copy
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bias-dim", type=int, default=64, help="d' of the factorized AFT-local bias")
    parser.add_argument(
        "--matmul-precision",
        default="highest",
        choices=["highest", "high"],
        help="torch.set_float32_matmul_precision: 'high' lets the tile products use TF32",
    )
    parser.add_argument("--out", type=Path, help="write the JSON record here")
    args = parser.parse_args()
    torch.set_float32_matmul_precision(args.matmul_precision)
    device = torch.device("cuda")
    copy = copy_bandwidth(device)
    print(f"copy bandwidth {copy / 1e12:.2f} TB/s (read + write)")
    rows = []
    for names, shape, configs in SWEEPS:
        ops = operators(shape[1], args.bias_dim, device)
        for name in names:
            for config in configs:
                blocks = Blocks(*config)
                row = {"op": name, "shape": list(shape), "blocks": vars(blocks)}
                row.update(measure(ops[name], shape, blocks, copy, device))
                rows.append(row)
                print(
                    f"{name:<16} {str(shape):<18} t={blocks.t:<3} d={blocks.d:<3} chunks={blocks.chunks!s:<5} "
                    f"warps={blocks.warps} products={blocks.products!s:<5}  "
                    f"fwd {row['forward_seconds'] * 1e3:7.3f} ms {row['forward_copy_fraction']:6.1%}  "
                    f"bwd {row['backward_seconds'] * 1e3:7.3f} ms {row['backward_copy_fraction']:6.1%}",
                    flush=True,
                )
    write_record(
        args.out,
        device,
        triton=triton.__version__,
        matmul_precision=args.matmul_precision,
        copy_bytes_per_second=copy,
        rows=rows,
    )


if __name__ == "__main__":
    main()
