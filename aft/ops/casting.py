"""The float32 core of the AFT operators: the bias type and the cast every backend applies.

Every backend computes Eq. 2 in float32 (float64 inputs stay float64) with autocast off, and
returns ``v``'s dtype. This module is a leaf: the PyTorch path, the Triton kernels and the
dispatcher all import it, and it imports none of them.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

FactorizedBias = tuple[Tensor, Tensor]
"""``(u, v)`` with shapes ``(T, d')`` each, standing for ``w = u @ v.T`` (Eq. 7)."""


def upcast(t: Tensor) -> Tensor:
    """float16/bfloat16 to float32 (the dtype of the AFT core); other dtypes unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast disabled on ``device``'s type; a no-op where autocast does not exist (``meta``)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()
