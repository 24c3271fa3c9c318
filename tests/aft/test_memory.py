"""Bytes saved for backward (aft/memory.py): one count per storage, nothing outside autograd."""

from __future__ import annotations

import torch

from aft.memory import saved_bytes, saved_storages


def test_counts_what_autograd_saves() -> None:
    x = torch.randn(8, 16, requires_grad=True)
    assert saved_bytes(lambda: x.exp()) == x.nbytes  # exp saves its output
    assert saved_bytes(lambda: x * x) == x.nbytes  # both operands are the one storage of x
    assert saved_bytes(lambda: x + 1) == 0  # addition saves nothing
    with torch.no_grad():
        assert saved_bytes(lambda: x.exp()) == 0


def test_a_view_costs_its_whole_storage() -> None:
    x, z = (torch.randn(64, 16, requires_grad=True) for _ in range(2))
    saved = saved_storages(lambda: x[:4] * z[:4])  # mul saves both operands: views of 4 rows
    assert sorted(saved.values()) == [((4, 16), x.nbytes), ((4, 16), z.nbytes)]
