"""Initialize an AFT ViT from a DeiT checkpoint (§5.3 "Compatibility with Transformers", Table 8 "ft").

"We train an AFT-conv by initializing its weights with that of the DeiT model, excluding the
position embeddings, the class token, key and query projections." Everything else of every
block (LayerNorms, value and output projections, MLP) and the patch embedding, final norm and
head are copied from timm's DeiT layout. The DeiT weights come from a local file (no network
at run time): ``model_init.weights`` in configs/experiment/imagenet_aft_conv_base_k25_h32_ft384.yaml.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from timm.models import load_state_dict
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


def init_from_deit(model: VisionTransformer, weights: str) -> list[str]:
    """Table 8 "ft": transfer the DeiT base 384 weights of the local file ``weights`` into ``model``.

    ``weights`` is a timm state dict of ``deit_base_patch16_384`` saved with ``torch.save``
    (``.pth``; a ``{"model": ...}`` wrapper as in DeiT's release is unwrapped) or ``.safetensors``.
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"model_init.weights={weights} does not exist: on a machine with network run "
            f"python -c \"import timm, torch; torch.save(timm.create_model('deit_base_patch16_384', pretrained=True)"
            f".state_dict(), 'deit_base_patch16_384.pth')\", copy the file here and set model_init.weights "
            f"(or DEIT_BASE_384_WEIGHTS) to its path"
        )
    return transfer_deit_weights(model, load_state_dict(str(path), use_ema=False))
