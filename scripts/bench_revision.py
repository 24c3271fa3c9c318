"""The PyTorch path of aft.functional at a git revision against the working tree, alternating.

Loads ``aft/functional.py`` as it was at ``--rev`` next to the current one and times forward +
backward of the causal AFT operators (the same shapes as ``bench_ops.py``) taking turns,
old then new, so that both see the same machine load; it also counts the bytes each saves
for backward. Both run with ``aft.kernels.enabled(False)``: this compares the PyTorch code,
not the Triton kernels. Use it to check that a change to the PyTorch path made it faster.

    python scripts/bench_revision.py --rev 37fe27a --out results/bench/revision_cpu.json

This is a benchmark, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from benchlib import add_common_arguments, saved_bytes, sync, write_record

from aft import functional as current
from aft import kernels

ROOT = Path(__file__).resolve().parents[1]
Op = Callable[[ModuleType], torch.Tensor]


def functional_at(rev: str) -> ModuleType:
    """``aft/functional.py`` of revision ``rev`` as a module (it imports the current ``aft``)."""
    shown = subprocess.run(["git", "show", f"{rev}:aft/functional.py"], cwd=ROOT, capture_output=True, text=True)
    if shown.returncode != 0:
        reason = (shown.stderr.strip().splitlines() or ["git failed"])[0]
        raise SystemExit(f"--rev {rev}: no aft/functional.py there ({reason}); pass a commit from `git log --oneline`")
    source = shown.stdout
    path = Path(tempfile.mkdtemp()) / f"functional_{rev}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_ops(B: int, T: int, D: int, heads: int, bias_dim: int, device: torch.device) -> dict[str, Op]:
    """Causal operators at length ``T``, each ``fn(functional module) -> output``."""
    g = torch.Generator().manual_seed(0)

    def tensor(*shape: int, std: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std).to(device).requires_grad_()

    q, k, v = tensor(B, T, D), tensor(B, T, D), tensor(B, T, D)
    u, f = tensor(T, bias_dim, std=0.1), tensor(T, bias_dim, std=0.1)
    kernel = tensor(heads, 32, std=0.1)
    return {
        "aft_simple": lambda AF: AF.aft_simple(q, k, v, causal=True),
        "aft_local_w32": lambda AF: AF.aft_local(q, k, v, (u, f), 32, causal=True),
        "aft_local_w256": lambda AF: AF.aft_local(q, k, v, (u, f), 256, causal=True),
        "aft_conv1d_k32_h8": lambda AF: AF.aft_conv1d(q, k[..., :heads], v, kernel, causal=True),
    }


def alternate(fn: Op, modules: dict[str, ModuleType], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of ``fn(module).sum().backward()`` per module, the modules taking turns."""
    times: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(repeats + 1):  # the first round warms up
        for name, module in modules.items():
            sync(device)
            start = time.perf_counter()
            fn(module).sum().backward()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[1:]) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", required=True, help="git revision to compare with, e.g. 37fe27a")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--bias-dim", type=int, default=64)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    add_common_arguments(parser, repeats=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    modules = {args.rev: functional_at(args.rev), "working tree": current}
    rows = []
    with kernels.enabled(False):
        for T in args.lengths:
            for op, fn in build_ops(args.batch, T, args.dim, args.heads, args.bias_dim, device).items():
                seconds = alternate(fn, modules, args.repeats, device)
                saved = {name: saved_bytes(lambda m=module: fn(m)) for name, module in modules.items()}
                old, new = seconds[args.rev], seconds["working tree"]
                rows.append({"op": op, "T": T, "seconds": seconds, "saved_bytes": saved, "time_ratio": new / old})
                print(
                    f"{op:18s} T={T:<6d} {args.rev}: {old * 1e3:8.1f} ms {saved[args.rev] / 2**20:8.1f} MiB   "
                    f"working tree: {new * 1e3:8.1f} ms {saved['working tree'] / 2**20:8.1f} MiB   "
                    f"time x{new / old:.2f}, saved bytes x{saved['working tree'] / saved[args.rev]:.2f}",
                    flush=True,
                )
    write_record(args.out, device, rev=args.rev, batch=args.batch, dim=args.dim, rows=rows)


if __name__ == "__main__":
    sys.exit(main())
