"""Triton kernels (forward and backward) for AFT-simple, AFT-local, AFT-conv1d and AFT-conv2d.

:mod:`aft.ops.dispatch` sends a call here (``backend="auto"`` or ``"triton"``) unless
:func:`refusal` names a reason: the kernels run when Triton is installed, every tensor is
float16, bfloat16 or float32, and the tensors are on a CUDA device, or on the CPU with
``TRITON_INTERPRET=1`` set before Triton is imported (the interpreter, for tests). float64
keeps the PyTorch path. The kernels import nothing of the PyTorch path (only the leaf
modules :mod:`aft.ops.casting` and :mod:`aft.ops.library`).

* :func:`aft_simple` (Eq. 5), :func:`aft_local` (Eq. 4 with a dense or factorized, Eq. 7,
  bias), :func:`aft_conv1d` and :func:`aft_conv2d` (Eq. 6): same arguments and results as
  their namesakes in :mod:`aft.ops`, plus an optional launch shape ``blocks``.
* The kernels themselves: :mod:`aft.kernels.banded` (a banded bias over a sequence: the
  first three) and :mod:`aft.kernels.conv2d` (a kernel box on a 2-d grid); their numerics:
  :mod:`aft.kernels.online`; what both share (the pointer groups a kernel takes, tile loads
  and stores, the launch shape :class:`aft.kernels.common.Blocks`): :mod:`aft.kernels.common`.

``aft.ops.use(backend="torch")`` forces the PyTorch path (to compare the two);
``aft.ops.use(band_products=True)`` sums AFT-local's band as tile matrix products
(``tl.dot``) instead of term by term (:class:`aft.kernels.common.Blocks`, ``products``).
The submodules import Triton; this package imports them on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

import torch
from torch import Tensor

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_GRID_COLUMNS = 1024  # AFT-conv2d: one program holds a grid row (wider grids take the PyTorch path)
_ENTRY_POINTS = {"aft_simple": "simple", "aft_local": "local", "aft_conv1d": "conv1d", "aft_conv2d": "conv2d"}


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def refusal(*tensors: Tensor | None) -> str | None:
    """Why the kernels cannot take these tensors (``None`` entries are skipped), or ``None`` if they can."""
    present = [t for t in tensors if t is not None]
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if any(t.dtype not in _KERNEL_DTYPES for t in present):
        return f"the kernels take float16, bfloat16 or float32, got {sorted({str(t.dtype) for t in present})}"
    device = "cpu" if interpreting() else "cuda"
    if any(t.device.type != device for t in present):
        need = "CPU tensors need TRITON_INTERPRET=1 set before Triton is imported"
        return f"the kernels take {device} tensors here ({need})"
    return None


def __getattr__(name: str) -> Any:
    if name in _ENTRY_POINTS:
        return getattr(importlib.import_module(f"{__name__}.{_ENTRY_POINTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
