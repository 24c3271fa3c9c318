"""aft.functional against the naive reference aft.ops.naive in float64."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from aft import functional as AF
from aft.memory import saved_bytes, saved_storages
from aft.ops import exact, prefix
from aft.ops.naive import aft_dense, conv1d_bias, conv2d_bias, local_bias

reference_aft = partial(aft_dense, dtype=torch.float64)  # Eq. 2 by the naive reference, in float64

B, T, D = 2, 37, 8


def _inputs(scale: float = 1.0, heads: int | None = None, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, D, generator=g, dtype=dtype)
    k = torch.randn(B, T, heads or D, generator=g, dtype=dtype) * scale
    v = torch.randn(B, T, D, generator=g, dtype=dtype)
    return q, k, v


def _assert_close(out: torch.Tensor, ref: torch.Tensor, scale: float = 1.0) -> None:
    # float32 rounding of a key of magnitude |k| already moves exp(k) by |k| * 6e-8
    # (relative), so the tolerance grows with the input scale.
    assert torch.isfinite(out).all()
    tol = 2e-6 * (1.0 + scale)
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("gated", [True, False])
def test_full(causal: bool, scale: float, gated: bool) -> None:
    q, k, v = _inputs(scale)
    w = torch.randn(T, T) * scale
    q = q if gated else None
    _assert_close(AF.aft_full(q, k, v, w, causal), reference_aft(q, k, v, w[None], causal), scale)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [1.0, 100.0])
@pytest.mark.parametrize("gated", [True, False])
def test_simple(causal: bool, scale: float, gated: bool) -> None:
    q, k, v = _inputs(scale)
    q = q if gated else None
    _assert_close(AF.aft_simple(q, k, v, causal), reference_aft(q, k, v, torch.zeros(1, T, T), causal), scale)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [1, 2, 5, 36, 37, 100])
@pytest.mark.parametrize("factorized", [False, True])
def test_local(causal: bool, window: int, factorized: bool) -> None:
    q, k, v = _inputs()
    if factorized:
        u, f = torch.randn(T, 4), torch.randn(T, 4)
        w, dense = (u, f), u @ f.T
    else:
        w = dense = torch.randn(T, T)
    _assert_close(AF.aft_local(q, k, v, w, window, causal), reference_aft(q, k, v, local_bias(dense, window), causal))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [10.0, 100.0])
def test_local_extreme_scales(causal: bool, scale: float) -> None:
    q, k, v = _inputs(scale)
    w = torch.randn(T, T) * scale
    _assert_close(AF.aft_local(q, k, v, w, 4, causal), reference_aft(q, k, v, local_bias(w, 4), causal), scale)


def test_local_window_zero_is_simple() -> None:
    q, k, v = _inputs()
    torch.testing.assert_close(AF.aft_local(q, k, v, torch.randn(T, T), 0), AF.aft_simple(q, k, v))


def test_local_keeps_global_connectivity() -> None:
    """A key far outside the window still moves the output (bias 0 there, not -inf)."""
    q, k, v = _inputs()
    w = torch.zeros(T, T)
    out = AF.aft_local(q, k, v, w, 2)
    v2 = v.clone()
    v2[:, -1] += 10.0
    assert (AF.aft_local(q, k, v2, w, 2)[:, 0] - out[:, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", [1, 3, 5])
@pytest.mark.parametrize("global_connectivity", [True, False])
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_conv1d(causal: bool, kernel: int, global_connectivity: bool, scale: float) -> None:
    q, k, v = _inputs(scale, heads=2)
    w = torch.randn(2, kernel) * scale
    ref = reference_aft(q, k, v, conv1d_bias(w, T, causal, global_connectivity), causal)
    _assert_close(AF.aft_conv1d(q, k, v, w, causal, global_connectivity), ref, scale)


def test_conv1d_causal_even_kernel() -> None:
    q, k, v = _inputs(heads=4)
    w = torch.randn(4, 4)
    _assert_close(AF.aft_conv1d(q, k, v, w, causal=True), reference_aft(q, k, v, conv1d_bias(w, T, True), True))


def test_conv1d_equals_full_with_toeplitz_bias() -> None:
    q, k, v = _inputs(heads=D)  # one channel per head: the Toeplitz bias is per channel
    w = torch.zeros(D, 5)
    w[:] = torch.randn(5)  # the same kernel for every head -> a single (T, T) bias
    toeplitz = conv1d_bias(w, T, causal=False)[0]
    torch.testing.assert_close(AF.aft_conv1d(q, k, v, w), AF.aft_full(q, k, v, toeplitz), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("grid", [(1, 1), (3, 4), (6, 5), (8, 8)])
@pytest.mark.parametrize("kernel", [1, 3, 7, 17])  # 17: wider than the grids, its outer taps cropped
@pytest.mark.parametrize("global_connectivity", [True, False])
def test_conv2d(grid: tuple[int, int], kernel: int, global_connectivity: bool) -> None:
    Y, X = grid
    g = torch.Generator().manual_seed(1)
    q, v = torch.randn(B, Y, X, D, generator=g), torch.randn(B, Y, X, D, generator=g)
    k = torch.randn(B, Y, X, 4, generator=g)
    w = torch.randn(4, kernel, kernel, generator=g)
    out = AF.aft_conv2d(q, k, v, w, global_connectivity)
    bias = conv2d_bias(w, Y, X, global_connectivity)
    ref = reference_aft(q.reshape(B, -1, D), k.reshape(B, -1, 4), v.reshape(B, -1, D), bias, False)
    _assert_close(out, ref.reshape(B, Y, X, D))


@pytest.mark.parametrize(
    ("heads", "kernel", "global_connectivity"),
    [(4, 3, True), (D, 5, True), (4, 3, False), (4, 15, True), (4, 15, False)],
)
@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_conv2d_gradients_match_float64(
    heads: int, kernel: int, global_connectivity: bool, scale: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """float32 gradients of AFT-conv2d (its own backward) against float64, on the fast path."""
    monkeypatch.setattr(exact, "average", lambda *args: pytest.fail("took the exact fallback"))
    Y, X = 5, 6
    g = torch.Generator().manual_seed(2)
    q, v = torch.randn(B, Y, X, D, generator=g), torch.randn(B, Y, X, D, generator=g)
    k = torch.randn(B, Y, X, heads, generator=g) * scale
    w = torch.randn(heads, kernel, kernel, generator=g) * scale
    inputs = [t.requires_grad_() for t in (q, k, v, w)]
    grad = torch.randn(B, Y, X, D, generator=g)
    got = torch.autograd.grad(AF.aft_conv2d(*inputs, global_connectivity), inputs, grad)
    q64, k64, v64, w64 = (t.detach().double().requires_grad_() for t in inputs)
    bias = conv2d_bias(w64, Y, X, global_connectivity)
    ref = reference_aft(q64.reshape(B, -1, D), k64.reshape(B, -1, heads), v64.reshape(B, -1, D), bias, False)
    want = torch.autograd.grad(ref.reshape(B, Y, X, D), (q64, k64, v64, w64), grad.double())
    for g32, g64 in zip(got, want, strict=True):
        assert (g32.double() - g64).abs().max() <= 2e-5 * (1 + scale) * g64.abs().max()


def test_conv2d_saves_no_graph_of_its_convolutions() -> None:
    """AFT-conv2d's PyTorch path keeps k, v, w, the average, its denominator and sigmoid(q)."""
    Y, X, heads = 16, 16, 4
    q, v = (torch.randn(1, Y, X, 64, requires_grad=True) for _ in range(2))
    k, w = torch.randn(1, Y, X, heads, requires_grad=True), torch.randn(heads, 7, 7, requires_grad=True)
    saved = saved_bytes(lambda: AF.aft_conv2d(q, k, v, w))
    assert saved == 3 * q.nbytes + 2 * k.nbytes + w.nbytes + 1  # v, avg, sigmoid(q); k, den; w; the exact flag


