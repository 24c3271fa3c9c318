"""timm's model interface on :class:`aft.models.vit.VisionTransformer` (head, pooling, device and
dtype, checkpointing, intermediates, pruning, resizing, weight-decay names), on tiny models."""

from __future__ import annotations

from functools import partial

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

import aft.models
from aft.layers import AFTFull
from aft.models import VisionTransformer
from aft.training.optim import weight_decay_groups

TINY = {"depth": 2, "num_classes": 10}
FULL = "aft_full_tiny_patch16_224"
CONV = "aft_conv_tiny_k11_h32_patch16_224"
LAMBDA = "lambda_tiny_patch16_224"
DIM = {FULL: 16, CONV: 32, LAMBDA: 24}  # divisible by the heads of each mixer


def tiny(name: str, **kwargs: object) -> VisionTransformer:
    torch.manual_seed(0)
    return timm.create_model(name, **{**TINY, "dim": DIM[name], "img_size": 64, **kwargs}).eval()


@pytest.mark.parametrize("name", [FULL, CONV, LAMBDA])
def test_num_classes_0_gives_no_head_and_the_pre_logits(name: str) -> None:
    model = tiny(name)
    images = torch.randn(2, 3, 64, 64)
    pre_logits = model.forward_head(model.forward_features(images), pre_logits=True)
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity) and model.num_classes == 0
    torch.testing.assert_close(model(images), pre_logits)
    assert pre_logits.shape == (2, model.num_features) == (2, model.head_hidden_size)
    assert isinstance(tiny(name, num_classes=0).head, nn.Identity)


def test_global_pool_token_avg_or_none() -> None:
    model = tiny(FULL)
    images = torch.randn(2, 3, 64, 64)
    features = model.forward_features(images)  # (B, 1 + 16, D)
    torch.testing.assert_close(model.forward_head(features, pre_logits=True), features[:, 0])
    model.reset_classifier(3, "avg")
    torch.testing.assert_close(model.forward_head(features, pre_logits=True), features[:, 1:].mean(1))
    assert model(images).shape == (2, 3)
    model.reset_classifier(0, "")
    torch.testing.assert_close(model(images), features)


def test_grid_model_pools_the_grid_and_rejects_token_pooling() -> None:
    model = tiny(CONV, global_pool="", num_classes=0)
    features = model(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, 4, 4, 32)  # NHWC, model.output_fmt
    with pytest.raises(ValueError, match="class_token"):
        model.reset_classifier(0, "token")
    with pytest.raises(ValueError, match="global_pool"):
        tiny(CONV, global_pool="mean")


def test_device_and_dtype_keywords_build_every_tensor_there() -> None:
    model = timm.create_model(FULL, device="meta", dtype=torch.float64)
    assert {(t.device.type, t.dtype) for t in model.state_dict().values()} == {("meta", torch.float64)}
    model.reset_classifier(5)
    assert model.head.weight.device.type == "meta" and model.head.weight.dtype == torch.float64
    model = tiny(LAMBDA, dtype=torch.bfloat16)
    assert {t.dtype for t in model.state_dict().values() if t.is_floating_point()} == {torch.bfloat16}


@pytest.mark.parametrize("name", [FULL, LAMBDA])
def test_grad_checkpointing_gives_the_same_output_and_gradients(name: str) -> None:
    model = tiny(name).train()
    images = torch.randn(2, 3, 64, 64)
    grads = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        model(images).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert model.grad_checkpointing
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n])


def test_forward_intermediates_are_the_block_outputs_on_the_patch_grid() -> None:
    model = tiny(FULL)
    images = torch.randn(1, 3, 64, 64)
    outputs = []
    hooks = [block.register_forward_hook(lambda m, i, o: outputs.append(o)) for block in model.blocks]
    final, intermediates = model.forward_intermediates(images)
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(final, model.forward_features(images))
    for output, feature in zip(outputs, intermediates, strict=True):  # (B, 1 + Y X, D) -> (B, D, Y, X)
        torch.testing.assert_close(feature, output[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2))
    ((tokens, class_token),) = model.forward_intermediates(
        images, indices=[1], output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True
    )
    torch.testing.assert_close(tokens, outputs[1][:, 1:])
    torch.testing.assert_close(class_token, outputs[1][:, :1])


