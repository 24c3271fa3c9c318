"""aft.ops: the naive reference against loops, the custom ops (opcheck, meta device), the
backend choice, and layers written before aft.ops existed."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch

from aft import layers as L
from aft import ops
from aft.ops import banded, conv2d, full, naive

DATA = Path(__file__).parent / "data"


def _loop_aft(q: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor, bias, causal: bool) -> torch.Tensor:
    """Eq. 2 term by term in float64: ``bias(h, t, t')`` for key head ``h``."""
    B, T, D = v.shape
    group = D // k.shape[-1]
    out = torch.zeros(B, T, D, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            for c in range(D):
                h = c // group
                terms = [
                    (math.exp(k[b, s, h] + bias(h, t, s)), float(v[b, s, c]))
                    for s in range(T)
                    if not (causal and s > t)
                ]
                avg = sum(e * x for e, x in terms) / sum(e for e, _ in terms)
                out[b, t, c] = avg if q is None else avg / (1 + math.exp(-q[b, t, c]))
    return out


def test_naive_reference_matches_loops() -> None:
    """The reference itself, against Eq. 2 written as loops (float64, tiny sizes)."""
    torch.manual_seed(0)
    B, T, D, H, S = 1, 5, 4, 2, 3
    q, k, v = (torch.randn(B, T, D, dtype=torch.float64) for _ in range(3))
    w = torch.randn(T, T, dtype=torch.float64)
    kernel = torch.randn(H, S, dtype=torch.float64)
    kh = torch.randn(B, T, H, dtype=torch.float64)
    for causal in (False, True):
        torch.testing.assert_close(
            naive.aft_full(q, k, v, w, causal), _loop_aft(q, k, v, lambda h, t, s: float(w[t, s]), causal)
        )
        torch.testing.assert_close(
            naive.aft_simple(None, k, v, causal), _loop_aft(None, k, v, lambda h, t, s: 0.0, causal)
        )
        local = lambda h, t, s: float(w[t, s]) if abs(t - s) < 2 else 0.0  # noqa: E731
        torch.testing.assert_close(naive.aft_local(q, k, v, w, 2, causal), _loop_aft(q, k, v, local, causal))
        for connected in (True, False):

            def conv(h: int, t: int, s: int) -> float:
                j = t - s if causal else s - t + S // 2
                return float(kernel[h, j]) if 0 <= j < S else (0.0 if connected else -math.inf)

            torch.testing.assert_close(
                naive.aft_conv1d(q, kh, v, kernel, causal, connected), _loop_aft(q, kh, v, conv, causal)
            )
    Y, X = 2, 3
    grid = torch.randn(H, S, S, dtype=torch.float64)
    k2 = torch.randn(B, Y * X, H, dtype=torch.float64)
    q2, v2 = (torch.randn(B, Y * X, D, dtype=torch.float64) for _ in range(2))

    def conv2(h: int, t: int, s: int) -> float:
        a, b = s // X - t // X + S // 2, s % X - t % X + S // 2
        return float(grid[h, a, b]) if 0 <= a < S and 0 <= b < S else 0.0

    got = naive.aft_conv2d(q2.view(B, Y, X, D), k2.view(B, Y, X, H), v2.view(B, Y, X, D), grid)
    torch.testing.assert_close(got.view(B, Y * X, D), _loop_aft(q2, k2, v2, conv2, False))


def test_naive_refuses_sizes_that_would_not_fit() -> None:
    k = torch.empty(64, 2048, 8, device="meta")
    with pytest.raises(ValueError, match="backend='torch'"):
        naive.aft_simple(None, k, k)


def _opcheck_cases() -> dict[str, tuple]:
    g = torch.Generator().manual_seed(0)

    def t(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()

    B, T, D = 2, 9, 4
    band = banded.local_band_blocks(t(T, T).detach(), T, 3, True).requires_grad_()
    return {
        "full": (full._full, (t(B, T, D), t(B, T, D), t(T, T), True)),
        "full_exact": (full._full, (t(B, T, D, scale=400.0), t(B, T, D), t(T, T, scale=400.0), False)),
        "banded": (banded._banded, (t(B, T, D), t(B, T, D), band, 3, True, True)),
        "banded_exact": (banded._banded, (t(B, T, D, scale=400.0), t(B, T, D), band, 3, True, True)),
        "conv1d": (
            banded._banded,
            (t(B, T, 2), t(B, T, D), banded.conv1d_band_blocks(t(2, 3), 2, False), 2, False, False),
        ),
        "simple_causal": (banded._simple_causal, (t(B, T, D), t(B, T, D))),
        "conv2d": (conv2d._conv2d, (t(B, 3, 4, 2), t(B, 3, 4, D), t(2, 3, 3), True)),
        "conv2d_exact": (conv2d._conv2d, (t(B, 3, 4, 2, scale=400.0), t(B, 3, 4, D), t(2, 3, 3, scale=400.0), False)),
    }


@pytest.mark.parametrize("case", sorted(_opcheck_cases()))
def test_opcheck(case: str) -> None:
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of each op."""
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_exact_flag_is_set_where_the_fast_path_underflows() -> None:
    for case, expected in (("full", False), ("full_exact", True), ("banded_exact", True), ("conv2d_exact", True)):
        op, args = _opcheck_cases()[case]
        assert bool(op(*args)[-1]) is expected, case


LAYERS = {
    "full": lambda: L.AFTFull(8, 6, bias_dim=4, causal=True),
    "full_dense": lambda: L.AFTFull(8, 6, bias_dim=None),
    "local": lambda: L.AFTLocal(8, 6, window=3, bias_dim=4, causal=True),
    "local_dense": lambda: L.AFTLocal(8, 6, window=3, bias_dim=None),
    "simple": lambda: L.AFTSimple(8, causal=True, use_query=False),
    "conv1d": lambda: L.AFTConv1d(8, heads=2, kernel_size=3, causal=True),
    "conv2d": lambda: L.AFTConv2d(8, heads=2, kernel_size=3),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layers_written_before_aft_ops_load_and_match(name: str) -> None:
    """``data/layers_deb7ccd.pt``: each layer's state, input and output written by the code
    of commit deb7ccd (before aft.ops); loaded here, every backend reproduces the output."""
    record = torch.load(DATA / "layers_deb7ccd.pt")[name]
    layer = LAYERS[name]()
    layer.load_state_dict(record["state"])
    for backend in ("auto", "torch", "naive"):
        layer.backend = backend
        with torch.no_grad():
            torch.testing.assert_close(layer(record["x"]), record["y"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_forward_on_the_meta_device(name: str) -> None:
    """Shape inference without data (timm's model creation): meta tensors, autocast on."""
    with torch.device("meta"):
        layer = LAYERS[name]()
        x = torch.empty(2, 3, 2, 8) if name == "conv2d" else torch.empty(2, 6, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).shape == x.shape


def test_backend_choice() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 6, 4) for _ in range(3))
    w = torch.randn(6, 6)
    want = naive.aft_local(q, k, v, w, 2)
    for backend in ("auto", "torch", "naive"):
        torch.testing.assert_close(ops.aft_local(q, k, v, w, 2, backend=backend), want)
        with ops.use(backend=backend):
            torch.testing.assert_close(ops.aft_local(q, k, v, w, 2), want)
    with pytest.raises(ValueError, match="model.mixer.backend"):
        ops.aft_local(q, k, v, w, 2, backend="cuda")
    with pytest.raises(ValueError, match="backend='triton' cannot run this call: AFT-full has no Triton kernel"):
        ops.aft_full(q, k, v, w, backend="triton")
    with pytest.raises(ValueError, match="model.mixer.backend"):
        L.AFTSimple(4, backend="fast")


def test_naive_backend_is_selected(monkeypatch: pytest.MonkeyPatch) -> None:
    """``backend="naive"`` (argument, context or layer) reaches aft.ops.naive, nothing else."""
    calls = []
    monkeypatch.setattr(naive, "aft_dense", partial(lambda f, *a: calls.append(1) or f(*a), naive.aft_dense))
    layer = L.AFTLocal(4, 6, window=2, bias_dim=2, backend="naive")
    layer(torch.randn(1, 6, 4))
    assert calls
