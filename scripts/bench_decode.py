"""Sampling benchmark: recurrent decoding (``Decoder.decode_step``) vs full re-computation.

Generating a CIFAR10 image is 3072 sub-pixel tokens (§5.1). A causal AFT decoder can carry
an O(D) state per layer (AFT-simple) or the last ``window`` keys and values (AFT-local) from
one token to the next, so each new token costs O(1) in T; re-running the full forward on the
growing prefix costs O(t) for token t, O(T^2) for the sample.

For each mixer this script

* generates ``--tokens`` tokens recurrently after a BOS token and times it (whole sample);
* times the full forward on prefixes of ``--probes`` evenly spaced lengths and sums its
  linear interpolation over t = 1..tokens for the re-computation total: running all 3072
  forwards takes minutes on a CPU, and the per-prefix cost is smooth in t;
* reports the per-token cost at the last position for both, the speed-up, and the bytes of
  the decoding state after the last token.

    python scripts/bench_decode.py                                       # CPU, depth 2, d=128
    python scripts/bench_decode.py --device cuda --depth 24 --dim 256 --out results/bench/decode_cuda.json

A benchmark, not a test: numbers depend on the machine; compare within one run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from benchlib import add_common_arguments, median_seconds, sync, write_record
from torch import nn

from aft.layers import AFTLocal, AFTSimple
from aft.models import Decoder


def mixers(seq_len: int, window: int, bias_dim: int) -> dict[str, Callable[..., nn.Module]]:
    """The causal AFT layers of the CIFAR10 rows (Table 2), as ``mixer(dim=...)`` factories."""
    return {
        "aft_simple": partial(AFTSimple, causal=True),
        f"aft_local_w{window}": partial(AFTLocal, seq_len=seq_len, window=window, bias_dim=bias_dim, causal=True),
    }


def state_bytes(cache: object) -> int:
    """Bytes of every tensor reachable from a decoding cache."""
    if isinstance(cache, torch.Tensor):
        return cache.numel() * cache.element_size()
    if isinstance(cache, (list, tuple)):
        return sum(state_bytes(c) for c in cache)
    if hasattr(cache, "__dict__"):
        return sum(state_bytes(c) for c in vars(cache).values())
    return 0


@torch.no_grad()
def time_recurrent(model: nn.Module, bos: torch.Tensor, tokens: int, device: torch.device) -> dict[str, float]:
    """Total seconds to consume BOS and ``tokens - 1`` more tokens one at a time, and the last step's time."""
    sync(device)
    start = time.perf_counter()
    logits, cache = model.decode_step(bos)
    for _ in range(tokens - 2):
        logits, cache = model.decode_step(logits.argmax(-1), cache)
    sync(device)
    before_last = time.perf_counter()
    logits, cache = model.decode_step(logits.argmax(-1), cache)
    sync(device)
    end = time.perf_counter()
    return {"seconds": end - start, "last_token_seconds": end - before_last, "state_bytes": state_bytes(cache)}


@torch.no_grad()
def time_recompute(
    model: nn.Module, batch: int, tokens: int, probes: int, repeats: int, device: torch.device
) -> dict[str, float]:
    """Re-computation total, integrated from the full forward timed at ``probes`` prefix lengths."""
    lengths = np.unique(np.linspace(1, tokens, probes).round().astype(int))
    seconds = []
    for t in lengths:
        prefix = torch.randint(0, 256, (batch, int(t)), device=device)
        seconds.append(median_seconds(lambda prefix=prefix: model(prefix)[:, -1].argmax(-1), repeats, device, warmup=1))
    # one forward per t in 1..tokens, its time interpolated linearly between the probes
    per_token = np.interp(np.arange(1, tokens + 1), lengths, seconds)
    return {"seconds": float(per_token.sum()), "last_token_seconds": seconds[-1], "probe_lengths": lengths.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=3072, help="sample length (CIFAR10: 32 x 32 x 3)")
    parser.add_argument("--depth", type=int, default=2, help="L (the paper's CIFAR10 rows: 12 or 24)")
    parser.add_argument("--dim", type=int, default=128, help="d (the paper's: 256 or 512)")
    parser.add_argument("--window", type=int, default=256, help="AFT-local window (Table 2: 256)")
    parser.add_argument("--bias-dim", type=int, default=64, help="d' of the factorized bias (§5.1: 64)")
    parser.add_argument("--batch", type=int, default=1, help="images sampled at once")
    parser.add_argument("--probes", type=int, default=9, help="prefix lengths timed for the re-computation")
    add_common_arguments(parser, repeats=3)
    args = parser.parse_args()
    device = torch.device(args.device)

    rows = []
    for name, factory in mixers(args.tokens, args.window, args.bias_dim).items():
        torch.manual_seed(0)
        model = Decoder(factory, vocab_size=256, seq_len=args.tokens, depth=args.depth, dim=args.dim).to(device).eval()
        bos = torch.zeros(args.batch, dtype=torch.long, device=device)
        recurrent = time_recurrent(model, bos, args.tokens, device)
        recompute = time_recompute(model, args.batch, args.tokens, args.probes, args.repeats, device)
        row = {
            "mixer": name,
            "recurrent_seconds": recurrent["seconds"],
            "recurrent_last_token_ms": 1e3 * recurrent["last_token_seconds"],
            "recurrent_state_bytes": recurrent["state_bytes"],
            "recompute_seconds_integrated": recompute["seconds"],
            "recompute_last_token_ms": 1e3 * recompute["last_token_seconds"],
            "recompute_probe_lengths": recompute["probe_lengths"],
            "speedup": recompute["seconds"] / recurrent["seconds"],
        }
        print(
            f"{name:<14} recurrent {row['recurrent_seconds']:8.2f} s ({row['recurrent_last_token_ms']:.2f} ms/token, "
            f"state {row['recurrent_state_bytes'] / 2**10:.1f} KiB) | "
            f"re-computation ~{row['recompute_seconds_integrated']:8.2f} s "
            f"({row['recompute_last_token_ms']:.2f} ms for token {args.tokens}) | x{row['speedup']:.1f}",
            flush=True,
        )
        rows.append(row)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "device")}
    write_record(args.out, device, config=config, rows=rows)


if __name__ == "__main__":
    main()
