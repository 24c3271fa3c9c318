"""Model-level benchmark: training steps of the paper's decoders, AFT vs Transformer, side by side.

Two shapes, each L=24, d=256 as in the paper's best rows, at a reduced batch:

* ``cifar10``: T=3072 (Table 2): AFT-local-256 (d'=64), AFT-simple, Transformer h=2;
* ``enwik8``:  T=1024 (Table 4): AFT-local-32 (d'=256), AFT-simple, Transformer h=4;

plus, where the Triton kernels run, AFT-local with its band as tile products
(``aft.ops.use(band_products=True)``), and, when the ``aft-pytorch`` package is installed, its
layers in the same decoder (it has no causal mode, so those rows are bidirectional:
speed/memory only). Each model runs
``AdamW`` training steps on random tokens (with ``--compile-mode``, also ``torch.compile``d
copies, Transformer included), the models of one shape taking turns step by step
(``benchlib.alternating_medians``); the script reports iterations/s and memory
(``torch.cuda.max_memory_allocated`` on a GPU, bytes saved for backward on the CPU) and the
ratios to the Transformer next to the paper's (Tables 2 and 4, 8 x V100). A T sweep then
shows how each mixer's memory grows from T=1024 to 16384 (one block, batch 1).

    python scripts/bench_model.py --device cuda --out results/bench/model_cuda.json
    python scripts/bench_model.py --device cpu --batch 1 --repeats 3 --out results/bench/model_cpu.json
    python scripts/bench_model.py --device cuda --compile-mode reduce-overhead --sweep \
        --out results/bench/model_compiled_cuda.json

A benchmark, not a test: numbers depend on the machine; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from benchlib import add_common_arguments, alternating_medians, attempt, median_seconds, write_record
from torch import nn

from aft import kernels, ops
from aft.baselines import MultiHeadAttention
from aft.layers import AFTLocal, AFTSimple
from aft.memory import saved_bytes
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


class _BandProducts(nn.Module):
    """A mixer run inside ``aft.ops.use(band_products=True)``: AFT-local's band as tile products."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with ops.use(band_products=True):
            return self.layer(x)


def mixers(shape: dict, seq_len: int, device: torch.device | None = None) -> dict[str, MixerFactory]:
    """Mixer factories ``mixer(dim=...)`` for one shape at length ``seq_len``; where the
    Triton kernels run on ``device``, AFT-local also with its band as tile products."""
    local = partial(AFTLocal, seq_len=seq_len, window=shape["window"], bias_dim=shape["bias_dim"], causal=True)
    found: dict[str, MixerFactory] = {
        "transformer": partial(MultiHeadAttention, heads=shape["heads"], causal=True),
        "aft_local": local,
        "aft_simple": partial(AFTSimple, causal=True),
    }
    if device is not None and kernels.refusal(torch.empty(0, device=device)) is None:
        found["aft_local (tile products)"] = lambda dim: _BandProducts(local(dim=dim))
    if importlib.util.find_spec("aft_pytorch") is not None:
        import aft_pytorch

        found["aft_pytorch_simple (bidirectional)"] = lambda dim: _AftPytorch(aft_pytorch.AFTSimple(seq_len, dim, dim))
        if seq_len <= 1024:  # its AFTLocal loops over T^2 in Python; 24.7 s per step at T=4096 (measured on the CPU)
            found["aft_pytorch_local (bidirectional)"] = lambda dim: _AftPytorch(
                aft_pytorch.AFTLocal(seq_len, dim, dim, s=shape["window"])
            )
    return found