def test_prune_intermediate_layers_keeps_the_blocks_up_to_the_last_index() -> None:
    model = tiny(CONV, depth=3)
    images = torch.randn(1, 3, 64, 64)
    expected = model.forward_intermediates(images, indices=[1], intermediates_only=True)
    assert model.prune_intermediate_layers([1], prune_norm=True) == [1]
    assert len(model.blocks) == 2 and isinstance(model.norm, nn.Identity) and model.num_classes == 0
    torch.testing.assert_close(model.forward_features(images).permute(0, 3, 1, 2), expected[0])


def test_features_only_gives_the_last_three_blocks_as_maps() -> None:
    features = timm.create_model(CONV, features_only=True, depth=4, dim=32, img_size=64)
    maps = features(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 32, 4, 4)] * 3
    assert features.feature_info.reduction() == [16] * 3


def test_factorized_and_dense_biases_resample_alike() -> None:
    """Eq. 7 is bilinear in u, v and the resampling linear: resampling u, v resamples w = u v^T."""
    torch.manual_seed(0)
    factorized = VisionTransformer(partial(AFTFull, seq_len=17, bias_dim=4), img_size=64, depth=1, dim=8)
    dense = VisionTransformer(partial(AFTFull, seq_len=17, bias_dim=None), img_size=64, depth=1, dim=8)
    bias = factorized.blocks[0].mixer.position_bias
    dense.blocks[0].mixer.position_bias.w.data.copy_(bias.matrix(17))
    for model in (factorized, dense):
        model.set_input_size(img_size=96)
        assert model.blocks[0].mixer.seq_len == 37 and model.patch_embed.grid_size == (6, 6)
    resampled = dense.blocks[0].mixer.position_bias.w
    torch.testing.assert_close(factorized.blocks[0].mixer.position_bias.matrix(37), resampled)
    assert resampled.shape == (37, 37) and resampled[0, 0] == bias.matrix(17)[0, 0]  # class token kept


def test_set_input_size_resamples_position_parameters_as_timm() -> None:
    model = tiny(FULL)
    pos_embed, u = model.pos_embed.detach().clone(), model.blocks[0].mixer.position_bias.u.detach().clone()
    model.requires_grad_(False)
    model.set_input_size(img_size=96)
    torch.testing.assert_close(model.pos_embed, resample_abs_pos_embed(pos_embed, [6, 6], num_prefix_tokens=1))
    torch.testing.assert_close(model.blocks[0].mixer.position_bias.u, resample_abs_pos_embed(u[None], [6, 6])[0])
    assert not any(p.requires_grad for p in model.parameters())
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 10)


def test_lambda_set_input_size_resamples_embedding_and_offsets() -> None:
    model = tiny(LAMBDA)
    model.set_input_size(img_size=(96, 128))
    mixer = model.blocks[0].mixer
    assert model.pos_embed.shape == (1, 6, 8, 24) and mixer.rel_pos_emb.shape == (11, 15, 16)
    assert mixer.grid_size == (6, 8) and model(torch.randn(1, 3, 96, 128)).shape == (1, 10)


def test_a_mixer_built_for_another_grid_names_the_config_key() -> None:
    with pytest.raises(ValueError, match="model.mixer.seq_len=17"):
        VisionTransformer(partial(AFTFull, seq_len=197), img_size=64, depth=1, dim=8)
    with pytest.raises(ValueError, match=r"model.mixer.grid_size=\[4, 4\]"):
        timm.create_model(LAMBDA, img_size=64, mixer=partial(aft.baselines.LambdaLayer, heads=3, grid_size=(14, 14)))


@pytest.mark.parametrize("name", [FULL, CONV, LAMBDA])
def test_no_weight_decay_names_no_decay_parameters_of_the_project_optimizer(name: str) -> None:
    model = tiny(name)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in weight_decay_groups(model, 0.1)[1]["params"]}
    listed = model.no_weight_decay() & set(names.values())
    assert listed and listed <= no_decay
    assert any(".mixer." in n for n in listed) or name == CONV and any("position_bias" in n for n in listed)
