"""Operator benchmark: AFT variants vs causal multi-head attention, side by side.

For each sequence length T it times forward + backward of every operator on the same
inputs and counts the bytes saved for backward (``saved_tensors_hooks``, each storage
once), plus ``torch.cuda.max_memory_allocated`` on a GPU. It prints a table, the ratios
to SDPA attention and the growth from the smallest to the largest T, and writes a JSON
record with the device and the command.

    python scripts/bench_ops.py                       # B=4, D=256, T in 1024 4096 16384
    python scripts/bench_ops.py --device cuda --out results/bench/ops_cuda.json

This is a benchmark, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from aft import functional as AF

Op = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def build_ops(T: int, D: int, heads: int, bias_dim: int, device: torch.device) -> dict[str, tuple[Op, int]]:
    """Operators at length ``T``: ``name -> (fn(q, k, v), key channels)``, all causal."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def param(*shape: int, std: float = 0.1) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std).to(device).requires_grad_()

    u, v = param(T, bias_dim), param(T, bias_dim)
    kernel = param(heads, 32)
    ops: dict[str, tuple[Op, int]] = {
        "aft_simple": (lambda q, k, x: AF.aft_simple(q, k, x, causal=True), D),
        "aft_local_w32": (lambda q, k, x: AF.aft_local(q, k, x, (u, v), 32, causal=True), D),
        "aft_local_w256": (lambda q, k, x: AF.aft_local(q, k, x, (u, v), 256, causal=True), D),
        "aft_conv1d_k32_h8": (lambda q, k, x: AF.aft_conv1d(q, k, x, kernel, causal=True), heads),
    }
    if T <= 4096:
        w = param(T, T)
        ops["aft_full"] = (lambda q, k, x: AF.aft_full(q, k, x, w, causal=True), D)

    def sdpa(q: torch.Tensor, k: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B = q.shape[0]
        split = lambda t: t.view(B, T, heads, D // heads).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(x), is_causal=True)
        return out.transpose(1, 2).reshape(B, T, D)

    ops["attention_sdpa_h8"] = (sdpa, D)
    return ops


def saved_bytes(fn: Op, inputs: tuple[torch.Tensor, ...]) -> int:
    """Bytes of the distinct storages autograd saves for backward of ``fn(*inputs)``."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    del out
    return sum(storages.values())


def time_step(fn: Op, inputs: tuple[torch.Tensor, ...], repeats: int, device: torch.device) -> float:
    """Median seconds of forward + backward (after one warm-up)."""

    def once() -> float:
        for t in inputs:
            t.grad = None
        _sync(device)
        start = time.perf_counter()
        fn(*inputs).sum().backward()
        _sync(device)
        return time.perf_counter() - start

    once()
    return statistics.median(once() for _ in range(repeats))


def peak_bytes(fn: Op, inputs: tuple[torch.Tensor, ...], device: torch.device) -> int | None:
    """``torch.cuda.max_memory_allocated`` over one forward + backward, beyond the inputs."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn(*inputs).sum().backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    for T in args.lengths:
        ops = build_ops(T, args.dim, args.heads, args.bias_dim, device)
        for name, (fn, key_channels) in ops.items():
            g = torch.Generator(device="cpu").manual_seed(1)
            shapes = [(args.batch, T, args.dim), (args.batch, T, key_channels), (args.batch, T, args.dim)]
            inputs = tuple(torch.randn(s, generator=g).to(device).requires_grad_() for s in shapes)
            row = {"op": name, "T": T}
            try:
                row["saved_bytes"] = saved_bytes(fn, inputs)
                row["seconds"] = time_step(fn, inputs, args.repeats, device)
                row["peak_bytes"] = peak_bytes(fn, inputs, device)
            except torch.OutOfMemoryError:
                row["skipped"] = "out of memory"
            rows.append(row)
            print(_format_row(row), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _format_row(row: dict) -> str:
    if "skipped" in row:
        return f"{row['op']:<20} T={row['T']:<6} skipped: {row['skipped']}"
    peak = "" if row.get("peak_bytes") is None else f"  peak {row['peak_bytes'] / 2**20:9.1f} MiB"
    return f"{row['op']:<20} T={row['T']:<6} {row['seconds'] * 1e3:10.1f} ms  saved {row['saved_bytes'] / 2**20:9.1f} MiB{peak}"


def summarize(rows: list[dict]) -> str:
    """Ratios to attention at each T, and growth from the smallest to the largest T."""
    ok = [r for r in rows if "skipped" not in r]
    by = {(r["op"], r["T"]): r for r in ok}
    lengths = sorted({r["T"] for r in ok})
    names = list(dict.fromkeys(r["op"] for r in ok))
    lines = ["", "ratio to attention_sdpa_h8 (time, saved bytes; < 1 is better):"]
    for T in lengths:
        ref = by.get(("attention_sdpa_h8", T))
        if ref is None:
            continue
        parts = [
            f"{n}: {by[(n, T)]['seconds'] / ref['seconds']:.2f}x time, {by[(n, T)]['saved_bytes'] / ref['saved_bytes']:.2f}x mem"
            for n in names
            if (n, T) in by and n != "attention_sdpa_h8"
        ]
        lines.append(f"  T={T}: " + "; ".join(parts))
    lines.append(f"growth from T={lengths[0]} to T={lengths[-1]} ({lengths[-1] // lengths[0]}x T):")
    for n in names:
        have = [T for T in lengths if (n, T) in by]
        if len(have) > 1:
            a, b = by[(n, have[0])], by[(n, have[-1])]
            lines.append(
                f"  {n:<20} T {have[0]}->{have[-1]}: time x{b['seconds'] / a['seconds']:.1f}, "
                f"saved bytes x{b['saved_bytes'] / a['saved_bytes']:.1f}"
            )
    return "\n".join(lines)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8, help="attention heads and AFT-conv heads")
    parser.add_argument("--bias-dim", type=int, default=64, help="d' of the factorized AFT-local bias")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="write the JSON record here")
    args = parser.parse_args()
    rows = run(args)
    print(summarize(rows))
    if args.out:
        record = {
            "command": "python " + " ".join(sys.argv),
            "device": _device_name(torch.device(args.device)),
            "torch": torch.__version__,
            "config": {k: v for k, v in vars(args).items() if k != "out"},
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
