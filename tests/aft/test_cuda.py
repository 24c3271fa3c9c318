"""aft.functional on a CUDA device at larger sizes (skipped without a GPU)."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from aft import functional as AF
from aft.ops.naive import aft_dense, conv1d_bias, conv2d_bias, local_bias

reference_aft = partial(aft_dense, dtype=torch.float64)  # Eq. 2 by the naive reference, in float64

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

B, T, D = 2, 512, 64


def _inputs(heads: int = D, scale: float = 1.0):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, T, D, device="cuda", generator=g)
    k = torch.randn(B, T, heads, device="cuda", generator=g) * scale
    v = torch.randn(B, T, D, device="cuda", generator=g)
    return q, k, v


def _check(out: torch.Tensor, ref: torch.Tensor, scale: float = 1.0) -> None:
    tol = 1e-5 * (1.0 + scale)
    assert out.is_cuda and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_variants_on_cuda(causal: bool, scale: float) -> None:
    q, k, v = _inputs(scale=scale)
    g = torch.Generator(device="cuda").manual_seed(1)
    w = torch.randn(T, T, device="cuda", generator=g)
    u, f = torch.randn(T, 8, device="cuda", generator=g), torch.randn(T, 8, device="cuda", generator=g)
    _check(AF.aft_full(q, k, v, w, causal), reference_aft(q, k, v, w[None], causal), scale)
    _check(AF.aft_simple(q, k, v, causal), reference_aft(q, k, v, torch.zeros_like(w)[None], causal), scale)
    for window in (32, 256):
        _check(
            AF.aft_local(q, k, v, (u, f), window, causal),
            reference_aft(q, k, v, local_bias((u @ f.T).cpu(), window).cuda(), causal),
            scale,
        )
    kh = k[..., :8]
    kernel = torch.randn(8, 31, device="cuda", generator=g)
    _check(
        AF.aft_conv1d(q, kh, v, kernel, causal),
        reference_aft(q, kh, v, conv1d_bias(kernel.cpu(), T, causal).cuda(), causal),
        scale,
    )


def test_conv2d_on_cuda() -> None:
    Y, X = 14, 14
    g = torch.Generator(device="cuda").manual_seed(0)
    q, v = torch.randn(B, Y, X, D, device="cuda", generator=g), torch.randn(B, Y, X, D, device="cuda", generator=g)
    k, w = torch.randn(B, Y, X, 8, device="cuda", generator=g), torch.randn(8, 11, 11, device="cuda", generator=g)
    ref = reference_aft(
        q.reshape(B, -1, D), k.reshape(B, -1, 8), v.reshape(B, -1, D), conv2d_bias(w.cpu(), Y, X).cuda(), False
    )
    _check(AF.aft_conv2d(q, k, v, w), ref.reshape(B, Y, X, D))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_on_cuda(dtype: torch.dtype) -> None:
    q, k, v = _inputs()
    u = torch.randn(T, 8, device="cuda") * 0.5
    with torch.autocast("cuda", dtype=dtype):
        out = AF.aft_local(q.to(dtype), k.to(dtype), v.to(dtype), (u, u), 32, causal=True)
    assert out.dtype == dtype
    ref = reference_aft(q.to(dtype), k.to(dtype), v.to(dtype), local_bias((u @ u.T).cpu(), 32).cuda(), True)
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2)
