"""The AFT-conv2d Triton kernels (Eq. 6 on a 2-d grid) against float64 references.

As in test_kernels.py: :func:`test_interpreted_kernels` runs this file in a subprocess with
``TRITON_INTERPRET=1`` at tiny grids, comparing output and gradients with the dense
reference of aft/ops/naive.py over the raster-ordered grid; with a CUDA device the
kernels run compiled at a realistic size against the float64 PyTorch path of
aft.functional (itself checked against the dense reference in test_functional.py).
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import Tensor

from aft import functional as AF
from aft import kernels, ops
from aft.memory import saved_bytes
from aft.ops.naive import aft_dense, conv2d_bias
from tests.aft.test_kernels import Case, _assert_close, _blocks, _check, _randn, interpreted, on_cuda, run_interpreted

reference_aft = partial(aft_dense, dtype=torch.float64)  # Eq. 2 by the naive reference, in float64

B, Y, X, D, HEADS, SIZE = 1, 5, 6, 4, 2, 3  # the interpreter's cost grows with Y X D S^2
CASES = {
    "base": {},
    "size_5": {"size": 5},
    "box_covers_grid": {"grid": (3, 4), "size": 7},
    "one_head_per_channel": {"heads": D},
    "ungated": {"gated": False},
    "kernel_only": {"global_connectivity": False},
}


@pytest.mark.interpreter
def test_interpreted_kernels() -> None:
    """This file under the Triton interpreter."""
    run_interpreted(__file__, min_passed=18)


# ------------------------------------------------------------------------------ helpers


def _reference(q: Tensor | None, k: Tensor, v: Tensor, w: Tensor, global_connectivity: bool) -> Tensor:
    """Eq. 2 with the dense ``(H, YX, YX)`` bias of Eq. 6 over the raster-ordered grid, ``(B, Y, X, D)``."""
    batch, rows, cols, d = v.shape

    def flat(t: Tensor) -> Tensor:
        return t.reshape(batch, rows * cols, t.shape[-1])

    bias = conv2d_bias(w, rows, cols, global_connectivity)
    out = reference_aft(None if q is None else flat(q), flat(k), flat(v), bias, causal=False)
    return out.reshape(batch, rows, cols, d)


def _case(
    scale: float,
    grid: tuple[int, int] = (Y, X),
    size: int = SIZE,
    heads: int = HEADS,
    gated: bool = True,
    global_connectivity: bool = True,
    shape: tuple[int, int] = (B, D),
    blocks=None,
) -> Case:
    """``(kernel(*inputs), dense float64 reference(*inputs), inputs)`` on the CPU; ``shape``:
    batch, channels; keys and kernel of magnitude ``scale``."""
    batch, d = shape
    q, v = _randn(batch, *grid, d, seed=1), _randn(batch, *grid, d, seed=2)
    k = _randn(batch, *grid, heads, scale=scale, seed=3)
    w = _randn(heads, size, size, scale=scale, seed=4)
    if not gated:
        return (
            lambda k, v, w: kernels.aft_conv2d(None, k, v, w, global_connectivity, blocks),
            lambda k, v, w: _reference(None, k, v, w, global_connectivity),
            [k, v, w],
        )
    return (
        lambda q, k, v, w: kernels.aft_conv2d(q, k, v, w, global_connectivity, blocks),
        lambda q, k, v, w: _reference(q, k, v, w, global_connectivity),
        [q, k, v, w],
    )


# ------------------------------------------------------------------- interpreted (CPU)


@interpreted
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_matches_reference(case: str, scale: float) -> None:
    """Output and the gradients of q, k, v, w; keys and biases of magnitude 1e3 stay finite
    and exact in float32."""
    _check(_case(scale, **CASES[case]), 4e-6 * (1.0 + scale))


@interpreted
def test_launch_shapes() -> None:
    """Two batch elements and two channel blocks of two key heads each, with padded columns;
    then a one-column grid in two blocks of one head."""
    _check(_case(1.0, grid=(4, 3), heads=4, shape=(2, 8), blocks=_blocks(d=4)), 1e-5)
    _check(_case(1.0, grid=(4, 1), size=5, blocks=_blocks(d=2)), 1e-5)


@interpreted
def test_functional_dispatches_to_kernel() -> None:
    """aft.functional.aft_conv2d runs the kernel for float32 grids (here interpreted) and the
    PyTorch path for float64 and for rows wider than one tile."""
    q, k, v, w = (x.float().requires_grad_() for x in _case(1.0)[2])
    out = AF.aft_conv2d(q, k, v, w)
    assert "aft_triton_conv2d" in type(out.grad_fn).__name__  # the kernel custom op
    with ops.use(backend="torch"):
        torch.testing.assert_close(out, AF.aft_conv2d(q, k, v, w), rtol=1e-5, atol=1e-6)
    assert "aft_triton" not in type(AF.aft_conv2d(q.double(), k.double(), v.double(), w.double()).grad_fn).__name__
    wide = torch.zeros(1, 1, kernels.MAX_GRID_COLUMNS + 1, 1, requires_grad=True)
    assert "aft_triton" not in type(AF.aft_conv2d(None, wide, wide, torch.zeros(1, 1, 1)).grad_fn).__name__


@interpreted
def test_rejects_rows_wider_than_a_tile() -> None:
    k = torch.zeros(1, 1, kernels.MAX_GRID_COLUMNS + 1, 1)
    with pytest.raises(ValueError, match="one tile"):
        kernels.aft_conv2d(None, k, k, torch.zeros(1, 1, 1))


@interpreted
def test_saves_inputs_output_and_lse_only() -> None:
    """Autograd keeps q, k, v, w, out and float32 lse: O(Y X D), nothing recomputable."""
    q, k, v, w = (x.float().requires_grad_() for x in _case(1.0)[2])
    assert (
        saved_bytes(lambda: kernels.aft_conv2d(q, k, v, w)) == 4 * q.nbytes + k.nbytes + w.nbytes
    )  # q, v, out, lse; k; w


@interpreted
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_float32_core(dtype: torch.dtype) -> None:
    """float16/bfloat16 inputs are read as they are and computed in float32 (no -inf
    padding from a half-precision ``other``); out and gradients keep their inputs' dtypes.

    Errors of a few roundings to ``dtype``: ``delta = dout * out`` uses the rounded ``out``,
    which the steep softmax of keys ~30 turns into ``dk`` far above the exact ~1e-9.
    """
    tol = 8 * torch.finfo(dtype).eps
    _, reference, inputs = _case(1.0)
    q, k, v = (x.to(dtype).requires_grad_() for x in (inputs[0], inputs[1] * 30, inputs[2]))
    w = inputs[3].float().requires_grad_()
    with torch.autocast("cpu", dtype=dtype):
        out = kernels.aft_conv2d(q, k, v, w)
    assert out.dtype == dtype
    theirs = [x.detach().double().requires_grad_() for x in (q, k, v, w)]
    ref = reference(*theirs)
    _assert_close(out, ref, tol)
    grad = _randn(*out.shape, seed=9)
    ours = torch.autograd.grad(out, [q, k, v, w], grad.to(dtype))
    assert [g.dtype for g in ours] == [dtype, dtype, dtype, torch.float32]
    for a, b in zip(ours, torch.autograd.grad(ref, theirs, grad), strict=True):
        _assert_close(a, b, tol)


# --------------------------------------------------------------------- compiled (CUDA)


def _cuda_case(
    scale: float,
    grid: tuple[int, int] = (32, 32),
    d: int = 64,
    heads: int = 8,
    size: int = 7,
    global_connectivity: bool = True,
) -> Case:
    """``(kernel, float64 PyTorch path, inputs)`` on the GPU, two batch elements, default launch shape."""
    q, v = _randn(2, *grid, d, seed=1, device="cuda"), _randn(2, *grid, d, seed=2, device="cuda")
    k = _randn(2, *grid, heads, scale=scale, seed=3, device="cuda")
    w = _randn(heads, size, size, scale=scale, seed=4, device="cuda")
    return (
        lambda q, k, v, w: kernels.aft_conv2d(q, k, v, w, global_connectivity),
        lambda q, k, v, w: AF.aft_conv2d(q, k, v, w, global_connectivity),
        [q, k, v, w],
    )


@on_cuda
@pytest.mark.parametrize("global_connectivity", [True, False])
def test_cuda_matches_torch_path(global_connectivity: bool) -> None:
    _check(_cuda_case(1.0, global_connectivity=global_connectivity), 1e-5)


@on_cuda
@pytest.mark.parametrize(("grid", "heads", "size"), [((14, 14), 64, 3), ((7, 50), 8, 11)])
def test_cuda_grids_and_heads(grid: tuple[int, int], heads: int, size: int) -> None:
    """A ViT-like 14 x 14 grid with a head per channel; a wide grid with a box taller than it."""
    _check(_cuda_case(1.0, grid=grid, heads=heads, size=size), 1e-5)


@on_cuda
def test_cuda_extreme_scales() -> None:
    _check(_cuda_case(100.0, grid=(16, 16)), 4e-6 * 101)


@on_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast(dtype: torch.dtype) -> None:
    _, torch_path, inputs = _cuda_case(1.0)
    q, k, v = (x.to(dtype) for x in inputs[:3])
    w = inputs[3].float()
    with torch.autocast("cuda", dtype=dtype):
        out = kernels.aft_conv2d(q, k, v, w)
    assert out.dtype == dtype
    ref = torch_path(q.double(), k.double(), v.double(), w.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2)
