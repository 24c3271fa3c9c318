"""Compile every Triton kernel of aft.kernels for a GPU, without one: registers, spills, shared memory.

It runs the kernels' entry points (forward and backward) on small CPU tensors with Triton's
launcher replaced by a recorder, so that the launch code picks the kernels, argument types,
constexprs and warps exactly as it would on the GPU, for the launch shapes the GPU uses
(``default_blocks`` on CUDA, and AFT-local's tile products at their default 8 warps and at
4). Each distinct launch is then compiled for ``--arch`` by Triton's own compiler and
``ptxas`` (shipped with Triton), and ``cuobjdump`` reads the binary's resource usage. A kernel that does not compile
fails here as it would on the GPU (the interpreter of the tests accepts more); ``stack``
bytes are registers spilled to local memory, a launch shape to avoid. No timing: that needs
the GPU (scripts/bench_ops.py, scripts/tune_kernels.py).

    python scripts/compile_kernels.py --arch 90 --out results/bench/kernels_compiled_sm90.json
    python scripts/compile_kernels.py --arch 70 --ops aft_local   # the paper's V100s
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch
import triton
from benchlib import write_record
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction, mangle_type

from aft import kernels
from aft.kernels import banded, conv2d
from aft.kernels.common import Blocks

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas")
# A CUDA tensor's stand-in for the default launch shapes (they read only ``device`` and ``shape``).
Defaults = Callable[[torch.Tensor], object]


@dataclass(frozen=True)
class Launch:
    """One kernel launch as the GPU would compile it: ``signature`` by parameter (a tuple of
    types for a tuple of pointers), the ``constexprs`` passed by name, the ``absent`` (``None``)
    arguments by their path (parameter index, then index in a tuple), which Triton takes as
    constexprs too."""

    kernel: JITFunction
    signature: dict[str, object]
    constexprs: dict[str, object]
    absent: tuple[tuple[int, ...], ...]
    num_warps: int

    @property
    def key(self) -> tuple:
        return (
            self.kernel.__name__,
            tuple(self.signature.items()),
            tuple(sorted(self.constexprs.items())),
            self.num_warps,
        )


@contextlib.contextmanager
def recording() -> Iterator[list[Launch]]:
    """Inside the block kernel launches are recorded (in order), not run; outputs stay uninitialized."""
    launches: list[Launch] = []
    original = JITFunction.run

    def record(self: JITFunction, *args: object, grid: object, warmup: bool, **kwargs: object) -> None:
        launches.append(_launch(self, args, kwargs))

    JITFunction.run = record
    try:
        yield launches
    finally:
        JITFunction.run = original


def _launch(kernel: JITFunction, args: tuple, kwargs: dict) -> Launch:
    names = list(inspect.signature(kernel.fn).parameters)
    constexprs = {k: v for k, v in kwargs.items() if k not in LAUNCH_OPTIONS}
    runtime = [n for n in names if n not in constexprs]
    signature = {name: mangle_type(value) for name, value in zip(runtime, args, strict=True)}
    signature.update({name: "constexpr" for name in constexprs})
    absent = tuple(
        path for name, value in zip(runtime, args, strict=True) for path in _absent(value, (names.index(name),))
    )
    return Launch(kernel, {n: signature[n] for n in names}, constexprs, absent, int(kwargs.get("num_warps", 4)))


def _absent(value: object, path: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """The paths of the ``None`` entries of an argument (a tuple's entries by index)."""
    if value is None:
        yield path
    elif isinstance(value, tuple):
        for i, entry in enumerate(value):
            yield from _absent(entry, (*path, i))


def _pointer_types(types: object) -> Iterator[str]:
    """The pointer types of a signature's values, tuples flattened, in order."""
    if isinstance(types, tuple):
        for entry in types:
            yield from _pointer_types(entry)
    elif isinstance(types, str) and types.startswith("*"):
        yield types


def compile_launch(launch: Launch, arch: int) -> dict:
    """Compile for ``sm_<arch>``; registers, spilled (stack) bytes and shared memory from the binary."""
    params = list(launch.signature)
    constexprs = {(params.index(name),): value for name, value in launch.constexprs.items()}
    constexprs.update({path: None for path in launch.absent})
    source = ASTSource(fn=launch.kernel, signature=launch.signature, constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": launch.num_warps})
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run(
            [str(CUOBJDUMP), "--dump-resource-usage", str(cubin)], capture_output=True, text=True, check=True
        ).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    return {
        "registers": int(fields["REG"]),
        "stack_bytes": int(fields["STACK"]),
        "local_bytes": int(fields["LOCAL"]),
        "shared_bytes": int(fields["SHARED"]) + compiled.metadata.shared,
    }


def _cuda_like(t: torch.Tensor) -> SimpleNamespace:
    return SimpleNamespace(device=torch.device("cuda"), shape=t.shape)


def _inputs(shape: tuple[int, ...], key_channels: int, dtype: torch.dtype) -> list[torch.Tensor]:
    q, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(2))
    k = torch.randn(*shape[:-1], key_channels, dtype=dtype, requires_grad=True)
    return [q, k, v]


def operators(dtype: torch.dtype) -> dict[str, dict[str, Callable[[], torch.Tensor]]]:
    """Each op's variants at CUDA's launch shapes: ``{op: {variant: forward() -> out}}``."""
    T, D, heads = 64, 64, 8

    def banded_blocks(v: torch.Tensor, band: banded.Band, products: bool = False, **changes: object) -> Blocks:
        return replace(banded.default_blocks(_cuda_like(v), band, products), **changes)

    def simple(causal: bool) -> torch.Tensor:
        q, k, v = _inputs((1, T, D), D, dtype)
        return kernels.aft_simple(q, k, v, causal, banded_blocks(v, banded.Band(0, causal)))

    def local(causal: bool, products: bool = False, **changes: object) -> torch.Tensor:
        q, k, v = _inputs((1, T, D), D, dtype)
        u = torch.randn(T, 16, requires_grad=True)
        blocks = banded_blocks(v, banded.Band(32, causal), products, **changes)
        return kernels.aft_local(q, k, v, (u, u), 32, causal, blocks)

    def conv1d(causal: bool) -> torch.Tensor:
        q, k, v = _inputs((1, T, D), heads, dtype)
        w = torch.randn(heads, 32 if causal else 63, requires_grad=True)
        band = banded.Band(32, causal, per_head=True)
        return kernels.aft_conv1d(q, k, v, w, causal, True, banded_blocks(v, band))

    def conv2d_op(global_connectivity: bool) -> torch.Tensor:
        q, k, v = _inputs((1, 16, 32, D), heads, dtype)
        w = torch.randn(heads, 7, 7, requires_grad=True)
        return kernels.aft_conv2d(q, k, v, w, global_connectivity, conv2d.default_blocks(_cuda_like(v)))

    def sequence(fn: Callable[..., torch.Tensor], **changes: object) -> dict[str, Callable[[], torch.Tensor]]:
        return {"causal": lambda: fn(True, **changes), "bidirectional": lambda: fn(False, **changes)}

    return {
        "aft_simple": sequence(simple),
        "aft_local": sequence(local),
        "aft_local_products": sequence(local, products=True),  # default_blocks(..., band_products=True): 8 warps
        "aft_local_products_4_warps": sequence(local, products=True, warps=4),
        "aft_conv1d": sequence(conv1d),
        "aft_conv2d": {"global": lambda: conv2d_op(True), "kernel only": lambda: conv2d_op(False)},
    }


def record_launches(ops: list[str], dtypes: list[torch.dtype]) -> list[tuple[str, Launch]]:
    """``(op variant, launch)`` for every distinct launch of the forward and backward passes of ``ops``."""
    seen, found = set(), []
    for dtype in dtypes:
        built = operators(dtype)
        for name in ops:
            for variant, forward in built[name].items():
                with recording() as launches:
                    out = forward()
                    out.backward(torch.zeros_like(out))
                for launch in launches:
                    if launch.key not in seen:
                        seen.add(launch.key)
                        found.append((f"{name} {variant}", launch))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10: 90 H100, 80 A100, 70 V100")
    parser.add_argument("--ops", nargs="*", default=None, help=f"a subset of: {', '.join(operators(torch.float32))}")
    parser.add_argument(
        "--dtypes", nargs="*", default=["float32", "bfloat16"], choices=["float32", "float16", "bfloat16"]
    )
    parser.add_argument("--out", type=Path, help="write the JSON record here (results/bench/...)")
    args = parser.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("unset TRITON_INTERPRET: the interpreter compiles nothing")
    known = list(operators(torch.float32))
    ops = args.ops or known
    unknown = sorted(set(ops) - set(known))
    if unknown:
        raise SystemExit(f"unknown --ops {unknown}; choose from {known}")
    rows = []
    for op, launch in record_launches(ops, [getattr(torch, d) for d in args.dtypes]):
        row = {
            "op": op,
            "kernel": f"{launch.kernel.fn.__module__}.{launch.kernel.__name__}",
            "dtype": next(_pointer_types(tuple(launch.signature.values()))),
            "constexprs": {k: str(v) for k, v in launch.constexprs.items()},
            "num_warps": launch.num_warps,
        }
        row.update(compile_launch(launch, args.arch))
        rows.append(row)
        flags = " ".join(f"{k}={v}" for k, v in launch.constexprs.items() if k not in ("GROUP", "RADIUS"))
        print(
            f"{op:<38} {launch.kernel.__name__:<20} {row['dtype']:<6} warps={launch.num_warps} "
            f"regs {row['registers']:>3} stack {row['stack_bytes']:>4} B  shared {row['shared_bytes']:>6} B  {flags}",
            flush=True,
        )
    spilled = sum(row["stack_bytes"] > 0 for row in rows)
    print(f"{len(rows)} launches compiled for sm_{args.arch}; {spilled} of them spill registers")
    write_record(args.out, torch.device("cpu"), target=f"sm_{args.arch}", triton=triton.__version__, rows=rows)


if __name__ == "__main__":
    main()
