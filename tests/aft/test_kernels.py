"""The Triton kernels of aft.kernels against float64 references, forward and backward.

On the CPU the kernels need Triton's interpreter, which must be switched on before Triton is
imported: :func:`test_interpreted_kernels` runs this file in a subprocess with
``TRITON_INTERPRET=1`` at tiny sizes with small blocks (several tiles, channel blocks and
chunks), comparing with the naive reference aft.ops.naive (float64). With a CUDA device
the kernels run compiled at real sizes against the float64 PyTorch path of aft.functional
(itself checked against the dense reference in test_functional.py).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import Tensor

from aft import functional as AF
from aft import kernels, ops
from aft.memory import saved_bytes
from aft.ops.naive import aft_dense, conv1d_bias, local_bias

reference_aft = partial(aft_dense, dtype=torch.float64)  # Eq. 2 by the naive reference, in float64

INTERPRETED = kernels.interpreting()


def _marks(*marks: pytest.MarkDecorator) -> Callable[[Callable], Callable]:
    """One decorator that applies ``marks``."""

    def apply(test: Callable) -> Callable:
        for mark in marks:
            test = mark(test)
        return test

    return apply


# The markers select them: python -m pytest -m cuda on a GPU, -m "not interpreter" to leave out the slow CPU runs.
interpreted = _marks(
    pytest.mark.interpreter,
    pytest.mark.skipif(not INTERPRETED, reason="runs under TRITON_INTERPRET=1 in test_interpreted_kernels"),
)
on_cuda = _marks(
    pytest.mark.cuda, pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(), reason="needs a CUDA device")
)

B, T, D, HEADS = 1, 21, 8, 4  # 3 tiles of 8 rows in 2 chunks: the interpreter's cost grows with B T D
Case = tuple[Callable[..., Tensor], Callable[..., Tensor], list[Tensor]]
VARIANTS = ["simple", "simple_ungated", "local_factorized", "local_dense", "conv1d", "conv1d_kernel_only"]


def run_interpreted(test_file: str, min_passed: int) -> None:
    """Run ``test_file`` under the Triton interpreter in a subprocess (the rest of the suite
    stays compiled-free) and check that at least ``min_passed`` of its tests passed."""
    if INTERPRETED:
        pytest.skip("this is the interpreted run")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", test_file, "-q", "-p", "no:cacheprovider", "-o", "addopts="],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed and int(passed.group(1)) >= min_passed, result.stdout[-2000:]


@pytest.mark.interpreter
def test_interpreted_kernels() -> None:
    """This file under the Triton interpreter."""
    run_interpreted(__file__, min_passed=60)


# ------------------------------------------------------------------------------ helpers


def _blocks(t: int = 8, d: int = 8, chunks: int = 2, products: bool = False):
    """A launch shape (imported lazily: Triton)."""
    from aft.kernels.common import Blocks

    return Blocks(t=t, d=d, chunks=chunks, products=products)


PRODUCTS = dict(t=16, d=16, chunks=2, products=True)  # the smallest tiles tl.dot takes


def _randn(*shape: int, scale: float = 1.0, seed: int, device: str = "cpu") -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device)


def _case(
    variant: str, causal: bool, scale: float, n: int = T, window: int = 5, blocks=None, shape: tuple[int, int] = (B, D)
) -> Case:
    """``(kernel(*inputs), dense float64 reference(*inputs), inputs)`` on the CPU; ``shape``: batch, channels."""
    batch, d = shape
    q, v = _randn(batch, n, d, seed=1), _randn(batch, n, d, seed=2)
    k = _randn(batch, n, HEADS if variant.startswith("conv1d") else d, scale=scale, seed=3)
    blocks = blocks or _blocks()
    if variant.startswith("simple"):
        zeros = torch.zeros(1, n, n, dtype=torch.float64)
        if variant == "simple_ungated":
            return (
                lambda k, v: kernels.aft_simple(None, k, v, causal, blocks),
                lambda k, v: reference_aft(None, k, v, zeros, causal),
                [k, v],
            )
        return (
            lambda q, k, v: kernels.aft_simple(q, k, v, causal, blocks),
            lambda q, k, v: reference_aft(q, k, v, zeros, causal),
            [q, k, v],
        )
    if variant == "local_factorized":
        # u, f of scale sqrt(scale): the bias u f^T has the scale of the keys
        u, f = _randn(n, 3, scale=scale**0.5, seed=4), _randn(n, 3, scale=scale**0.5, seed=5)
        return (
            lambda q, k, v, u, f: kernels.aft_local(q, k, v, (u, f), window, causal, blocks),
            lambda q, k, v, u, f: reference_aft(q, k, v, local_bias(u @ f.T, window), causal),
            [q, k, v, u, f],
        )
    if variant == "local_dense":
        w = _randn(n, n, scale=scale, seed=4)
        return (
            lambda q, k, v, w: kernels.aft_local(q, k, v, w, window, causal, blocks),
            lambda q, k, v, w: reference_aft(q, k, v, local_bias(w, window), causal),
            [q, k, v, w],
        )
    global_connectivity = variant == "conv1d"
    w = _randn(HEADS, 4 if causal else 5, scale=scale, seed=4)
    return (
        lambda q, k, v, w: kernels.aft_conv1d(q, k, v, w, causal, global_connectivity, blocks),
        lambda q, k, v, w: reference_aft(q, k, v, conv1d_bias(w, n, causal, global_connectivity), causal),
        [q, k, v, w],
    )


def _assert_close(out: Tensor, ref: Tensor, tol: float) -> None:
    """Elementwise ``|out - ref| <= tol * (|ref| + max(1, max |ref|))``, finite.

    The floor: float32 rounding of O(1) terms (``v - avg`` in a gradient, say) stays even
    where a whole result cancels to ~0 (a one-hot softmax).
    """
    assert torch.isfinite(out).all()
    scale = max(1.0, float(ref.detach().abs().max()))
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * scale)


def _check(case: Case, tol: float) -> None:
    """The kernel's float32 output and gradients against autograd through the float64 reference."""
    kernel, reference, inputs = case
    ours = [x.float().requires_grad_() for x in inputs]
    theirs = [x.double().requires_grad_() for x in inputs]
    out, ref = kernel(*ours), reference(*theirs)
    _assert_close(out, ref, tol)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64).to(ref.device)
    for a, b in zip(torch.autograd.grad(out, ours, grad.float()), torch.autograd.grad(ref, theirs, grad), strict=True):
        _assert_close(a, b, tol)


