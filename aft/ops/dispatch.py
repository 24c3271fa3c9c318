"""The one place that picks a backend for every AFT operator, casts, and gates with ``q``.

``backend`` (an argument of each operator, a layer's ``backend=`` / ``model.mixer.backend``,
or the :func:`use` context; the argument wins, then the context, then ``"auto"``):

* ``"auto"``: the Triton kernels (:mod:`aft.kernels`) when they take the tensors (CUDA
  float16/bfloat16/float32, or the CPU under ``TRITON_INTERPRET=1``), else ``"torch"``.
  AFT-full has no kernel and AFT-conv2d grids wider than ``MAX_GRID_COLUMNS`` take
  ``"torch"``.
* ``"triton"``: the kernels, or a one-line error naming why they cannot run.
* ``"torch"``: the PyTorch path (:mod:`aft.ops.full`, :mod:`aft.ops.banded`,
  :mod:`aft.ops.conv2d`, with :mod:`aft.ops.exact` as its fallback), custom ops.
* ``"naive"``: the dense reference :mod:`aft.ops.naive`.

Autocast is switched off here (the core runs in float32, float64 stays float64) and the
result is cast back to ``v``'s dtype. Shapes: ``q, k, v`` ``(B, T, D)`` (AFT-conv: ``k``
``(B, T, H)``; AFT-conv2d ``(B, Y, X, ·)``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from aft import kernels
from aft.kernels import MAX_GRID_COLUMNS
from aft.ops import banded, conv2d, decode, full, naive
from aft.ops.casting import FactorizedBias, autocast_off, upcast
from aft.ops.decode import DecodeCache

Backend = Literal["auto", "triton", "torch", "naive"]
BACKENDS = ("auto", "triton", "torch", "naive")


@dataclass(frozen=True)
class Settings:
    """``backend``: see the module doc. ``band_products``: the kernels sum AFT-local's band
    as tile matrix products (``tl.dot``) instead of term by term; off until timed on a GPU."""

    backend: Backend = "auto"
    band_products: bool = False


_SETTINGS: ContextVar[Settings] = ContextVar("aft_ops_settings", default=Settings())


@contextlib.contextmanager
def use(backend: Backend | None = None, band_products: bool | None = None) -> Iterator[None]:
    """Inside the block, operators without their own ``backend`` use these settings."""
    changes = {
        name: value for name, value in (("backend", backend), ("band_products", band_products)) if value is not None
    }
    if "backend" in changes:
        check_backend(changes["backend"])
    token = _SETTINGS.set(replace(_SETTINGS.get(), **changes))
    try:
        yield
    finally:
        _SETTINGS.reset(token)


def settings() -> Settings:
    """The settings in force here."""
    return _SETTINGS.get()


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {BACKENDS}: set model.mixer.backend to one of them")


def _choose(backend: Backend | None, *tensors: Tensor | None, kernel: str | None = "") -> str:
    """``"triton"``, ``"torch"`` or ``"naive"`` for this call; ``kernel`` is why there is no kernel
    (None: one exists)."""
    backend = backend or _SETTINGS.get().backend
    check_backend(backend)
    if backend in ("torch", "naive"):
        return backend
    refusal = kernel or kernels.refusal(*tensors)
    if backend == "triton" and refusal:
        raise ValueError(f"backend='triton' cannot run this call: {refusal}; use backend='auto' or 'torch'")
    return "torch" if refusal else "triton"


def _gate(q: Tensor | None, avg: Tensor, v: Tensor) -> Tensor:
    """``sigmoid(q) * avg`` (Eq. 2) or ``avg`` alone, in ``v``'s dtype."""
    if q is not None:
        avg = torch.sigmoid(q.to(avg.dtype)) * avg
    return avg.to(v.dtype)


