"""The PyTorch path of aft.functional at a git revision against the working tree, alternating.

Loads ``aft/functional.py`` as it was at ``--rev`` next to the current one and times forward +
backward of the AFT operators of ``bench_ops.py`` (same shapes and inputs) taking turns, old
then new, so that both see the same machine load; it also counts the bytes each saves for
backward. Both run with ``aft.kernels.enabled(False)``: this compares the PyTorch code,
not the Triton kernels. Use it to check that a change to the PyTorch path made it faster.

    python scripts/bench_revision.py --rev 37fe27a --out results/bench/revision_cpu.json

This is a benchmark, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

import torch

from bench_ops import build_ops, op_inputs
from benchlib import add_common_arguments, alternating_medians, write_record

from aft import functional as current
from aft import kernels
from aft.memory import saved_bytes

ROOT = Path(__file__).resolve().parents[1]


def functional_at(rev: str) -> ModuleType:
    """``aft/functional.py`` of revision ``rev`` as a module (it imports the current ``aft``)."""
    shown = subprocess.run(["git", "show", f"{rev}:aft/functional.py"], cwd=ROOT, capture_output=True, text=True)
    if shown.returncode != 0:
        reason = (shown.stderr.strip().splitlines() or ["git failed"])[0]
        raise SystemExit(f"--rev {rev}: no aft/functional.py there ({reason}); pass a commit from `git log --oneline`")
    module = ModuleType(f"functional_{rev}")
    exec(compile(shown.stdout, f"{rev}:aft/functional.py", "exec"), module.__dict__)
    return module


def _forward_backward(fn: Callable[[], torch.Tensor]) -> None:
    """One timed call: forward and backward of ``fn``."""
    fn().sum().backward()


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
            versions = {name: build_ops(T, args.dim, args.heads, args.bias_dim, device, module)
                        for name, module in modules.items()}
            for op, (_, key_channels) in versions["working tree"].items():
                if op.startswith("attention") or op.endswith("[triton]"):  # both run the PyTorch path here
                    continue
                inputs = op_inputs(args.batch, T, args.dim, key_channels, device)
                fns = {name: partial(ops[op][0], *inputs) for name, ops in versions.items()}
                runs = {name: partial(_forward_backward, fn) for name, fn in fns.items()}
                seconds = alternating_medians(runs, args.repeats, device)
                saved = {name: saved_bytes(fn) for name, fn in fns.items()}
                old, new = seconds[args.rev], seconds["working tree"]
                rows.append({"op": op, "T": T, "seconds": seconds, "saved_bytes": saved, "time_ratio": new / old})
                print(
                    f"{op:32s} T={T:<6d} {args.rev}: {old * 1e3:8.1f} ms {saved[args.rev] / 2**20:8.1f} MiB   "
                    f"working tree: {new * 1e3:8.1f} ms {saved['working tree'] / 2**20:8.1f} MiB   "
                    f"time x{new / old:.2f}, saved bytes x{saved['working tree'] / saved[args.rev]:.2f}",
                    flush=True,
                )
    write_record(args.out, device, rev=args.rev, batch=args.batch, dim=args.dim, rows=rows)


if __name__ == "__main__":
    sys.exit(main())
