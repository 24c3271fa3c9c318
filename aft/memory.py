"""Memory as the bytes autograd saves for backward: the device-independent count behind the
paper's O(T d) memory claim (Table 1), used by the tests and the CPU benchmarks.

Each storage counts once, however many saved tensors view it, so a view of an input (``u[:T]``
of a position bias) costs its whole storage and a saved input costs what the caller already
holds. On a GPU, ``torch.cuda.max_memory_allocated`` measures the rest (workspaces, outputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def saved_storages(forward: Callable[[], object]) -> dict[int, tuple[tuple[int, ...], int]]:
    """``{storage address: (shape of a tensor saved on it, bytes of the storage)}`` of the
    tensors autograd saves while ``forward()`` runs (its result is dropped)."""
    saved: dict[int, tuple[tuple[int, ...], int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = (tuple(t.shape), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return saved


def saved_bytes(forward: Callable[[], object]) -> int:
    """Bytes of the distinct storages autograd saves while ``forward()`` runs."""
    return sum(nbytes for _, nbytes in saved_storages(forward).values())