def _check_shape(t: Tensor, shape: tuple[int, ...], name: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _check_same_shape(a: Tensor | None, b: Tensor, na: str, nb: str) -> None:
    if a is not None and a.shape != b.shape:
        raise ValueError(f"{na} and {nb} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_heads(q: Tensor | None, k: Tensor, v: Tensor, w: Tensor, ndim: int) -> tuple[int, int]:
    """Validate AFT-conv shapes; returns ``(H, S)``."""
    _check_same_shape(q, v, "q", "v")
    if k.shape[:-1] != v.shape[:-1] or k.dim() != ndim + 2:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must share (B, *grid) with {ndim}-d grid")
    H, D = k.shape[-1], v.shape[-1]
    if w.dim() != ndim + 1 or w.shape[0] != H or len(set(w.shape[1:])) != 1:
        raise ValueError(f"w must have shape (H={H}{', S' * ndim}), got {tuple(w.shape)}")
    if D % H:
        raise ValueError(f"heads H={H} must divide the value dim D={D}")
    return H, w.shape[1]


# --------------------------------------------------------------------------- operators


def aft_full(
    q: Tensor | None, k: Tensor, v: Tensor, w: Tensor, causal: bool = False, backend: Backend | None = None
) -> Tensor:
    """AFT-full, Eq. 2: ``w`` ``(T, T)`` pair-wise position bias ``w[t, t']``; ``q=None`` drops the gate.

    Returns ``(B, T, D)``. No Triton kernel: ``"auto"`` runs the PyTorch path.
    """
    _check_same_shape(k, v, "k", "v")
    _check_same_shape(q, v, "q", "v")
    _check_shape(w, (k.shape[1], k.shape[1]), "w")
    if _choose(backend, kernel="AFT-full has no Triton kernel") == "naive":
        return naive.aft_full(q, k, v, w, causal)
    with autocast_off(v.device):
        return _gate(q, full.average(upcast(k), upcast(v), upcast(w), causal), v)


def aft_simple(q: Tensor | None, k: Tensor, v: Tensor, causal: bool = False, backend: Backend | None = None) -> Tensor:
    """AFT-simple, Eq. 5: ``sigmoid(q) * sum_t' softmax(k)_t' * v_t'`` (over ``t' <= t`` if causal).

    Returns ``(B, T, D)``. Causal: float64 prefix sums, O(T D); keys spread over more than
    500 nats take the exact path.
    """
    _check_same_shape(k, v, "k", "v")
    _check_same_shape(q, v, "q", "v")
    chosen = _choose(backend, q, k, v, kernel=None)
    if chosen == "naive":
        return naive.aft_simple(q, k, v, causal)
    if chosen == "triton":
        return kernels.aft_simple(q, k, v, causal)
    with autocast_off(v.device):
        k32, v32 = upcast(k), upcast(v)
        if causal:
            avg = banded.simple_causal_average(k32, v32)
        else:
            avg = (torch.softmax(k32, dim=1) * v32).sum(dim=1, keepdim=True).expand_as(v32)
        return _gate(q, avg, v)


def aft_local(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    w: Tensor | FactorizedBias,
    window: int,
    causal: bool = False,
    backend: Backend | None = None,
) -> Tensor:
    """AFT-local, Eq. 4: ``w[t, t']`` inside ``|t - t'| < window`` (causal ``0 <= t - t' < window``), 0 outside.

    ``w`` is ``(T, T)`` or factors ``(u, v)``, each ``(T, d')``, of ``w = u v^T`` (Eq. 7), never
    formed as ``T x T``. ``window=0`` is AFT-simple. Returns ``(B, T, D)``.
    """
    _check_same_shape(k, v, "k", "v")
    _check_same_shape(q, v, "q", "v")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    if window == 0:
        return aft_simple(q, k, v, causal=causal, backend=backend)
    T = k.shape[1]
    factors = tuple(w) if isinstance(w, (tuple, list)) else None
    if factors is not None:
        _check_shape(factors[0], (T, factors[0].shape[-1]), "w[0] (u)")
        _check_shape(factors[1], (T, factors[0].shape[-1]), "w[1] (v)")
    else:
        _check_shape(w, (T, T), "w")
    chosen = _choose(backend, q, k, v, *(factors or (w,)), kernel=None)
    if chosen == "naive":
        return naive.aft_local(q, k, v, w, window, causal)
    if chosen == "triton":
        return kernels.aft_local(q, k, v, factors or w, window, causal, band_products=_SETTINGS.get().band_products)
    with autocast_off(v.device):
        bias = tuple(upcast(f) for f in factors) if factors is not None else upcast(w)
        return _gate(q, banded.local_average(upcast(k), upcast(v), bias, window, causal), v)


def aft_conv1d(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    causal: bool = False,
    global_connectivity: bool = True,
    backend: Backend | None = None,
) -> Tensor:
    """AFT-conv on a 1-d sequence, Eq. 6, a Toeplitz bias per head (0 outside the kernel).

    ``k`` ``(B, T, H)``, one key channel per head (channel ``c`` of ``D`` in head ``c // (D // H)``);
    ``w`` ``(H, S)``: non-causal ``w[h, j]`` is the bias of ``t' = t + j - S//2`` (``S`` odd),
    causal of ``t' = t - j``. ``global_connectivity=False``: ``-inf`` outside the kernel (§5.3).
    Returns ``(B, T, D)``.
    """
    _check_heads(q, k, v, w, ndim=1)
    if not causal and w.shape[1] % 2 == 0:
        raise ValueError(f"non-causal aft_conv1d needs an odd kernel size, got S={w.shape[1]}")
    chosen = _choose(backend, q, k, v, w, kernel=None)
    if chosen == "naive":
        return naive.aft_conv1d(q, k, v, w, causal, global_connectivity)
    if chosen == "triton":
        return kernels.aft_conv1d(q, k, v, w, causal, global_connectivity)
    with autocast_off(v.device):
        return _gate(q, banded.conv1d_average(upcast(k), upcast(v), upcast(w), causal, global_connectivity), v)


def aft_conv2d(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    w: Tensor,
    global_connectivity: bool = True,
    backend: Backend | None = None,
) -> Tensor:
    """AFT-conv on a 2-d grid, Eq. 6 (non-causal), for any ``Y x X``.

    ``q, v`` ``(B, Y, X, D)``, ``k`` ``(B, Y, X, H)``, ``w`` ``(H, S, S)`` (``S`` odd):
    ``w[h, a, b]`` is the bias of ``(y + a - S//2, x + b - S//2)``, cross-correlation as in
    ``torch.nn.functional.conv2d``. Returns ``(B, Y, X, D)``.
    """
    _, S = _check_heads(q, k, v, w, ndim=2)
    if S % 2 == 0:
        raise ValueError(f"aft_conv2d needs an odd kernel size, got S={S}")
    wide = f"grids wider than {MAX_GRID_COLUMNS} columns" if v.shape[2] > MAX_GRID_COLUMNS else None
    chosen = _choose(backend, q, k, v, w, kernel=wide)
    if chosen == "naive":
        return naive.aft_conv2d(q, k, v, w, global_connectivity)
    if chosen == "triton":
        return kernels.aft_conv2d(q, k, v, w, global_connectivity)
    with autocast_off(v.device):
        return _gate(q, conv2d.average(upcast(k), upcast(v), upcast(w), global_connectivity), v)


def decode_step(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    bias: Callable[[int, int], Tensor],
    window: int | None,
    cache: DecodeCache | None,
) -> tuple[Tensor, DecodeCache]:
    """One causal position: ``q, v`` ``(B, D)``, ``k`` ``(B, Hk)``; ``bias(t, L) -> (Hb, L)`` gives the
    biases of the ``L`` cached positions (:mod:`aft.ops.decode`). Returns ``(sigmoid(q) * avg, cache)``,
    ``(B, D)`` in float32 (float64 stays float64)."""
    with autocast_off(v.device):
        cache = decode.push(cache, upcast(k), upcast(v), window)
        avg = decode.cached_average(cache, upcast(bias(cache.t, cache.keys.shape[1])))
        cache.t += 1
        return (avg if q is None else torch.sigmoid(upcast(q)) * avg), cache