def test_conv2d_extreme_scale() -> None:
    Y, X, scale = 5, 6, 100.0
    q, v = torch.randn(B, Y, X, D), torch.randn(B, Y, X, D)
    k, w = torch.randn(B, Y, X, 2) * scale, torch.randn(2, 3, 3) * scale
    ref = reference_aft(q.reshape(B, -1, D), k.reshape(B, -1, 2), v.reshape(B, -1, D), conv2d_bias(w, Y, X), False)
    _assert_close(AF.aft_conv2d(q, k, v, w), ref.reshape(B, Y, X, D), scale)


def test_causal_growing_keys_use_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys that grow along the sequence (early ones e^-300 below later ones) stay exact
    without the O(T^2) fallback: the float64 scans hold 500 nats below a channel's largest key."""
    monkeypatch.setattr(exact, "average", lambda *a: pytest.fail("fell back to the exact path"))
    n = 1024
    k = torch.linspace(0, 300, n).view(1, n, 1).repeat(1, 1, 4) + torch.randn(1, n, 4)
    v = torch.randn(1, n, 4)
    ref_simple = reference_aft(None, k, v, torch.zeros(1, n, n), True)
    _assert_close(AF.aft_simple(None, k, v, causal=True), ref_simple, 300.0)
    w = torch.randn(n, n)
    _assert_close(
        AF.aft_local(None, k, v, w, 16, causal=True), reference_aft(None, k, v, local_bias(w, 16), True), 300.0
    )
    _assert_close(AF.aft_full(None, k, v, w, causal=True), reference_aft(None, k, v, w[None], True), 300.0)


