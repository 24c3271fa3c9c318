"""Helpers that register the AFT operators as ``torch.library`` custom ops.

Each operator is a pair of custom ops: a forward that returns its outputs plus a 0-dim bool
``exact`` flag (whether the call took :mod:`aft.ops.exact`), and a backward that takes the
forward's tensor inputs and outputs. To the compiler both are opaque nodes with fake
(meta) implementations, so a model calling them compiles whole (``fullgraph=True``); the
data-dependent choice of the exact path happens inside them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def connect(forward: torch.library.CustomOpDef, backward: torch.library.CustomOpDef, tensors: int) -> None:
    """Make ``backward`` the autograd formula of ``forward``.

    ``forward``'s first ``tensors`` arguments are tensors (or ``None``), the rest static;
    ``backward`` is called as ``backward(grad, *tensor_inputs, *outputs, *static)`` and returns
    one gradient per tensor input, an empty ``grad.new_empty(0)`` for a ``None`` input (its
    fake implementation is registered here: empty tensors like the inputs).
    """

    def setup(ctx, inputs: tuple, output: tuple) -> None:
        ctx.save_for_backward(*inputs[:tensors], *output)
        ctx.present = [t is not None for t in inputs[:tensors]]
        ctx.static = inputs[tensors:]

    def gradients(ctx, grad: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        grads = backward(grad.contiguous(), *ctx.saved_tensors, *ctx.static)
        return (
            *(g if present else None for g, present in zip(grads, ctx.present, strict=True)),
            *([None] * len(ctx.static)),
        )

    def fake(grad: Tensor, *args: object) -> tuple[Tensor, ...]:
        return tuple(
            grad.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
            for t in args[:tensors]
        )

    backward.register_fake(fake)
    forward.register_autograd(gradients, setup_context=setup)


def flag(exact: bool, like: Tensor) -> Tensor:
    """The 0-dim bool ``exact`` output on ``like``'s device."""
    return torch.tensor(exact, device=like.device)


def fake_flag(like: Tensor) -> Tensor:
    return like.new_empty((), dtype=torch.bool)
