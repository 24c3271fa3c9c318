"""What autograd saves for backward, counted per storage (a view of a saved tensor adds nothing)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def saved_storages(forward: Callable[[], object]) -> dict[int, tuple[tuple[int, ...], int]]:
    """``{storage address: (shape of a tensor saved on it, bytes of the storage)}`` of the
    tensors autograd saves while ``forward()`` runs."""
    saved: dict[int, tuple[tuple[int, ...], int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = (tuple(t.shape), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return saved


def saved_bytes(forward: Callable[[], object]) -> int:
    """Bytes of the distinct storages autograd saves while ``forward()`` runs."""
    return sum(nbytes for _, nbytes in saved_storages(forward).values())
