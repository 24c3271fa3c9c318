"""Initialize an AFT ViT from a DeiT checkpoint (§5.3 "Compatibility with Transformers", Table 8 "ft").

"We train an AFT-conv by initializing its weights with that of the DeiT model, excluding the
position embeddings, the class token, key and query projections." Everything else of every
block (LayerNorms, value and output projections, MLP) and the patch embedding, final norm and
head are copied from timm's DeiT layout.
"""

from __future__ import annotations

from collections.abc import Mapping

import timm
from torch import Tensor

from aft.models.vit import VisionTransformer

_STEM_AND_HEAD = ("patch_embed.proj", "norm", "head")
_BLOCK_SAME_NAME = ("norm1", "norm2", "mlp.fc1", "mlp.fc2")


def deit_to_aft_state(deit_state: Mapping[str, Tensor], depth: int) -> dict[str, Tensor]:
    """Rename the transferable tensors of a timm DeiT state dict to :class:`VisionTransformer` names.

    The value projection is the last third of DeiT's fused ``attn.qkv`` (rows ``[2d, 3d)``).
    """
    state = {}
    for kind in ("weight", "bias"):
        state.update({f"{name}.{kind}": deit_state[f"{name}.{kind}"] for name in _STEM_AND_HEAD})
        for i in range(depth):
            block = f"blocks.{i}"
            state.update({f"{block}.{name}.{kind}": deit_state[f"{block}.{name}.{kind}"] for name in _BLOCK_SAME_NAME})
            state[f"{block}.mixer.to_v.{kind}"] = deit_state[f"{block}.attn.qkv.{kind}"].chunk(3, dim=0)[2]
            state[f"{block}.mixer.proj.{kind}"] = deit_state[f"{block}.attn.proj.{kind}"]
    return state


def transfer_deit_weights(model: VisionTransformer, deit_state: Mapping[str, Tensor]) -> list[str]:
    """Copy the transferable DeiT tensors into ``model`` in place; returns the names it loaded.

    Raises if a tensor's shape differs (e.g. another width or number of classes).
    """
    state = deit_to_aft_state(deit_state, len(model.blocks))
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{type(model).__name__} has no parameters {result.unexpected_keys}")
    return sorted(state)


def init_from_deit(model: VisionTransformer, deit_name: str = "deit_base_patch16_384") -> list[str]:
    """Table 8 "ft": load timm's pretrained ``deit_name`` (downloads it) and transfer its weights."""
    deit = timm.create_model(deit_name, pretrained=True)
    return transfer_deit_weights(model, deit.state_dict())
