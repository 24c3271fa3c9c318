"""The AFT operations of Zhai et al. (2021), §3, at their first address: see :mod:`aft.ops`.

``aft.functional.aft_local(...)`` and the others are :mod:`aft.ops`'s operators (backend
dispatch, custom ops); the readable definitions are in :mod:`aft.ops.naive`.
"""

from aft.ops import FactorizedBias, aft_conv1d, aft_conv2d, aft_full, aft_local, aft_simple, upcast
from aft.position_bias import position_bias_entropy

__all__ = [
    "FactorizedBias",
    "aft_conv1d",
    "aft_conv2d",
    "aft_full",
    "aft_local",
    "aft_simple",
    "position_bias_entropy",
    "upcast",
]
