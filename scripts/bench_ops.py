"""Operator benchmark: AFT variants vs multi-head attention, side by side.

For each sequence length T it times forward + backward of every operator on the same
inputs and counts the bytes saved for backward (``saved_tensors_hooks``, each storage
once), plus ``torch.cuda.max_memory_allocated`` on a GPU. The sequence operators are causal
and compared with causal attention; where T is a square, AFT-conv2d (7 x 7 kernel, 8 heads)
on a sqrt(T) x sqrt(T) grid is compared with bidirectional attention (``*_bidirectional``).
The AFT operators appear twice where the Triton kernels run (CUDA): ``name[triton]`` and
``name[torch]`` (the PyTorch path, forced with ``aft.ops.use(backend="torch")``); AFT-local a
third time, ``name[triton products]`` (its band as tile products, ``aft.ops.use(band_products=True)``).
It prints a table, the ratios to SDPA attention and the growth from the smallest to the largest T.

On CUDA it also measures device-to-device copy bandwidth (bytes read + written) and, for
causal AFT-simple and AFT-local (w=32, factorized bias; both ways) at ``--bandwidth-shape``, the
forward and the backward pass separately: the fewest bytes each must move (forward: read
q, k, v, write out and the float32 log-normalizer: 5 B T D x 4 bytes; backward: read q, k,
v, out, lse, dout, write dq, dk, dv: 9 B T D x 4 bytes) over its median time, as a fraction
of the copy bandwidth. It writes a JSON record with the device and the command.

    python scripts/bench_ops.py                       # B=4, D=256, T in 1024 4096 16384
    python scripts/bench_ops.py --device cuda --out results/bench/ops_cuda.json

This is a benchmark, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Callable
from functools import partial
from types import ModuleType

import torch
import torch.nn.functional as F
from benchlib import add_common_arguments, median_seconds, write_record

from aft import functional, kernels, ops
from aft.memory import saved_bytes

Op = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# Fewest bytes per element of a (B, T, D) float32 tensor: forward reads q, k, v and writes
# out, lse; backward reads q, k, v, out, lse, dout and writes dq, dk, dv.
MIN_TENSORS = {"forward": 5, "backward": 9}
BIDIRECTIONAL = "_bidirectional"  # in the names of the non-causal ops, compared with non-causal attention


def build_ops(
    T: int, D: int, heads: int, bias_dim: int, device: torch.device, AF: ModuleType = functional
) -> dict[str, tuple[Op, int]]:
    """Operators at length ``T``: ``name -> (fn(q, k, v), key channels)``; ``AF`` provides
    the AFT functions (another version of :mod:`aft.functional` in ``bench_revision.py``)."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def param(*shape: int, std: float = 0.1) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * std).to(device).requires_grad_()

    u, v = param(T, bias_dim), param(T, bias_dim)
    kernel = param(heads, 32)
    ops = with_kernel_variants(
        {
            "aft_simple": (lambda q, k, x: AF.aft_simple(q, k, x, causal=True), D),
            "aft_local_w32": (lambda q, k, x: AF.aft_local(q, k, x, (u, v), 32, causal=True), D),
            "aft_local_w256": (lambda q, k, x: AF.aft_local(q, k, x, (u, v), 256, causal=True), D),
            "aft_conv1d_k32_h8": (lambda q, k, x: AF.aft_conv1d(q, k, x, kernel, causal=True), heads),
        },
        device,
    )
    if T <= 4096:
        w = param(T, T)
        ops["aft_full"] = (lambda q, k, x: AF.aft_full(q, k, x, w, causal=True), D)

    def sdpa(q: torch.Tensor, k: torch.Tensor, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
        B = q.shape[0]
        split = lambda t: t.view(B, T, heads, D // heads).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(x), is_causal=causal)
        return out.transpose(1, 2).reshape(B, T, D)

    ops["attention_sdpa_h8"] = (sdpa, D)
    side = math.isqrt(T)
    if side * side == T:  # AFT-conv2d on a side x side grid, against bidirectional attention
        grid_kernel = param(heads, 7, 7)
        grid = lambda t: t.view(t.shape[0], side, side, t.shape[-1])  # noqa: E731
        conv2d = lambda q, k, x: AF.aft_conv2d(grid(q), grid(k), grid(x), grid_kernel).flatten(1, 2)  # noqa: E731
        ops.update(with_kernel_variants({f"aft_conv2d_k7_h8{BIDIRECTIONAL}": (conv2d, heads)}, device))
        ops[f"attention_sdpa_h8{BIDIRECTIONAL}"] = (lambda q, k, x: sdpa(q, k, x, causal=False), D)
    return ops


def op_inputs(B: int, T: int, D: int, key_channels: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """``(q, k, v)`` leaves of shapes ``(B, T, D)``, ``(B, T, key_channels)``, ``(B, T, D)``."""
    g = torch.Generator(device="cpu").manual_seed(1)
    shapes = [(B, T, D), (B, T, key_channels), (B, T, D)]
    return tuple(torch.randn(s, generator=g).to(device).requires_grad_() for s in shapes)


def with_kernel_variants(found: dict[str, tuple[Op, int]], device: torch.device) -> dict[str, tuple[Op, int]]:
    """``name[triton]`` and ``name[torch]`` for each op where the kernels run on ``device``,
    and ``name[triton products]`` for AFT-local (its band as tile products)."""
    if kernels.refusal(torch.empty(0, device=device)) is not None:
        return found
    out: dict[str, tuple[Op, int]] = {}
    for name, (fn, channels) in found.items():
        out[f"{name}[triton]"] = (fn, channels)
        if name.startswith("aft_local"):
            out[f"{name}[triton products]"] = (within(lambda: ops.use(band_products=True), fn), channels)
        out[f"{name}[torch]"] = (within(lambda: ops.use(backend="torch"), fn), channels)
    return out


def within(setting: Callable[[], contextlib.AbstractContextManager], fn: Op) -> Op:
    """``fn`` run inside a setting of :func:`aft.ops.use`, entered afresh on each call."""

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        with setting():
            return fn(*inputs)

    return run


def time_step(fn: Op, inputs: tuple[torch.Tensor, ...], repeats: int, device: torch.device) -> float:
    """Median seconds of forward + backward (after one warm-up)."""

    def step() -> None:
        for t in inputs:
            t.grad = None
        fn(*inputs).sum().backward()

    return median_seconds(step, repeats, device, warmup=1)


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


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device(args.device)
    rows = []
    for T in args.lengths:
        ops = build_ops(T, args.dim, args.heads, args.bias_dim, device)
        for name, (fn, key_channels) in ops.items():
            inputs = op_inputs(args.batch, T, args.dim, key_channels, device)
            row = {"op": name, "T": T}
            try:
                row["saved_bytes"] = saved_bytes(partial(fn, *inputs))
                row["seconds"] = time_step(fn, inputs, args.repeats, device)
                row["peak_bytes"] = peak_bytes(fn, inputs, device)
            except torch.OutOfMemoryError:
                row["skipped"] = "out of memory"
            rows.append(row)
            print(_format_row(row), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy: bytes read + written per second (median of ``do_bench``)."""
    import triton.testing

    src = torch.empty(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * nbytes / (ms * 1e-3)


def bandwidth_rows(args: argparse.Namespace, device: torch.device) -> dict:
    """Forward and backward of causal AFT-simple and AFT-local (w=32) against copy bandwidth."""
    import triton.testing

    B, T, D = args.bandwidth_shape
    copy = copy_bandwidth(device)
    ops = {
        name: op
        for name, op in build_ops(T, D, args.heads, args.bias_dim, device).items()
        if name.startswith(("aft_simple[", "aft_local_w32["))
    }
    g = torch.Generator(device="cpu").manual_seed(1)
    inputs = tuple(torch.randn(B, T, D, generator=g).to(device).requires_grad_() for _ in range(3))
    rows = []
    for name, (fn, _) in ops.items():
        out = fn(*inputs)
        grad = torch.randn_like(out)
        passes = {
            "forward": partial(fn, *inputs),
            "backward": partial(torch.autograd.grad, out, inputs, grad, retain_graph=True),
        }
        for kind, step in passes.items():
            ms = triton.testing.do_bench(step, return_mode="median")
            nbytes = MIN_TENSORS[kind] * B * T * D * 4
            row = {
                "op": name,
                "pass": kind,
                "shape": [B, T, D],
                "seconds": ms * 1e-3,
                "min_bytes": nbytes,
                "bytes_per_second": nbytes / (ms * 1e-3),
                "copy_fraction": nbytes / (ms * 1e-3) / copy,
            }
            rows.append(row)
            print(
                f"{name:<22} {kind:<8} {ms:8.3f} ms  {row['bytes_per_second'] / 1e12:5.2f} TB/s  "
                f"{row['copy_fraction']:6.1%} of copy",
                flush=True,
            )
        del out, grad
        torch.cuda.empty_cache()
    print(f"copy bandwidth {copy / 1e12:.2f} TB/s (read + write)")
    return {"copy_bytes_per_second": copy, "rows": rows}


def _format_row(row: dict) -> str:
    if "skipped" in row:
        return f"{row['op']:<34} T={row['T']:<6} skipped: {row['skipped']}"
    peak = "" if row.get("peak_bytes") is None else f"  peak {row['peak_bytes'] / 2**20:9.1f} MiB"
    saved = f"saved {row['saved_bytes'] / 2**20:9.1f} MiB"
    return f"{row['op']:<34} T={row['T']:<6} {row['seconds'] * 1e3:10.1f} ms  {saved}{peak}"


def summarize(rows: list[dict]) -> str:
    """Ratios to attention at each T, and growth from the smallest to the largest T."""
    ok = [r for r in rows if "skipped" not in r]
    by = {(r["op"], r["T"]): r for r in ok}
    lengths = sorted({r["T"] for r in ok})
    names = list(dict.fromkeys(r["op"] for r in ok))
    lines = ["", "ratio to attention_sdpa_h8 of the same causality (time, saved bytes; < 1 is better):"]
    for T in lengths:
        parts = []
        for n in names:
            reference = f"attention_sdpa_h8{BIDIRECTIONAL}" if BIDIRECTIONAL in n else "attention_sdpa_h8"
            ref = by.get((reference, T))
            if (n, T) in by and ref is not None and n != reference:
                parts.append(
                    f"{n}: {by[(n, T)]['seconds'] / ref['seconds']:.2f}x time, "
                    f"{by[(n, T)]['saved_bytes'] / ref['saved_bytes']:.2f}x mem"
                )
        lines.append(f"  T={T}: " + "; ".join(parts))
    lines.append(f"growth from T={lengths[0]} to T={lengths[-1]} ({lengths[-1] / lengths[0]:g}x T):")
    for n in names:
        have = [T for T in lengths if (n, T) in by]
        if len(have) > 1:
            a, b = by[(n, have[0])], by[(n, have[-1])]
            lines.append(
                f"  {n:<34} T {have[0]}->{have[-1]}: time x{b['seconds'] / a['seconds']:.1f}, "
                f"saved bytes x{b['saved_bytes'] / a['saved_bytes']:.1f}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8, help="attention heads and AFT-conv heads")
    parser.add_argument("--bias-dim", type=int, default=64, help="d' of the factorized AFT-local bias")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument(
        "--bandwidth-shape",
        type=int,
        nargs=3,
        default=[4, 16384, 1024],
        metavar=("B", "T", "D"),
        help="shape of the copy-bandwidth comparison (CUDA only)",
    )
    add_common_arguments(parser, repeats=3)
    args = parser.parse_args()
    rows = run(args)
    print(summarize(rows))
    bandwidth = bandwidth_rows(args, torch.device(args.device)) if args.device.startswith("cuda") else None
    config = {k: v for k, v in vars(args).items() if k != "out"}
    write_record(args.out, torch.device(args.device), config=config, rows=rows, bandwidth=bandwidth)


if __name__ == "__main__":
    main()
