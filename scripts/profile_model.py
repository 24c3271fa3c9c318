"""Where a training step of the paper's decoders spends its time: host vs device, op by op.

For each mixer of one shape of ``bench_model.py`` (Table 2 ``cifar10`` or Table 4 ``enwik8``)
it runs AdamW training steps and reports

* ``host_ms``: wall time to *enqueue* one step (Python, autograd, kernel launches), and
  ``step_ms``: wall time until the device has finished it. ``host_ms ~ step_ms`` means the
  step is bound by the host, not by the GPU;
* ``device_ms``: the GPU time of one step summed over its kernels (``torch.profiler``; on the
  CPU ``cpu_ms`` over its ops), and the largest kernels with their shares, so the mixer's
  share of a step can be read off.

    python scripts/profile_model.py --device cuda --shape enwik8 --out results/bench/profile_enwik8_h100.json
    python scripts/profile_model.py --device cpu --shape enwik8 --batch 1

A measurement, not a test.
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_model import DEPTH, DIM, SHAPES, MixerFactory, mixers
from benchlib import add_common_arguments, sync, write_record
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from aft.models import Decoder


def profile_mixer(factory: MixerFactory, seq_len: int, batch: int, device: torch.device, top: int) -> dict:
    """Host, wall and device time of one training step, and the ``top`` ops by device (or CPU) time."""
    torch.manual_seed(0)
    model = Decoder(factory, vocab_size=256, seq_len=seq_len, depth=DEPTH, dim=DIM).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(0, 256, (batch, seq_len + 1), device=device)

    def step() -> None:
        logits = model(tokens[:, :-1])
        nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    sync(device)
    start = time.perf_counter()
    step()
    host = time.perf_counter() - start
    sync(device)
    wall = time.perf_counter() - start

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    # on a GPU the kernels themselves (an aten op's device time repeats its kernels'), else CPU ops;
    # self times never count a nested op twice
    on_gpu = device.type == "cuda"
    kind = DeviceType.CUDA if on_gpu else DeviceType.CPU
    key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if e.device_type == kind and not e.is_user_annotation]
    total = sum(getattr(e, key) for e in events)
    ops = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    return {
        "host_ms": 1e3 * host,
        "step_ms": 1e3 * wall,
        "device_ms" if device.type == "cuda" else "cpu_ms": total / 1e3,
        "top_ops": [
            {"op": e.key, "ms": getattr(e, key) / 1e3, "share": getattr(e, key) / total, "calls": e.count} for e in ops
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="enwik8")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--top", type=int, default=12, help="ops listed per mixer")
    add_common_arguments(parser, repeats=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    shape = SHAPES[args.shape]
    rows = []
    for name, factory in mixers(shape, shape["seq_len"], device).items():
        if name.startswith("aft_pytorch"):
            continue
        row = {"mixer": name, **profile_mixer(factory, shape["seq_len"], args.batch, device, args.top)}
        rows.append(row)
        busy = row.get("device_ms", row.get("cpu_ms"))
        print(
            f"== {name}: host {row['host_ms']:.1f} ms to enqueue, step {row['step_ms']:.1f} ms, "
            f"{'device' if device.type == 'cuda' else 'CPU'} busy {busy:.1f} ms"
        )
        for op in row["top_ops"]:
            print(f"   {op['ms']:8.2f} ms {op['share']:6.1%} {op['calls']:5d}x  {op['op'][:90]}")
    write_record(args.out, device, shape=args.shape, batch=args.batch, depth=DEPTH, dim=DIM, rows=rows)


if __name__ == "__main__":
    main()
