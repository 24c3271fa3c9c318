"""Backbones of the paper's experiments; importing this package registers the timm models.

* :class:`Decoder`            GPT-style causal decoder (§5.1, §5.2), :mod:`aft.models.decoder`.
* :class:`VisionTransformer`  DeiT/ViT classifier (§5.3), :mod:`aft.models.vit`.
* :mod:`aft.models.registry`  timm names of the Table 7 and 8 models.
"""

from aft.models import registry
from aft.models.decoder import Decoder, DecoderCache
from aft.models.vit import VisionTransformer

__all__ = ["Decoder", "DecoderCache", "VisionTransformer", "registry"]