# ------------------------------------------------------------------- interpreted (CPU)


@interpreted
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_matches_reference(variant: str, causal: bool, scale: float) -> None:
    """Keys and biases of magnitude 1e2 stay finite and exact in float32."""
    _check(_case(variant, causal, scale), 4e-6 * (1.0 + scale))


@interpreted
@pytest.mark.parametrize("variant", ["local_factorized", "conv1d"])
@pytest.mark.parametrize("causal", [False, True])
def test_launch_shapes(variant: str, causal: bool) -> None:
    """Two batch elements, two channel blocks of two key heads each, three chunks of one tile;
    then five tiles in one chunk."""
    for blocks in (_blocks(t=8, d=8, chunks=3), _blocks(t=4, d=16, chunks=1)):
        _check(_case(variant, causal, 1.0, n=19, blocks=blocks, shape=(2, 16)), 1e-5)


@interpreted
@pytest.mark.parametrize("products", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [1, 2, T, 100])
def test_local_windows(causal: bool, window: int, products: bool) -> None:
    blocks = _blocks(**PRODUCTS) if products else None
    _check(_case("local_factorized", causal, 1.0, window=window, blocks=blocks), 1e-5)


@interpreted
@pytest.mark.parametrize("variant", ["local_factorized", "local_dense"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_band_products_match_reference(variant: str, causal: bool, scale: float) -> None:
    """AFT-local's band as tile products; at scale 100 the products underflow and every pair
    of tiles is summed term by term instead."""
    _check(_case(variant, causal, scale, blocks=_blocks(**PRODUCTS)), 4e-6 * (1.0 + scale))


@interpreted
@pytest.mark.parametrize("causal", [False, True])
def test_band_products_fall_back_per_pair_of_tiles(causal: bool) -> None:
    """A key 100 above the rest that the bias of some rows takes back (w = -100): those rows'
    products with its tile underflow (e^-100 x e^-100) and are summed term by term, the other
    pairs of tiles stay products; values and gradients exact, over two channel blocks."""
    n, window = 37, 21
    q, k, v = (_randn(2, n, 32, seed=s) for s in (1, 2, 3))
    k[:, 20] += 100.0
    w = _randn(n, n, seed=4)
    w[::3, 20] -= 100.0
    kernel = lambda q, k, v, w: kernels.aft_local(q, k, v, w, window, causal, _blocks(**PRODUCTS))  # noqa: E731
    reference = lambda q, k, v, w: reference_aft(q, k, v, local_bias(w, window), causal)  # noqa: E731
    _check((kernel, reference, [q, k, v, w]), 1e-5)


@interpreted
def test_band_products_launch_shapes() -> None:
    """Tile products only for a band over positions, with tiles tl.dot can take; the default
    launch shape uses them inside ``ops.use(band_products=True)`` and only for AFT-local."""
    from aft.kernels.banded import Band, default_blocks

    q, k, v = (_randn(B, T, D, seed=s).float() for s in (1, 2, 3))
    with pytest.raises(ValueError, match="band over positions"):
        kernels.aft_conv1d(q, k[..., :HEADS], v, _randn(HEADS, 4, seed=4).float(), True, True, _blocks(**PRODUCTS))
    with pytest.raises(ValueError, match="t and d >= 16"):
        kernels.aft_local(q, k, v, _randn(T, T, seed=4).float(), 4, True, _blocks(8, 8, products=True))
    assert not default_blocks(v, Band(4, True)).products
    assert default_blocks(v, Band(4, True), band_products=True).products
    assert not default_blocks(v, Band(0, True), band_products=True).products  # AFT-simple: no band
    assert not default_blocks(v, Band(4, True, per_head=True), band_products=True).products  # AFT-conv1d
    with ops.use(band_products=True):
        u = _randn(T, 3, seed=4).float()
        out = AF.aft_local(q, k, v, (u, u), 4, causal=True)
    torch.testing.assert_close(out, AF.aft_local(q, k, v, (u, u), 4, causal=True), rtol=1e-5, atol=1e-6)


@interpreted
@pytest.mark.parametrize("products", [False, True])
def test_causal_growing_keys(products: bool) -> None:
    """Early keys e^-300 below later ones: a running maximum, no 0/0."""
    n, blocks = 24, _blocks(**PRODUCTS) if products else _blocks()
    k = torch.linspace(0, 300, n, dtype=torch.float64).view(1, n, 1) + _randn(1, n, 8, seed=1)
    v = _randn(1, n, 8, seed=2)
    w = _randn(n, n, seed=3)
    for kernel, bias in (
        (lambda k, v: kernels.aft_simple(None, k, v, True, blocks), torch.zeros(1, n, n, dtype=torch.float64)),
        (lambda k, v: kernels.aft_local(None, k, v, w.float(), 6, True, blocks), local_bias(w, 6)),
    ):
        _check((kernel, lambda k, v: reference_aft(None, k, v, bias, True), [k, v]), 1e-6 * 300)


@interpreted
@pytest.mark.parametrize(
    "variant, products",
    [
        ("simple", False),
        ("local_factorized", False),
        ("local_dense", False),
        ("conv1d", False),
        ("local_factorized", True),
        ("local_dense", True),
    ],
)
def test_causal_leakage(variant: str, products: bool) -> None:
    """Outputs at <= t ignore inputs after t, and their gradients vanish there (with tile
    products too, whose key tiles reach past the row)."""
    kernel, _, inputs = _case(variant, True, 1.0, blocks=_blocks(**PRODUCTS) if products else None)
    x = [a.float() for a in inputs]
    out = kernel(*x)
    for t in (0, 12):
        changed = [a.clone() for a in x]
        for a in changed[:3]:
            a[:, t + 1 :] = torch.randn_like(a[:, t + 1 :]) * 5
        torch.testing.assert_close(kernel(*changed)[:, : t + 1], out[:, : t + 1], rtol=0, atol=1e-6)
        ours = [a.clone().requires_grad_() for a in x]
        grads = torch.autograd.grad(kernel(*ours)[:, : t + 1].sum(), ours[:3])
        assert all(float(g[:, t + 1 :].abs().max()) == 0.0 for g in grads)


@interpreted
def test_functional_dispatches_to_kernels() -> None:
    """aft.functional runs the kernels for float32 (here interpreted), PyTorch for float64."""
    q, k, v = (_randn(B, T, D, seed=s).float() for s in (1, 2, 3))
    u = _randn(T, 3, seed=4)
    w = _randn(HEADS, 3, seed=5)
    for fn in (
        lambda q, k, v: AF.aft_simple(q, k, v, causal=True),
        lambda q, k, v: AF.aft_local(q, k, v, (u.to(v.dtype), u.to(v.dtype)), 4),
        lambda q, k, v: AF.aft_conv1d(q, k[..., :HEADS], v, w.to(v.dtype), causal=True),
    ):
        out = fn(*(x.requires_grad_() for x in (q, k, v)))
        assert "aft_triton_banded" in type(out.grad_fn).__name__  # the kernel custom op
        with ops.use(backend="torch"):
            torch.testing.assert_close(out, fn(q, k, v), rtol=1e-5, atol=1e-6)
        assert "aft_triton" not in type(fn(q.double(), k.double(), v.double()).grad_fn).__name__


@interpreted
def test_saves_inputs_output_and_lse_only() -> None:
    """Autograd keeps q, k, v, the band, out and float32 lse: O(T D), nothing recomputable."""
    q, k, v = (_randn(B, T, D, seed=s).float().requires_grad_() for s in (1, 2, 3))
    u = _randn(T, 3, seed=4).float()
    assert saved_bytes(lambda: kernels.aft_simple(q, k, v, True)) == 5 * q.nbytes + 4  # + the 1-element empty band
    band = 64 * 4 * 4  # the float32 band: T rows padded to 64, window 4
    assert saved_bytes(lambda: kernels.aft_local(q, k, v, (u, u), 4, True)) == 5 * q.nbytes + band


@interpreted
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_float32_core(dtype: torch.dtype) -> None:
    """float16/bfloat16 inputs are read as they are and computed in float32 (no -inf
    padding from a half-precision ``other``)."""
    q, k, v = (_randn(B, T, D, seed=s).to(dtype) for s in (1, 2, 3))
    w = _randn(T, T, seed=4).float()
    with torch.autocast("cpu", dtype=dtype):
        out = kernels.aft_local(q, k * 30, v, w, 4, True, _blocks())
    assert out.dtype == dtype
    ref = reference_aft(q, k * 30, v, local_bias(w, 4), True)
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2)


# --------------------------------------------------------------------- compiled (CUDA)


def _cuda_case(variant: str, causal: bool, scale: float, n: int, d: int) -> Case:
    """``(kernel, float64 PyTorch path, inputs)`` on the GPU, default launch shape."""
    q, v = _randn(2, n, d, seed=1, device="cuda"), _randn(2, n, d, seed=2, device="cuda")
    heads = 8 if variant.startswith("conv1d") else d
    k = _randn(2, n, heads, scale=scale, seed=3, device="cuda")
    if variant == "simple_ungated":
        fn = lambda k, v: AF.aft_simple(None, k, v, causal)  # noqa: E731
        return fn, fn, [k, v]
    if variant == "simple":
        fn = lambda q, k, v: AF.aft_simple(q, k, v, causal)  # noqa: E731
        return fn, fn, [q, k, v]
    if variant == "local_factorized":
        u, f = (_randn(n, 16, scale=scale**0.5 / 4, seed=s, device="cuda") for s in (4, 5))
        fn = lambda q, k, v, u, f: AF.aft_local(q, k, v, (u, f), 32, causal)  # noqa: E731
        return fn, fn, [q, k, v, u, f]
    if variant == "local_dense":
        fn = lambda q, k, v, w: AF.aft_local(q, k, v, w, 256, causal)  # noqa: E731
        return fn, fn, [q, k, v, _randn(n, n, scale=scale, seed=4, device="cuda")]
    global_connectivity = variant == "conv1d"
    fn = lambda q, k, v, w: AF.aft_conv1d(q, k, v, w, causal, global_connectivity)  # noqa: E731
    return fn, fn, [q, k, v, _randn(8, 31, scale=scale, seed=4, device="cuda")]


@on_cuda
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_matches_torch_path(variant: str, causal: bool) -> None:
    _check(_cuda_case(variant, causal, 1.0, 4096, 256), 1e-5)


@on_cuda
@pytest.mark.parametrize("variant", ["simple", "local_factorized", "local_dense", "conv1d"])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_extreme_scales(variant: str, causal: bool) -> None:
    _check(_cuda_case(variant, causal, 100.0, 1024, 64), 4e-6 * 101)


@on_cuda
@pytest.mark.parametrize("variant", ["local_factorized", "local_dense"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_cuda_band_products(variant: str, causal: bool, scale: float) -> None:
    """AFT-local's band as tile products, compiled, against the float64 PyTorch path."""
    n, d = (4096, 256) if scale == 1.0 else (1024, 64)
    with ops.use(band_products=True):
        _check(_cuda_case(variant, causal, scale, n, d), 4e-6 * (1.0 + scale))


@on_cuda
def test_cuda_causal_growing_keys() -> None:
    n = 4096
    ramp = torch.linspace(0, 300, n, device="cuda", dtype=torch.float64).view(1, n, 1)
    k = ramp + _randn(1, n, 64, seed=1, device="cuda")
    v = _randn(1, n, 64, seed=2, device="cuda")
    u = _randn(n, 8, seed=3, device="cuda")
    for fn in (
        lambda k, v: AF.aft_simple(None, k, v, causal=True),
        lambda k, v: AF.aft_local(None, k, v, (u.to(k.dtype), u.to(k.dtype)), 32, causal=True),
    ):
        _check((fn, fn, [k, v]), 1e-5 * 300)


@on_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast(dtype: torch.dtype) -> None:
    q, k, v = (_randn(2, 1024, 128, seed=s, device="cuda").to(dtype) for s in (1, 2, 3))
    u = _randn(1024, 8, seed=4, device="cuda").float() * 0.5
    with torch.autocast("cuda", dtype=dtype):
        out = AF.aft_local(q, k, v, (u, u), 32, causal=True)
    assert out.dtype == dtype
    ref = AF.aft_local(q.double(), k.double(), v.double(), (u.double(), u.double()), 32, causal=True)
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2)


# --------------------------------------------------------------------------- custom ops


@interpreted
def test_kernel_ops_pass_opcheck() -> None:
    """The kernel launches as custom ops: schema, fake implementation, autograd, AOT dispatch."""
    from aft.kernels import banded, conv2d

    q, k, v = (_randn(B, 8, 16, seed=s).float().requires_grad_() for s in (1, 2, 3))
    bias = _randn(8, 7, seed=4).float().requires_grad_()
    torch.library.opcheck(banded._banded_op, (q, k, v, bias, 4, False, True, False, 16, 16, None, 4, False, True, True))
    k2, v2 = _randn(B, 2, 4, 4, seed=5).float().requires_grad_(), _randn(B, 2, 4, 16, seed=6).float().requires_grad_()
    w2 = _randn(4, 3, 3, seed=7).float().requires_grad_()
    torch.library.opcheck(conv2d._conv2d_op, (None, k2, v2, w2, True, 16, 4, True, True))


@interpreted
def test_kernel_path_compiles_whole() -> None:
    """A causal AFT-local layer on the kernels under ``torch.compile(fullgraph=True)`` matches eager."""
    from aft.layers import AFTLocal

    layer = AFTLocal(16, 12, window=4, bias_dim=3, causal=True)
    x = _randn(B, 12, 16, seed=1).float()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), layer(x))


