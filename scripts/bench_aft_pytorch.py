"""Layer benchmark against the ``aft-pytorch`` 0.2.2 package, variant by variant.

``aft-pytorch`` (``pip install aft-pytorch==0.2.2``) implements AFTSimple, AFTFull and
AFTLocal, bidirectional only, with one head and a dense ``T x T`` bias. Ours are built with
the same semantics (``causal=False``, ``bias_dim=None``: dense bias) and the same width, its
weights are copied into ours, and then for each variant:

* agreement: the largest absolute difference of the two outputs at ``--check-length``;
* speed and memory at ``--length`` (default B=4, T=4096, D=256): median forward + backward
  seconds, their layer and ours taking turns, and memory (``torch.cuda.max_memory_allocated``
  on a GPU, bytes saved for backward on the CPU);
* defects found in that package, measured here and printed rather than hidden:
  its AFTLocal rebuilds ``wbias`` as a new ``nn.Parameter`` from a Python double loop over
  ``max_seqlen^2`` entries on every forward (so an optimizer built before the forward never
  sees a gradient, and the step time is dominated by the loop: timed at ``--local-length``);
  its AFTFull and AFTLocal take ``exp`` of keys and biases without a max shift, so keys near
  89 (float32 ``exp`` overflow) give NaN.

    python scripts/bench_aft_pytorch.py --out results/bench/aft_pytorch_cpu.json
    python scripts/bench_aft_pytorch.py --device cuda --out results/bench/aft_pytorch_cuda.json

A benchmark, not a test: numbers depend on the machine; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial

import torch
from benchlib import add_common_arguments, alternating_medians, attempt, write_record
from torch import nn

from aft.layers import AFTFull, AFTLocal, AFTSimple
from aft.memory import saved_bytes

try:
    import aft_pytorch
except ImportError:  # main() says how to install it, after the arguments (so --help works without it)
    aft_pytorch = None


def pair(variant: str, T: int, D: int, window: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """``(theirs, ours)`` for one variant at length ``T``, ours holding a copy of their weights."""
    torch.manual_seed(0)
    if variant == "simple":
        theirs, ours = aft_pytorch.AFTSimple(T, D, D), AFTSimple(D)
    elif variant == "full":
        theirs, ours = aft_pytorch.AFTFull(T, D, D), AFTFull(D, seq_len=T, bias_dim=None)
    else:
        theirs, ours = aft_pytorch.AFTLocal(T, D, D, s=window), AFTLocal(D, seq_len=T, window=window, bias_dim=None)
    with torch.no_grad():
        for name in ("to_q", "to_k", "to_v"):
            getattr(ours, name).load_state_dict(getattr(theirs, name).state_dict())
        ours.proj.load_state_dict(theirs.project.state_dict())
        if variant != "simple":
            ours.position_bias.w.copy_(theirs.wbias)
    return theirs.to(device), ours.to(device)


def agreement(theirs: nn.Module, ours: nn.Module, T: int, D: int, device: torch.device) -> float:
    """Largest absolute difference of the two layers' outputs on one random batch."""
    x = torch.randn(2, T, D, device=device)
    with torch.no_grad():
        return (theirs(x) - ours(x)).abs().max().item()


def memory(layer: nn.Module, x: torch.Tensor, device: torch.device) -> tuple[int, str]:
    """Peak CUDA memory of forward + backward, or the bytes saved for backward on the CPU."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        layer(x).square().mean().backward()
        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    return saved_bytes(lambda: layer(x).square().mean()), "saved_for_backward"


def measure(
    layers: dict[str, nn.Module], B: int, T: int, D: int, repeats: int, device: torch.device
) -> dict[str, dict]:
    """Memory of each layer's forward + backward, then their median seconds, the layers taking
    turns (``benchlib.alternating_medians``); a layer that fails to run gets ``{"skipped": why}``."""
    x = torch.randn(B, T, D, device=device, requires_grad=True)
    results, runs = {}, {}
    for name, layer in layers.items():
        results[name] = attempt(
            lambda layer=layer: dict(zip(("memory_bytes", "memory_kind"), memory(layer, x, device), strict=True))
        )
        if "skipped" not in results[name]:
            runs[name] = partial(_forward_backward, layer, x)
    timed = attempt(lambda: {"seconds": alternating_medians(runs, repeats, device)})
    for name in runs:
        results[name].update({"fwd_bwd_seconds": timed["seconds"][name]} if "seconds" in timed else timed)
    return results


def _forward_backward(layer: nn.Module, x: torch.Tensor) -> None:
    """One timed call: forward and backward of ``layer`` on ``x``."""
    layer(x).square().mean().backward()


def local_bias_trains(T: int, D: int, window: int) -> bool:
    """Whether ``aft_pytorch.AFTLocal``'s registered bias gets a gradient from one backward."""
    layer = aft_pytorch.AFTLocal(T, D, D, s=window)
    registered = layer.wbias
    layer(torch.randn(1, T, D)).sum().backward()
    return registered.grad is not None


