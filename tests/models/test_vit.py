"""DeiT/ViT classifier (§5.3): layouts, fully convolutional AFT-conv, DeiT initialization (Table 8)."""

from __future__ import annotations

from functools import partial

import pytest
import timm
import torch

from aft.baselines import LambdaLayer
from aft.layers import AFTConv2d, AFTFull, AFTSimple
from aft.models import VisionTransformer
from aft.models.deit_init import transfer_deit_weights

CLASSES = 10
GRID = {"class_token": False, "position_embedding": False, "spatial_mixer": True}  # AFT-conv, §5.3
TOKENS = {"class_token": True, "position_embedding": True, "spatial_mixer": False}  # DeiT / AFT-full


def aft_conv_vit(**kwargs: object) -> VisionTransformer:
    mixer = partial(AFTConv2d, heads=4, kernel_size=11)
    return VisionTransformer(mixer, **{"depth": 1, "dim": 32, "num_classes": CLASSES, **GRID, **kwargs})


@pytest.mark.parametrize("img_size", [224, 384])
def test_aft_conv_vit_built_for_224_runs_at_any_size(img_size: int) -> None:
    """§5.3 "Variable size inputs": no class token or position embedding, average pooling."""
    torch.manual_seed(0)
    model = aft_conv_vit(img_size=224)
    images = torch.randn(2, 3, img_size, img_size)
    features = model.forward_features(images)
    assert features.shape == (2, img_size // 16, img_size // 16, 32)
    logits = model(images)
    assert logits.shape == (2, CLASSES)
    torch.testing.assert_close(logits, model.head(features.mean(dim=(1, 2))))
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_aft_full_vit_classifies_from_the_class_token_of_197() -> None:
    model = VisionTransformer(partial(AFTFull, seq_len=197), depth=1, dim=32, num_classes=CLASSES, **TOKENS)
    images = torch.randn(2, 3, 224, 224)
    features = model.forward_features(images)
    assert features.shape == (2, 197, 32)  # §5.3: T = 1 + 14 * 14
    torch.testing.assert_close(model(images), model.head(features[:, 0]))
    with pytest.raises(AssertionError):  # the position embedding fixes the input size
        model(torch.randn(1, 3, 384, 384))


def test_lambda_vit_keeps_a_grid_position_embedding() -> None:
    mixer = partial(LambdaLayer, heads=2, key_dim=16, grid_size=(4, 4))
    layout = {**GRID, "position_embedding": True}
    model = VisionTransformer(mixer, img_size=64, depth=1, dim=32, num_classes=CLASSES, **layout)
    assert model.pos_embed.shape == (1, 4, 4, 32) and model.cls_token is None
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, CLASSES)


def test_drop_path_rises_linearly_over_the_blocks() -> None:
    model = aft_conv_vit(depth=3, drop_path_rate=0.2)
    assert isinstance(model.blocks[0].drop_path, torch.nn.Identity)
    assert [b.drop_path.drop_prob for b in model.blocks[1:]] == pytest.approx([0.1, 0.2])


def test_invalid_layouts_are_rejected() -> None:
    with pytest.raises(ValueError, match="class_token"):
        aft_conv_vit(class_token=True)
    with pytest.raises(ValueError, match="causal"):
        VisionTransformer(partial(AFTSimple, causal=True), depth=1, dim=32, **TOKENS)


def test_timm_init_spares_the_conv_biases() -> None:
    torch.manual_seed(0)
    model = aft_conv_vit()
    bias = model.blocks[0].mixer.position_bias
    assert not bias.gain.any() and not bias.shift.any()  # Eq. 8: gamma, beta initialized as 0
    assert abs(model.blocks[0].mlp.fc1.weight.std().item() - 0.02) < 2e-3


def test_deit_weights_transfer_except_position_embedding_class_token_query_and_key() -> None:
    """Table 8 "ft" (§5.3 "Compatibility with Transformers")."""
    size = {"img_size": 64, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": CLASSES}
    deit = timm.create_model("deit_tiny_patch16_224", **size)
    model = aft_conv_vit(img_size=64, depth=2)
    untouched = {name: p.clone() for name, p in model.named_parameters() if "to_q" in name or "to_k" in name}
    loaded = transfer_deit_weights(model, deit.state_dict())
    ours, theirs = model.state_dict(), deit.state_dict()
    assert not any(key in name for name in loaded for key in ("to_q", "to_k", "pos_embed", "cls_token"))
    assert len(loaded) == 6 + 2 * 12  # stem, final norm, head; 2 norms, MLP, value and output per block
    torch.testing.assert_close(ours["blocks.1.mixer.to_v.weight"], theirs["blocks.1.attn.qkv.weight"][64:])
    torch.testing.assert_close(ours["blocks.1.mixer.to_v.bias"], theirs["blocks.1.attn.qkv.bias"][64:])
    for name in ("patch_embed.proj.weight", "blocks.0.mlp.fc2.weight", "norm.bias", "head.weight"):
        torch.testing.assert_close(ours[name], theirs[name])
    torch.testing.assert_close(ours["blocks.0.mixer.proj.weight"], theirs["blocks.0.attn.proj.weight"])
    assert all(torch.equal(ours[name], p) for name, p in untouched.items())
