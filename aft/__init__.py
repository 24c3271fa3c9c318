"""Attention Free Transformer (Zhai et al., 2021): operators, layers and models."""

from aft.ops import aft_conv1d, aft_conv2d, aft_full, aft_local, aft_simple

__all__ = ["aft_conv1d", "aft_conv2d", "aft_full", "aft_local", "aft_simple"]
