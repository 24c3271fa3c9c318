"""Triton kernels (forward and backward) for AFT-simple, AFT-local, AFT-conv1d and AFT-conv2d.

:mod:`aft.functional` dispatches here through :func:`supports`: the kernels run when
Triton is installed, every tensor is float16, bfloat16 or float32, and the tensors are on a
CUDA device, or on the CPU with ``TRITON_INTERPRET=1`` set before Triton is imported (the
interpreter, for tests). float64 keeps the PyTorch path.

* :func:`aft_simple` (Eq. 5), :func:`aft_local` (Eq. 4 with a dense or factorized, Eq. 7,
  bias), :func:`aft_conv1d` and :func:`aft_conv2d` (Eq. 6): same arguments and results as
  their namesakes in :mod:`aft.functional`, plus an optional launch shape ``blocks``.
* The kernels themselves: :mod:`aft.kernels.banded` (a banded bias over a sequence: the
  first three) and :mod:`aft.kernels.conv2d` (a kernel box on a 2-d grid); their numerics:
  :mod:`aft.kernels.online`.

``with enabled(False):`` forces the PyTorch path (to compare the two). ``with
band_products(True):`` sums AFT-local's band as tile matrix products (``tl.dot``) instead
of term by term (:class:`aft.kernels.banded.Blocks`, ``products``). The submodules import
Triton; this package imports them on first use.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_GRID_COLUMNS = 1024  # AFT-conv2d: one program holds a grid row (wider grids take the PyTorch path)
_ENTRY_POINTS = {"aft_simple": "simple", "aft_local": "local", "aft_conv1d": "conv1d", "aft_conv2d": "conv2d"}
_ENABLED: ContextVar[bool] = ContextVar("aft_kernels_enabled", default=True)
_BAND_PRODUCTS: ContextVar[bool] = ContextVar("aft_kernels_band_products", default=False)


@contextlib.contextmanager
def _setting(var: ContextVar[bool], on: bool) -> Iterator[None]:
    token = var.set(on)
    try:
        yield
    finally:
        var.reset(token)


def enabled(on: bool) -> contextlib.AbstractContextManager[None]:
    """Allow (the default) or forbid the kernels inside the block."""
    return _setting(_ENABLED, on)


def band_products(on: bool) -> contextlib.AbstractContextManager[None]:
    """Inside the block, the default launch shape sums a band over positions (AFT-local) as
    tile matrix products (``Blocks.products``); off by default until measured on a GPU."""
    return _setting(_BAND_PRODUCTS, on)


def band_products_default() -> bool:
    """Whether :func:`band_products` is on here."""
    return _BAND_PRODUCTS.get()


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def supports(*tensors: Tensor | None) -> bool:
    """Whether the Triton kernels can take these tensors (``None`` entries are skipped)."""
    present = [t for t in tensors if t is not None]
    if not _ENABLED.get() or importlib.util.find_spec("triton") is None:
        return False
    if any(t.dtype not in _KERNEL_DTYPES for t in present):
        return False
    device = "cpu" if interpreting() else "cuda"
    return all(t.device.type == device for t in present)


def __getattr__(name: str) -> Any:
    if name in _ENTRY_POINTS:
        return getattr(importlib.import_module(f"{__name__}.{_ENTRY_POINTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
