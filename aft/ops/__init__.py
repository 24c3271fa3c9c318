"""The AFT operators (Zhai et al., 2021, §3) as a PyTorch extension.

Read :mod:`aft.ops.naive` first: the operators as their equations, the reference every
backend is tested against. Then:

* :mod:`aft.ops.dispatch`  the public operators below: shape checks, the ``backend``
  choice (argument, :func:`use` context, ``"auto"``), autocast and the ``q`` gate.
* The PyTorch path, by algorithm family, each a pair of ``torch.library`` custom ops
  (forward, backward) with fake implementations: :mod:`aft.ops.full` (Eq. 2),
  :mod:`aft.ops.banded` (causal AFT-simple, AFT-local, AFT-conv1d), :mod:`aft.ops.conv2d`;
  their float64 sums :mod:`aft.ops.prefix`; the exact fallback :mod:`aft.ops.exact`.
* The Triton kernels: :mod:`aft.kernels`.
* :mod:`aft.ops.decode`: one-token decoding (``AFTLayer.step``).
"""

from aft.ops.casting import FactorizedBias, upcast
from aft.ops.dispatch import (
    BACKENDS,
    Backend,
    aft_conv1d,
    aft_conv2d,
    aft_full,
    aft_local,
    aft_simple,
    decode_step,
    settings,
    use,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "FactorizedBias",
    "aft_conv1d",
    "aft_conv2d",
    "aft_full",
    "aft_local",
    "aft_simple",
    "decode_step",
    "settings",
    "upcast",
    "use",
]