# ------------------------------------------------------------------------------- layout


def test_kernel_modules_share_helpers_through_common() -> None:
    """No kernel module imports another's private names (what they share is public in
    aft.kernels.common), and none imports the PyTorch path: of aft.ops, only its leaf
    modules casting and library."""
    for path in sorted((Path(__file__).resolve().parents[2] / "aft" / "kernels").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not [a.name for a in node.names if a.name.startswith("aft.")], (path.name, ast.unparse(node))
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aft"):
                allowed = node.module.startswith("aft.kernels") or node.module in ("aft.ops.casting", "aft.ops.library")
                assert allowed, (path.name, node.module)
                assert not [a.name for a in node.names if a.name.startswith("_")], (path.name, ast.unparse(node))


@pytest.mark.skipif(INTERPRETED, reason="records the compiled kernels' launches")
def test_forward_launches_take_only_forward_arrays(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forward pass that no backward follows hands its kernels real arrays only: no
    1-element placeholder (an ``lse`` not stored, a state buffer not read) and no array in
    two roles (``v`` for an absent gate, ``out`` for the backward's ``dout``). The launches
    are recorded, not run."""
    triton = pytest.importorskip("triton")
    from aft.kernels.common import Blocks

    launches: list[tuple[str, tuple]] = []
    monkeypatch.setattr(
        triton.runtime.jit.JITFunction,
        "run",
        lambda self, *args, grid, warmup, **kwargs: launches.append((self.__name__, args)),
    )

    def tensors(args: object) -> list[Tensor]:
        if isinstance(args, tuple):
            return [t for arg in args for t in tensors(arg)]
        return [args] if isinstance(args, Tensor) else []

    k, v = _randn(B, T, D, seed=1).float(), _randn(B, T, D, seed=2).float()
    u, f = _randn(T, 3, seed=3).float(), _randn(T, 3, seed=4).float()
    k2, v2, w2 = _randn(B, 3, 4, HEADS, seed=5).float(), _randn(B, 3, 4, D, seed=6).float(), _randn(HEADS, 3, 3, seed=7)
    with torch.no_grad():
        kernels.aft_local(None, k, v, (u, f), 5, False, _blocks())
        kernels.aft_conv2d(None, k2, v2, w2.float(), True, Blocks(d=8))
    assert {name for name, _ in launches} == {
        "_summary_kernel",
        "_forward_kernel",
        "_row_totals_kernel",
        "_row_prefix_kernel",
    }
    for name, args in launches:
        given = tensors(args)
        assert all(t.numel() > 1 for t in given), name
        assert len({t.data_ptr() for t in given}) == len(given), name