@pytest.mark.parametrize("variant", ["simple", "local"])
def test_keys_spread_beyond_the_float64_range_take_the_exact_path(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Early keys 1000 nats below later ones are past what the float64 scans hold: the call is
    recomputed by the exact path, values and gradients right."""
    calls = []
    average = exact.average
    monkeypatch.setattr(exact, "average", lambda *a: calls.append(1) or average(*a))
    n = 48
    k = (torch.linspace(0, 1000, n).view(1, n, 1) + torch.randn(1, n, 4)).requires_grad_()
    v = torch.randn(1, n, 4, requires_grad=True)
    w = torch.randn(n, n)
    if variant == "simple":
        out, dense = AF.aft_simple(None, k, v, causal=True), torch.zeros(1, n, n)
    else:
        out, dense = AF.aft_local(None, k, v, w, 4, causal=True), local_bias(w, 4)
    assert calls, "took the float64 scans beyond their range"
    k64, v64 = (x.detach().double().requires_grad_() for x in (k, v))
    ref = reference_aft(None, k64, v64, dense, True)
    _assert_close(out, ref, 1000.0)
    grad = torch.randn(1, n, 4)
    for got, want in zip(
        torch.autograd.grad(out, (k, v), grad), torch.autograd.grad(ref, (k64, v64), grad.double()), strict=True
    ):
        torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("causal", "window"), [(True, 0), *((c, w) for c in (False, True) for w in (1, 3, 9, 12))])
@pytest.mark.parametrize("dim", [1, -1])
def test_outside_window_sums_match_brute_force(causal: bool, window: int, dim: int) -> None:
    """Causal window 0 is the inclusive prefix sum; a window past the length leaves nothing."""
    x = torch.rand(2, 9, 9, dtype=torch.float64)
    t = torch.arange(9)
    offset = t.view(1, 9) - t.view(9, 1)  # [t, t'] = t' - t
    keep = (offset <= -window) | (~torch.tensor(causal) & (offset >= window))
    if dim == 1:
        want = torch.einsum("tu,buf->btf", keep.double(), x)
    else:
        want = torch.einsum("tu,bfu->bft", keep.double(), x)
    torch.testing.assert_close(prefix.outside_window_sums(x, window, causal, dim), want)


def _leaks(fn, k_channels: int) -> None:
    """In float64, outputs at <= t move by less than 1e-12 when inputs after t change.

    (Blockwise shifts may depend on later keys of the same block; that changes rounding
    only, far below the tolerance; a real leak moves outputs by O(1).)
    """
    q, k, v = _inputs(heads=k_channels, dtype=torch.float64)
    out = fn(q, k, v)
    for t in (0, 10, T - 2):
        q2, k2, v2 = q.clone(), k.clone(), v.clone()
        for x in (q2, k2, v2):
            x[:, t + 1 :] = torch.randn_like(x[:, t + 1 :]) * 5
        torch.testing.assert_close(fn(q2, k2, v2)[:, : t + 1], out[:, : t + 1], rtol=0, atol=1e-12)


def test_causal_leakage() -> None:
    w, u = torch.randn(T, T, dtype=torch.float64), torch.randn(T, 3, dtype=torch.float64)
    kernel = torch.randn(2, 4, dtype=torch.float64)
    _leaks(lambda q, k, v: AF.aft_full(q, k, v, w, causal=True), D)
    _leaks(lambda q, k, v: AF.aft_simple(q, k, v, causal=True), D)
    _leaks(lambda q, k, v: AF.aft_local(q, k, v, w, 5, causal=True), D)
    _leaks(lambda q, k, v: AF.aft_local(q, k, v, (u, u), 5, causal=True), D)
    _leaks(lambda q, k, v: AF.aft_conv1d(q, k, v, kernel, causal=True), 2)


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    n, d = 6, 4

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    q, k, v, w = rand(1, n, d), rand(1, n, d), rand(1, n, d), rand(n, n)
    u, f = rand(n, 2), rand(n, 2)
    kh, wc, w2 = rand(1, n, 2), rand(2, 3), rand(2, 3, 3)
    for causal in (False, True):
        assert torch.autograd.gradcheck(lambda *a: AF.aft_full(*a, causal=causal), (q, k, v, w))
        assert torch.autograd.gradcheck(lambda *a: AF.aft_simple(*a, causal=causal), (q, k, v))
        assert torch.autograd.gradcheck(lambda *a: AF.aft_local(a[0], a[1], a[2], a[3], 2, causal), (q, k, v, w))
        assert torch.autograd.gradcheck(
            lambda *a: AF.aft_local(a[0], a[1], a[2], (a[3], a[4]), 3, causal), (q, k, v, u, f)
        )
        assert torch.autograd.gradcheck(lambda *a: AF.aft_conv1d(*a, causal=causal), (q, kh, v, wc))
    q2, v2, k2 = rand(1, 2, 3, d), rand(1, 2, 3, d), rand(1, 2, 3, 2)
    assert torch.autograd.gradcheck(AF.aft_conv2d, (q2, k2, v2, w2))


def test_gradients_of_exact_fallback_match_reference() -> None:
    """The exact (checkpointed) path is taken at extreme scales; its gradients are right."""
    q, k, v = (x.double().requires_grad_() for x in _inputs(100.0))
    w = (torch.randn(T, T, dtype=torch.float64) * 100).requires_grad_()
    out = AF.aft_local(q, k, v, w, 4)
    ref = reference_aft(q, k, v, local_bias(w, 4), False)
    grads = torch.autograd.grad(out.sum(), (q, k, v, w))
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v, w))
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_core_in_float32(dtype: torch.dtype) -> None:
    q, k, v = _inputs()
    w = torch.randn(T, T)
    with torch.autocast("cpu", dtype=dtype):
        out = AF.aft_local(q.to(dtype), k.to(dtype) * 30, v.to(dtype), w, 4)
    assert out.dtype == dtype
    ref = reference_aft(q.to(dtype), k.to(dtype) * 30, v.to(dtype), local_bias(w, 4), False)
    torch.testing.assert_close(out.double(), ref, rtol=1e-2, atol=1e-2)


def test_no_quadratic_tensor_saved_for_backward() -> None:
    """Bytes saved for backward grow linearly in T for simple, local (factorized), conv1d."""

    def saved_at(fn, n: int) -> int:
        q, k, v = (torch.randn(1, n, 16, requires_grad=True) for _ in range(3))
        u = torch.randn(n, 8, requires_grad=True)
        return saved_bytes(lambda: fn(q, k, v, u).sum())

    wc = torch.randn(4, 9, requires_grad=True)
    for fn in (
        lambda q, k, v, u: AF.aft_simple(q, k, v, causal=True),
        lambda q, k, v, u: AF.aft_local(q, k, v, (u, u), 32, causal=True),
        lambda q, k, v, u: AF.aft_local(q, k, v, (u, u), 32),
        lambda q, k, v, u: AF.aft_conv1d(q, k[..., :4], v, wc),
    ):
        small, large = saved_at(fn, 512), saved_at(fn, 4096)
        assert large <= 8.5 * small, (small, large)


def test_causal_simple_saves_only_its_inputs_output_and_normalizer() -> None:
    """The PyTorch path of causal AFT-simple keeps k, v, the log-normalizer, the average and, for the
    gate, sigmoid(q): five (B, T, D) tensors, as many as the fused kernels plus the gate's."""
    q, k, v = (torch.randn(1, 256, 16, requires_grad=True) for _ in range(3))
    out = AF.aft_simple(q, k, v, causal=True)
    assert out.grad_fn is not None
    assert (
        saved_bytes(lambda: AF.aft_simple(q, k, v, causal=True)) <= 5 * q.numel() * q.element_size() + 1
    )  # + the exact flag


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_causal_simple_gradients_match_float64(scale: float) -> None:
    """float32 gradients of the causal scan (its own backward) against the float64 reference."""
    q, k, v = (t.requires_grad_() for t in _inputs(scale=scale))
    grad = torch.randn(B, T, D, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad(AF.aft_simple(q, k, v, causal=True), (q, k, v), grad)
    inputs64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = reference_aft(*inputs64, torch.zeros(1, T, T, dtype=torch.float64), True)
    want = torch.autograd.grad(ref, inputs64, grad.double())
    for g, w in zip(got, want, strict=True):  # float32 rounding of k moves exp(k) by |k| * 6e-8
        assert (g.double() - w).abs().max() <= 2e-5 * (1 + scale) * w.abs().max()


BANDED = ["local_dense", "local_factorized", "conv1d", "conv1d_kernel_only"]


def _banded_case(variant: str, causal: bool, scale: float):
    """``(fn(q, k, v, *bias), float64 dense bias(*bias), [q, k, v, *bias])`` of a banded variant."""
    g = torch.Generator().manual_seed(5)
    q, k, v = _inputs(scale, heads=2 if variant.startswith("conv1d") else None)
    if variant == "local_dense":
        w = torch.randn(T, T, generator=g) * scale
        return (lambda q, k, v, w: AF.aft_local(q, k, v, w, 5, causal)), (lambda w: local_bias(w, 5)), [q, k, v, w]
    if variant == "local_factorized":
        u, f = torch.randn(T, 4, generator=g), torch.randn(T, 4, generator=g)
        return (
            (lambda q, k, v, u, f: AF.aft_local(q, k, v, (u, f), 5, causal)),
            (lambda u, f: local_bias(u @ f.T, 5)),
            [q, k, v, u, f],
        )
    connected = variant == "conv1d"
    w = torch.randn(2, 5, generator=g) * scale
    return (
        (lambda q, k, v, w: AF.aft_conv1d(q, k, v, w, causal, connected)),
        (lambda w: conv1d_bias(w, T, causal, connected)),
        [q, k, v, w],
    )


@pytest.mark.parametrize("variant", BANDED)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_banded_gradients_match_float64(
    variant: str, causal: bool, scale: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """float32 gradients of AFT-local and AFT-conv1d (their own backward) against float64.

    Keys and biases of scale 10 span exp(+-30) and still take the fast path (larger ones
    go to the exact fallback, tested above)."""
    monkeypatch.setattr(exact, "average", lambda *args: pytest.fail("took the exact fallback"))
    fn, dense_bias, inputs = _banded_case(variant, causal, scale)
    inputs = [t.requires_grad_() for t in inputs]
    grad = torch.randn(B, T, D, generator=torch.Generator().manual_seed(3))
    got = torch.autograd.grad(fn(*inputs), inputs, grad)
    inputs64 = [t.detach().double().requires_grad_() for t in inputs]
    ref = reference_aft(*inputs64[:3], dense_bias(*inputs64[3:]), causal)
    want = torch.autograd.grad(ref, inputs64, grad.double())
    for g, w in zip(got, want, strict=True):  # float32 rounding of k moves exp(k) by |k| * 6e-8
        assert (g.double() - w).abs().max() <= 2e-5 * (1 + scale) * w.abs().max()


@pytest.mark.parametrize("causal", [False, True])
def test_local_saves_five_tensors_and_the_band(causal: bool) -> None:
    """AFT-local's PyTorch path keeps k, v, the average, its normalizer and sigmoid(q), each
    (B, T, D), plus the (T, C + window) band and the factors' blocks: no T x window x D tensor."""
    n, d, window = 512, 64, 8
    q, k, v = (torch.randn(1, n, d, requires_grad=True) for _ in range(3))
    u, f = (torch.randn(n, 4, requires_grad=True) for _ in range(2))
    saved = saved_storages(lambda: AF.aft_local(q, k, v, (u, f), window, causal))
    per_position = [nbytes for shape, nbytes in saved.values() if shape == (1, n, d)]
    assert len(per_position) <= 5
    band_bytes = n * (64 + 2 * window) * 4  # row blocks of 64 positions by their band's columns
    assert sum(nbytes for _, nbytes in saved.values()) - sum(per_position) <= 2 * band_bytes


def test_bad_shapes_raise() -> None:
    q, k, v = _inputs()
    with pytest.raises(ValueError, match="w must have shape"):
        AF.aft_full(q, k, v, torch.randn(T, T + 1))
    with pytest.raises(ValueError, match="odd kernel"):
        AF.aft_conv1d(q, k[..., :2], v, torch.randn(2, 4))
    with pytest.raises(ValueError, match="divide"):
        AF.aft_conv1d(q, k[..., :3], v, torch.randn(3, 3))


def test_entropy_regularizer() -> None:
    w = torch.zeros(3, 5, 5)
    torch.testing.assert_close(AF.position_bias_entropy(w), torch.tensor(3 * math.log(25)))
    peaked = torch.zeros(2, 7)
    peaked[:, 3] = 50.0
    assert AF.position_bias_entropy(peaked) < 1e-12
