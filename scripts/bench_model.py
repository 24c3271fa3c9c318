"""Model-level benchmark: training steps of the paper's decoders, AFT vs Transformer, side by side.

Two shapes, each L=24, d=256 as in the paper's best rows, at a reduced batch:

* ``cifar10``: T=3072 (Table 2): AFT-local-256 (d'=64), AFT-simple, Transformer h=2;
* ``enwik8``:  T=1024 (Table 4): AFT-local-32 (d'=256), AFT-simple, Transformer h=4;

plus, when the ``aft-pytorch`` package is installed, its layers in the same decoder (it has
no causal mode, so those rows are bidirectional: speed/memory only). Each model runs
``AdamW`` training steps on random tokens; the script reports iterations/s and memory
(``torch.cuda.max_memory_allocated`` on a GPU, bytes saved for backward on the CPU) and the
ratios to the Transformer next to the paper's (Tables 2 and 4, 8 x V100). A T sweep then
shows how each mixer's memory grows from T=1024 to 16384 (one block, batch 1).

    python scripts/bench_model.py --device cuda --out results/bench/model_cuda.json
    python scripts/bench_model.py --device cpu --batch 1 --repeats 2 --out results/bench/model_cpu.json

A benchmark, not a test: numbers depend on the machine; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from aft.baselines import MultiHeadAttention
from aft.layers import AFTLocal, AFTSimple
from aft.models import Decoder

# Paper ratios to the Transformer (L=24, d=256 rows): Table 2 and Table 4, iters/s and GB/GPU.
PAPER = {
    "cifar10": {"transformer": (1.36, 30.4), "aft_local": (1.67, 12.8), "aft_simple": (2.15, 9.5)},
    "enwik8": {"transformer": (1.57, 28.3), "aft_local": (2.04, 11.2), "aft_simple": (2.61, 9.6)},
}
SHAPES = {
    "cifar10": {"seq_len": 3072, "window": 256, "bias_dim": 64, "heads": 2},  # §5.1, Table 2
    "enwik8": {"seq_len": 1024, "window": 32, "bias_dim": 256, "heads": 4},  # §5.2, Table 4
}
DEPTH, DIM = 24, 256

MixerFactory = Callable[..., nn.Module]


class _AftPytorch(nn.Module):
    """An ``aft-pytorch`` 0.2.2 layer as a mixer (bidirectional: that package has no causal mode)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def mixers(shape: dict, seq_len: int) -> dict[str, MixerFactory]:
    """Mixer factories ``mixer(dim=...)`` for one shape at length ``seq_len``."""
    found: dict[str, MixerFactory] = {
        "transformer": partial(MultiHeadAttention, heads=shape["heads"], causal=True),
        "aft_local": partial(AFTLocal, seq_len=seq_len, window=shape["window"], bias_dim=shape["bias_dim"], causal=True),
        "aft_simple": partial(AFTSimple, causal=True),
    }
    if importlib.util.find_spec("aft_pytorch") is not None:
        import aft_pytorch

        found["aft_pytorch_simple (bidirectional)"] = lambda dim: _AftPytorch(aft_pytorch.AFTSimple(seq_len, dim, dim))
        if seq_len <= 1024:  # its AFTLocal loops over T^2 in Python; 24.7 s per step at T=4096 (issue 7)
            found["aft_pytorch_local (bidirectional)"] = lambda dim: _AftPytorch(
                aft_pytorch.AFTLocal(seq_len, dim, dim, s=shape["window"])
            )
    return found


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _saved_bytes(model: nn.Module, tokens: torch.Tensor) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(tokens).float().logsumexp(-1).mean()
    del loss
    return sum(storages.values())


def measure(model: nn.Module, tokens: torch.Tensor, repeats: int, device: torch.device) -> dict[str, float]:
    """Median training-step time (forward, backward, AdamW) and the step's memory."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        _sync(device)
        start = time.perf_counter()
        logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - start

    step()  # warm-up (allocates the optimizer state)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = statistics.median(step() for _ in range(repeats))
    result = {"iters_per_sec": 1.0 / seconds}
    if device.type == "cuda":
        result["memory_bytes"] = torch.cuda.max_memory_allocated(device)
        result["memory_kind"] = "cuda_max_allocated"
    else:
        result["memory_bytes"] = _saved_bytes(model, tokens[:, :-1])
        result["memory_kind"] = "saved_for_backward"
    return result


def _run_one(factory: MixerFactory, seq_len: int, depth: int, batch: int, repeats: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = Decoder(factory, vocab_size=256, seq_len=seq_len, depth=depth, dim=DIM).to(device)
    tokens = torch.randint(0, 256, (batch, seq_len + 1), device=device)
    try:
        return measure(model, tokens, repeats, device)
    except torch.OutOfMemoryError:
        return {"skipped": "out of memory"}
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def paper_shapes(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    for shape_name, shape in SHAPES.items():
        for name, factory in mixers(shape, shape["seq_len"]).items():
            row = {"shape": shape_name, "mixer": name, "T": shape["seq_len"], "depth": DEPTH, "batch": args.batch}
            row.update(_run_one(factory, shape["seq_len"], DEPTH, args.batch, args.repeats, device))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def length_sweep(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    for T in args.sweep:
        for name, factory in mixers(SHAPES["enwik8"], T).items():
            if name.startswith("aft_pytorch"):
                continue
            row = {"shape": "sweep", "mixer": name, "T": T, "depth": 1, "batch": 1}
            row.update(_run_one(factory, T, 1, 1, args.repeats, device))
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def summarize(rows: list[dict]) -> str:
    lines = ["", "ratios to the Transformer (ours | paper), speed = iters/s ratio, memory = memory ratio:"]
    for shape_name in SHAPES:
        by = {r["mixer"]: r for r in rows if r["shape"] == shape_name and "skipped" not in r}
        ref = by.get("transformer")
        if ref is None:
            continue
        for name, row in by.items():
            if name == "transformer":
                continue
            paper = PAPER[shape_name].get(name)
            paper_text = ""
            if paper is not None:
                base = PAPER[shape_name]["transformer"]
                paper_text = f" | paper speed x{paper[0] / base[0]:.2f}, memory x{paper[1] / base[1]:.2f}"
            lines.append(
                f"  {shape_name:<8} {name:<36} speed x{row['iters_per_sec'] / ref['iters_per_sec']:.2f}, "
                f"memory x{row['memory_bytes'] / ref['memory_bytes']:.2f}{paper_text}"
            )
    sweep = [r for r in rows if r["shape"] == "sweep" and "skipped" not in r]
    if sweep:
        lengths = sorted({r["T"] for r in sweep})
        lines.append(f"memory growth from T={lengths[0]} to T={lengths[-1]} (one block, batch 1):")
        for name in dict.fromkeys(r["mixer"] for r in sweep):
            have = {r["T"]: r["memory_bytes"] for r in sweep if r["mixer"] == name}
            if lengths[0] in have and lengths[-1] in have:
                lines.append(f"  {name:<14} x{have[lengths[-1]] / have[lengths[0]]:.1f} for x{lengths[-1] // lengths[0]} T")
    return "\n".join(lines)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="sequences per step (the paper used 32/128 over 8 GPUs)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sweep", type=int, nargs="*", default=[1024, 4096, 16384])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = paper_shapes(args, device) + length_sweep(args, device)
    print(summarize(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "command": "python " + " ".join(sys.argv),
            "device": _device_name(device),
            "torch": torch.__version__,
            "paper": PAPER,
            "rows": rows,
        }
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
