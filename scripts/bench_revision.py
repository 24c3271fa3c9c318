"""The PyTorch path of the AFT operators and models at a git revision against the working tree.

Extracts the ``aft`` package of ``--rev`` (``git archive``) as the package ``aft_<rev>`` next to
the current one, in this process, and times, taking turns (old, new, new again):

* forward + backward of the AFT operators of ``bench_ops.py`` (same shapes and inputs), with
  the bytes each saves for backward;
* a training step (forward, cross-entropy, backward) of small models built by both versions
  with the same weights: decoders with AFT-local (w=32) and AFT-simple, a ViT with AFT-conv2d.

Everything runs the PyTorch path (``aft.ops.use(backend="torch")``; the old code has no
kernels on the CPU). The second run of the working tree ("working tree (rerun)") is the
noise: its ratio to the first (``noise_ratio``) shows how far two runs of the same code
differ on this machine; ``time_ratio`` is new / old. The load average is recorded.

    python scripts/bench_revision.py --rev deb7ccd --out results/bench/revision_cpu.json

This is a benchmark, not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import ModuleType

import torch
from bench_ops import build_ops, op_inputs
from benchlib import add_common_arguments, alternating_medians, write_record
from torch import nn

import aft
from aft import ops
from aft.memory import saved_bytes

ROOT = Path(__file__).resolve().parents[1]
NEW, RERUN = "working tree", "working tree (rerun)"


def package_at(rev: str, into: Path) -> ModuleType:
    """The ``aft`` package of revision ``rev`` imported as ``aft_<rev>`` (its imports rewritten)."""
    archive = subprocess.run(["git", "archive", rev, "aft"], cwd=ROOT, capture_output=True)
    if archive.returncode != 0:
        reason = (archive.stderr.decode().strip().splitlines() or ["git failed"])[0]
        raise SystemExit(f"--rev {rev}: no aft package there ({reason}); pass a commit from `git log --oneline`")
    name = f"aft_{re.sub(r'[^0-9A-Za-z]', '_', rev)}"
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(".py"):
                source = tar.extractfile(member).read().decode()
                source = re.sub(r"(?m)^(\s*)(from|import) aft\b", rf"\1\2 {name}", source)
                path = into / name / Path(member.name).relative_to("aft")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(source)
    sys.path.insert(0, str(into))
    warnings.filterwarnings("ignore", message="Overwriting .* in registry")  # both versions register timm models
    return __import__(name, fromlist=["functional", "layers", "models"])


def _forward_backward(fn: Callable[[], torch.Tensor]) -> None:
    """One timed call: forward and backward of ``fn``."""
    fn().sum().backward()


def models(package: ModuleType, args: argparse.Namespace) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """``name -> (model, input)`` built by ``package`` (an ``aft`` version), seeded alike."""
    from importlib import import_module

    layers = import_module(f"{package.__name__}.layers")
    Decoder = import_module(f"{package.__name__}.models.decoder").Decoder
    ViT = import_module(f"{package.__name__}.models.vit").VisionTransformer
    T, D = args.model_length, args.dim
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 256, (args.batch, T), generator=g)
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g)
    found = {}
    for name, mixer in {
        "decoder_aft_local_w32": partial(layers.AFTLocal, seq_len=T, window=32, bias_dim=args.bias_dim, causal=True),
        "decoder_aft_simple": partial(layers.AFTSimple, causal=True),
    }.items():
        torch.manual_seed(0)
        found[name] = (Decoder(mixer, vocab_size=256, seq_len=T, depth=args.depth, dim=D), tokens)
    torch.manual_seed(0)
    conv = partial(layers.AFTConv2d, heads=args.heads, kernel_size=7)
    vit = ViT(
        conv,
        img_size=args.image_size,
        patch_size=4,
        num_classes=10,
        depth=args.depth,
        dim=D,
        class_token=False,
        position_embedding=False,
        spatial_mixer=True,
    )
    found["vit_aft_conv2d_k7"] = (vit, images)
    return found


def _train_step(model: nn.Module, x: torch.Tensor) -> None:
    """Forward, a cross-entropy against fixed targets, backward."""
    logits = model(x)
    logits = logits.flatten(0, -2) if logits.dim() > 2 else logits
    nn.functional.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long)).backward()


def _row(kind: str, name: str, T: int, seconds: dict[str, float], rev: str, **extra: object) -> dict:
    old, new, again = seconds[rev], seconds[NEW], seconds[RERUN]
    print(
        f"{kind:5s} {name:32s} T={T:<6d} {rev}: {old * 1e3:8.1f} ms   {NEW}: {new * 1e3:8.1f} ms   "
        f"rerun: {again * 1e3:8.1f} ms   time x{new / old:.2f}  noise x{again / new:.2f}",
        flush=True,
    )
    return {
        "kind": kind,
        "op": name,
        "T": T,
        "seconds": seconds,
        "time_ratio": new / old,
        "noise_ratio": again / new,
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", required=True, help="git revision to compare with, e.g. deb7ccd")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--bias-dim", type=int, default=64)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--model-length", type=int, default=1024, help="T of the decoders")
    parser.add_argument("--image-size", type=int, default=64, help="ViT input side (patch 4: a 16 x 16 grid)")
    parser.add_argument("--depth", type=int, default=2, help="blocks of each model")
    add_common_arguments(parser, repeats=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, ops.use(backend="torch"):
        old = package_at(args.rev, Path(tmp))
        functional = {args.rev: old.functional, NEW: aft.functional, RERUN: aft.functional}
        for T in args.lengths:
            versions = {
                name: build_ops(T, args.dim, args.heads, args.bias_dim, device, module)
                for name, module in functional.items()
            }
            for op, (_, key_channels) in versions[NEW].items():
                if op.startswith("attention") or op.endswith("[triton]"):
                    continue
                inputs = op_inputs(args.batch, T, args.dim, key_channels, device)
                fns = {name: partial(built[op][0], *inputs) for name, built in versions.items()}
                seconds = alternating_medians(
                    {n: partial(_forward_backward, f) for n, f in fns.items()}, args.repeats, device
                )
                saved = {name: saved_bytes(fns[name]) for name in (args.rev, NEW)}
                rows.append(_row("op", op, T, seconds, args.rev, saved_bytes=saved))
        built = {args.rev: models(old, args), NEW: models(aft, args), RERUN: models(aft, args)}
        for name, (model, x) in built[NEW].items():
            for version in (args.rev, RERUN):
                built[version][name][0].load_state_dict(model.state_dict())
            runs = {v: partial(_train_step, built[v][name][0].to(device), built[v][name][1].to(device)) for v in built}
            seconds = alternating_medians(runs, args.repeats, device)
            rows.append(_row("model", name, x.shape[1] if x.dim() == 2 else x.shape[-1], seconds, args.rev))
    write_record(
        args.out,
        device,
        rev=args.rev,
        batch=args.batch,
        dim=args.dim,
        rows=rows,
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
        cpu_count=os.cpu_count(),
    )


if __name__ == "__main__":
    sys.exit(main())