def training_step(
    model: nn.Module, tokens: torch.Tensor, capturable: bool = False
) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    """``(body, optimizer)``: ``body()`` runs one forward, backward and AdamW step of ``model``."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, capturable=capturable)

    def body() -> None:
        logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()

    return body, optimizer


def eager_step(model: nn.Module, tokens: torch.Tensor) -> Callable[[], None]:
    """A training step that also clears the gradients, run once (which allocates the optimizer state)."""
    body, optimizer = training_step(model, tokens)

    def step() -> None:
        body()
        optimizer.zero_grad(set_to_none=True)

    step()
    return step


def measure_memory(model: nn.Module, tokens: torch.Tensor, device: torch.device) -> dict:
    """The memory of a training step: CUDA max allocated over one step on a GPU (weights and
    optimizer state included), bytes saved for backward by one forward pass on the CPU."""
    step = eager_step(model, tokens)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        return {"memory_bytes": torch.cuda.max_memory_allocated(device), "memory_kind": "cuda_max_allocated"}
    saved = saved_bytes(lambda: model(tokens[:, :-1]).float().logsumexp(-1).mean())
    return {"memory_bytes": saved, "memory_kind": "saved_for_backward"}


def measure_graph(model: nn.Module, tokens: torch.Tensor, repeats: int, device: torch.device) -> dict:
    """Median iters/s of the training step captured once as a CUDA graph and replayed.

    At these small per-GPU batches an eager step is bound by the host launching ~10^3
    kernels; the replay measures the GPU work alone.
    """
    body, optimizer = training_step(model, tokens, capturable=True)
    return {"graph_iters_per_sec": 1.0 / median_seconds(_capture(body, optimizer).replay, repeats, device)}


def _capture(body: Callable[[], None], optimizer: torch.optim.Optimizer) -> torch.cuda.CUDAGraph:
    """``body`` (forward, backward, optimizer step) captured as one CUDA graph (whole-network capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            optimizer.zero_grad(set_to_none=True)
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        body()
    return graph


def _build(case: Case, device: torch.device) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = Decoder(case.factory, vocab_size=256, seq_len=case.seq_len, depth=case.depth, dim=DIM).to(device)
    return model, torch.randint(0, 256, (case.batch, case.seq_len + 1), device=device)


def _release(device: torch.device) -> None:
    gc.collect()  # the step closures and a CUDA graph hold their models in reference cycles
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _alone(case: Case, device: torch.device, measure: Callable[[nn.Module, torch.Tensor], dict]) -> dict:
    """``measure(model, tokens)`` with no other model in memory; ``{"skipped": why}`` if it fails."""
    try:
        return attempt(lambda: measure(*_build(case, device)))
    finally:
        _release(device)


def _compiled_step(case: Case, device: torch.device, mode: str) -> Callable[[], None]:
    """A training step of ``torch.compile(model, mode=mode)``, run once (which compiles it)."""
    model, tokens = _build(case, device)
    return eager_step(torch.compile(model, mode=mode), tokens)


def _speeds(group: list[Case], repeats: int, device: torch.device, compile_mode: str | None = None) -> list[dict]:
    """Eager iters/s of every case of ``group`` and, with ``compile_mode``, compiled iters/s
    (``torch.compile(model, mode=compile_mode)``), all training steps taking turns (all models
    in memory at once), so that a shared machine's changing load does not bias the ratios."""
    steps, results = {}, []
    for i, case in enumerate(group):
        built = attempt(lambda case=case: {"step": eager_step(*_build(case, device))})
        if "step" in built:
            steps[i, "iters_per_sec"] = built.pop("step")
        if compile_mode is not None:
            compiled = attempt(lambda case=case: {"step": _compiled_step(case, device, compile_mode)})
            if "step" in compiled:
                steps[i, "compiled_iters_per_sec"] = compiled.pop("step")
            else:
                built["compiled_skipped"] = compiled["skipped"]
        results.append(built)
    timed = attempt(lambda: {"seconds": alternating_medians(steps, repeats, device)})
    for i, key in steps:
        results[i].update({key: 1.0 / timed["seconds"][i, key]} if "seconds" in timed else timed)
    steps.clear()
    _release(device)
    return results


@dataclass
class Case:
    """One measured configuration: a mixer in the decoder at one shape."""

    shape: str
    mixer: str
    factory: MixerFactory
    seq_len: int
    depth: int
    batch: int


def cases(args: argparse.Namespace, device: torch.device) -> list[Case]:
    """The paper's shapes (Tables 2 and 4) at ``--batch``, then the T sweep (one block, batch 1)."""
    found = [
        Case(shape_name, name, factory, shape["seq_len"], DEPTH, args.batch)
        for shape_name, shape in SHAPES.items()
        for name, factory in mixers(shape, shape["seq_len"], device).items()
    ]
    for T in args.sweep:
        for name, factory in mixers(SHAPES["enwik8"], T, device).items():
            if not name.startswith("aft_pytorch"):
                found.append(Case("sweep", name, factory, T, 1, 1))
    return found


def run(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Every group of cases with one shape: memory (each model alone), eager speed (the models
    taking turns), then, on CUDA, speed as a CUDA graph (each model alone).

    The graphs run last so that their memory pools never count in a memory reading.
    """
    rows, measured = [], cases(args, device)
    groups: dict[tuple, list[int]] = {}
    for i, case in enumerate(measured):
        groups.setdefault((case.shape, case.seq_len), []).append(i)
        rows.append(
            {"shape": case.shape, "mixer": case.mixer, "T": case.seq_len, "depth": case.depth, "batch": case.batch}
        )
    for members in groups.values():
        group = [measured[i] for i in members]
        memories = [_alone(case, device, partial(measure_memory, device=device)) for case in group]
        for i, memory, speed in zip(
            members, memories, _speeds(group, args.repeats, device, args.compile_mode), strict=True
        ):
            rows[i].update(memory)
            rows[i].update(speed)
            print(json.dumps(rows[i]), flush=True)
    if device.type == "cuda":
        for case, row in zip(measured, rows, strict=True):
            if "skipped" not in row:
                row.update(_alone(case, device, partial(measure_graph, repeats=args.repeats, device=device)))
                print(json.dumps(row), flush=True)
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
            graphed = ""
            if "graph_iters_per_sec" in row and "graph_iters_per_sec" in ref:
                graphed = f" (CUDA graph x{row['graph_iters_per_sec'] / ref['graph_iters_per_sec']:.2f})"
            if "compiled_iters_per_sec" in row and "compiled_iters_per_sec" in ref:
                graphed += f" (compiled x{row['compiled_iters_per_sec'] / ref['compiled_iters_per_sec']:.2f})"
            lines.append(
                f"  {shape_name:<8} {name:<36} speed x{row['iters_per_sec'] / ref['iters_per_sec']:.2f}{graphed}, "
                f"memory x{row['memory_bytes'] / ref['memory_bytes']:.2f}{paper_text}"
            )
    sweep = [r for r in rows if r["shape"] == "sweep" and "skipped" not in r]
    if sweep:
        lengths = sorted({r["T"] for r in sweep})
        lines.append(f"memory growth from T={lengths[0]} to T={lengths[-1]} (one block, batch 1):")
        for name in dict.fromkeys(r["mixer"] for r in sweep):
            have = {r["T"]: r["memory_bytes"] for r in sweep if r["mixer"] == name}
            if lengths[0] in have and lengths[-1] in have:
                lines.append(
                    f"  {name:<14} x{have[lengths[-1]] / have[lengths[0]]:.1f} for x{lengths[-1] // lengths[0]} T"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="sequences per step (the paper used 32/128 over 8 GPUs)")
    parser.add_argument("--sweep", type=int, nargs="*", default=[1024, 4096, 16384])
    parser.add_argument(
        "--compile-mode",
        default=None,
        help="also time torch.compile(model, mode=...) steps beside the "
        "eager ones: default, reduce-overhead (CUDA graphs) or max-autotune",
    )
    add_common_arguments(parser, repeats=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = run(args, device)
    print(summarize(rows))
    write_record(args.out, device, paper=PAPER, rows=rows)


if __name__ == "__main__":
    main()