def overflow_is_finite(layer: nn.Module, T: int, D: int, key: float, device: torch.device) -> bool:
    """Whether the layer's output stays finite when every key equals ``key``."""
    with torch.no_grad():
        layer.to_k.weight.zero_()
        layer.to_k.bias.fill_(key)
        return bool(torch.isfinite(layer(torch.randn(1, T, D, device=device))).all())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--window", type=int, default=32, help="AFT-local window s")
    parser.add_argument("--local-length", type=int, default=256, help="T for timing their AFTLocal (a T^2 Python loop)")
    parser.add_argument("--check-length", type=int, default=128, help="T of the agreement and defect checks")
    add_common_arguments(parser, repeats=3)
    args = parser.parse_args()
    if aft_pytorch is None:
        sys.exit("error: aft-pytorch is not installed: pip install aft-pytorch==0.2.2")
    device, B, D = torch.device(args.device), args.batch, args.dim

    rows = []
    for variant in ("simple", "full", "local"):
        theirs, ours = pair(variant, args.check_length, D, args.window, torch.device("cpu"))
        difference = agreement(theirs, ours, args.check_length, D, torch.device("cpu"))
        T = args.local_length if variant == "local" else args.length
        theirs, ours = pair(variant, T, D, args.window, device)
        measured = measure({"aft-pytorch": theirs, "ours": ours}, B, T, D, args.repeats, device)
        for package, result in measured.items():
            row = {"variant": variant, "package": package, "B": B, "T": T, "D": D, "max_abs_difference": difference}
            row.update(result)
            print(json.dumps(row), flush=True)
            rows.append(row)
        if variant == "local" and T != args.length:  # ours also at the common length
            ours = AFTLocal(D, seq_len=args.length, window=args.window, bias_dim=None).to(device)
            row = {"variant": variant, "package": "ours", "B": B, "T": args.length, "D": D}
            row.update(measure({"ours": ours}, B, args.length, D, args.repeats, device)["ours"])
            print(json.dumps(row), flush=True)
            rows.append(row)

    T = args.check_length
    theirs_full, ours_full = pair("full", T, D, 1, device)
    defects = {
        "aft_pytorch_local_bias_gets_gradient": local_bias_trains(T, D, args.window),
        "aft_pytorch_full_finite_at_key_100": overflow_is_finite(theirs_full, T, D, 100.0, device),
        "ours_full_finite_at_key_100": overflow_is_finite(ours_full, T, D, 100.0, device),
    }
    print(json.dumps(defects))
    print("\nours vs aft-pytorch (same device, same T): speed = their time / ours, memory = ours / theirs")
    for variant in ("simple", "full", "local"):
        theirs_row = next((r for r in rows if r["variant"] == variant and r["package"] == "aft-pytorch"), None)
        if theirs_row is None or "skipped" in theirs_row:
            print(f"  {variant:<7} aft-pytorch did not run: {theirs_row and theirs_row['skipped']}")
            continue
        ours_row = next(
            r for r in rows if r["variant"] == variant and r["package"] == "ours" and r["T"] == theirs_row["T"]
        )
        if "skipped" not in ours_row:
            speedup = theirs_row["fwd_bwd_seconds"] / ours_row["fwd_bwd_seconds"]
            print(
                f"  {variant:<7} T={theirs_row['T']:<5} x{speedup:.2f} "
                f"faster, memory x{ours_row['memory_bytes'] / theirs_row['memory_bytes']:.2f}, "
                f"outputs agree to {theirs_row['max_abs_difference']:.1e}"
            )
    write_record(args.out, device, aft_pytorch="0.2.2", rows=rows, defects=defects)


if __name__ == "__main__":
    main()
