"""Every experiment (a model row of Tables 2-12 or of the §5.3 and §8 text) builds the paper's
model from its config with ``hydra.utils.instantiate`` (no data files, no network), and a
shrunken copy of it trains (forward + backward) on CPU."""

from __future__ import annotations

import math
import socket
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer as TimmViT

from aft.baselines import (
    DenseSynthesizerAttention,
    LambdaLayer,
    LinearAttention,
    LocalAttention2d,
    LSHAttention,
    MultiHeadAttention,
    PerformerAttention,
    StridedSparseAttention,
)
from aft.experiments import build_on_meta, compose_config, compose_experiment, experiment_names
from aft.layers import AFTConv2d, AFTFull, AFTLocal, AFTSimple
from aft.models import Decoder, VisionTransformer

# experiment -> (mixer class, depth, dim, attributes of every mixer); §5.1, §5.2, Tables 2-4
DECODER_ROWS: dict[str, tuple[type, int, int, dict[str, Any]]] = {
    # Child et al. 2019 §7.1: "half-size feedforward network and query-key projections"
    "cifar10_sparse_transformer_strided_l128_d256": (StridedSparseAttention, 128, 256, {"heads": 2, "qk_dim": 128}),
    "cifar10_image_transformer_local2d_l12_d512": (LocalAttention2d, 12, 512, {"heads": 4, "memory_size": 256}),
    "cifar10_transformer_l12_d512": (MultiHeadAttention, 12, 512, {"heads": 4}),
    "cifar10_transformer_l24_d256": (MultiHeadAttention, 24, 256, {"heads": 2}),
    "cifar10_aft_local256_l12_d512": (AFTLocal, 12, 512, {"window": 256, "position_bias.u.shape": (3072, 64)}),
    "cifar10_aft_local256_l24_d256": (AFTLocal, 24, 256, {"window": 256, "position_bias.u.shape": (3072, 64)}),
    "cifar10_aft_local256_l24_d256_dense": (AFTLocal, 24, 256, {"window": 256, "position_bias.w.shape": (3072, 3072)}),
    "cifar10_aft_simple_l24_d256": (AFTSimple, 24, 256, {}),
    "enwik8_transformer_l12_d512": (MultiHeadAttention, 12, 512, {"heads": 8}),
    "enwik8_transformer_l24_d256": (MultiHeadAttention, 24, 256, {"heads": 4}),
    "enwik8_reformer_l12_d512": (LSHAttention, 12, 512, {"heads": 8}),
    "enwik8_synthesizer_l12_d512": (DenseSynthesizerAttention, 12, 512, {"heads": 8, "seq_len": 1024}),
    "enwik8_linear_transformer_l12_d512": (LinearAttention, 12, 512, {"heads": 8}),
    "enwik8_performer_l12_d512": (PerformerAttention, 12, 512, {"heads": 8}),
    "enwik8_aft_local32_l12_d512": (AFTLocal, 12, 512, {"window": 32, "position_bias.u.shape": (1024, 256)}),
    "enwik8_aft_local32_l24_d256": (AFTLocal, 24, 256, {"window": 32, "position_bias.u.shape": (1024, 256)}),
    "enwik8_aft_simple_l24_d256": (AFTSimple, 24, 256, {}),
    # Table 5: the local window s of AFT-local-32 L=24 d=256 (s = 0 is the AFT-simple row above)
    "enwik8_aft_local1_l24_d256": (AFTLocal, 24, 256, {"window": 1, "position_bias.u.shape": (1024, 256)}),
    "enwik8_aft_local2_l24_d256": (AFTLocal, 24, 256, {"window": 2, "position_bias.u.shape": (1024, 256)}),
    "enwik8_aft_local4_l24_d256": (AFTLocal, 24, 256, {"window": 4, "position_bias.u.shape": (1024, 256)}),
    "enwik8_aft_local8_l24_d256": (AFTLocal, 24, 256, {"window": 8, "position_bias.u.shape": (1024, 256)}),
    "enwik8_aft_local64_l24_d256": (AFTLocal, 24, 256, {"window": 64, "position_bias.u.shape": (1024, 256)}),
    "enwik8_aft_local128_l24_d256": (AFTLocal, 24, 256, {"window": 128, "position_bias.u.shape": (1024, 256)}),
    "enwik8_aft_local256_l24_d256": (AFTLocal, 24, 256, {"window": 256, "position_bias.u.shape": (1024, 256)}),
    "enwik8_aft_local512_l24_d256": (AFTLocal, 24, 256, {"window": 512, "position_bias.u.shape": (1024, 256)}),
    "enwik8_aft_local1024_l24_d256": (AFTLocal, 24, 256, {"window": 1024, "position_bias.u.shape": (1024, 256)}),
    # Table 6: longer sequences
    "enwik8_aft_local32_l24_d256_t2048": (
        AFTLocal,
        24,
        256,
        {"window": 32, "seq_len": 2048, "position_bias.u.shape": (2048, 256)},
    ),
    "enwik8_aft_local32_l24_d256_t4096": (
        AFTLocal,
        24,
        256,
        {"window": 32, "seq_len": 4096, "position_bias.u.shape": (4096, 256)},
    ),
    # not a paper row: the README's main job on the embedded text (the root config's default)
    "embedded_text_aft_local": (AFTLocal, 4, 128, {"window": 32, "causal": True}),
}
# experiment -> (mixer class, dim, class token, mixer attributes); §5.3, Tables 7, 8
VIT_ROWS: dict[str, tuple[type, int, bool, dict[str, Any]]] = {
    "imagenet_lambda_tiny": (LambdaLayer, 192, False, {"heads": 3, "key_dim": 16}),
    "imagenet_lambda_small": (LambdaLayer, 384, False, {"heads": 6, "key_dim": 16}),
    "imagenet_aft_full_tiny": (AFTFull, 192, True, {"seq_len": 197, "position_bias.u.shape": (197, 128)}),
    "imagenet_aft_full_small": (AFTFull, 384, True, {"seq_len": 197, "position_bias.u.shape": (197, 128)}),
    "imagenet_aft_conv_tiny_k11_h32": (AFTConv2d, 192, False, {"kernel_size": 11, "heads": 32}),
    "imagenet_aft_conv_tiny_k11_h192": (AFTConv2d, 192, False, {"kernel_size": 11, "heads": 192}),
    "imagenet_aft_conv_small_k11_h16": (AFTConv2d, 384, False, {"kernel_size": 11, "heads": 16}),
    "imagenet_aft_conv_small_k11_h384": (AFTConv2d, 384, False, {"kernel_size": 11, "heads": 384}),
    "imagenet_aft_conv_small_k15_h384": (AFTConv2d, 384, False, {"kernel_size": 15, "heads": 384}),
    "imagenet_aft_conv_base_k25_h32_ft384": (AFTConv2d, 768, False, {"kernel_size": 25, "heads": 32}),
    "imagenet_aft_conv_base_k25_h32_rand384": (AFTConv2d, 768, False, {"kernel_size": 25, "heads": 32}),
    # Table 9 "Non Factorized"
    "imagenet_aft_full_small_dense": (AFTFull, 384, True, {"seq_len": 197, "position_bias.w.shape": (197, 197)}),
    # Table 11: kernel sizes; Table 10 "Naive param"; §5.3 global connectivity
    "imagenet_aft_conv_small_k3_h384": (AFTConv2d, 384, False, {"kernel_size": 3, "heads": 384}),
    "imagenet_aft_conv_small_k7_h384": (AFTConv2d, 384, False, {"kernel_size": 7, "heads": 384}),
    "imagenet_aft_conv_small_k25_h384": (AFTConv2d, 384, False, {"kernel_size": 25, "heads": 384}),
    "imagenet_aft_conv_small_k27_h384": (AFTConv2d, 384, False, {"kernel_size": 27, "heads": 384}),
    "imagenet_aft_conv_small_k7_h384_naive": (AFTConv2d, 384, False, {"kernel_size": 7, "position_bias.gain": None}),
    "imagenet_aft_conv_small_k7_h384_local_only": (
        AFTConv2d,
        384,
        False,
        {"kernel_size": 7, "heads": 384, "global_connectivity": False},
    ),
    # Table 12 "w/o q"
    "imagenet_aft_conv_small_k11_h384_noq": (AFTConv2d, 384, False, {"kernel_size": 11, "heads": 384, "to_q": None}),
    "imagenet_aft_conv_small_k15_h384_noq": (AFTConv2d, 384, False, {"kernel_size": 15, "heads": 384, "to_q": None}),
    # §8: the model of the sparsity run is the default one (the regularizer is a trainer option)
    "imagenet_aft_conv_small_k11_h384_sparsity": (AFTConv2d, 384, False, {"kernel_size": 11, "heads": 384}),
    "imagenet_aft_conv_small_k11_h384_gumbel": (
        AFTConv2d,
        384,
        False,
        {"kernel_size": 11, "heads": 384, "position_bias.gumbel_tau": 0.5},
    ),
    # §5.3 "Variable size inputs": the Table 7 kernel-15 model, evaluated on 384 crops
    "imagenet_aft_conv_small_k15_h384_eval384": (AFTConv2d, 384, False, {"kernel_size": 15, "heads": 384}),
}
# experiment -> (timm model class, number of blocks or stages)
TIMM_ROWS: dict[str, tuple[type, int]] = {
    "imagenet_resnet50": (ResNet, 4),
    "imagenet_deit_tiny": (TimmViT, 12),
    "imagenet_deit_small": (TimmViT, 12),
    "imagenet_deit_base_384": (TimmViT, 12),
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a model must not download anything (timm models are built with pretrained=false)."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("building a model opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def attribute(obj: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return tuple(obj) if isinstance(obj, torch.Size) else obj


IMAGE_DEMO = "embedded_images_aft_conv"  # not a paper row: the CPU classification demo


def test_every_experiment_is_checked() -> None:
    assert sorted({**DECODER_ROWS, **VIT_ROWS, **TIMM_ROWS, IMAGE_DEMO: None}) == experiment_names()


def test_the_image_demo_builds_a_small_aft_conv_vit_for_its_data() -> None:
    model = build_on_meta(compose_experiment(IMAGE_DEMO).model)
    assert isinstance(model, VisionTransformer) and model.num_classes == 10 and len(model.blocks) == 4
    assert all(type(block.mixer) is AFTConv2d for block in model.blocks) and model.pos_embed is None


def test_root_config_builds_the_default_causal_decoder() -> None:
    model = build_on_meta(compose_config().model)
    assert isinstance(model, Decoder) and all(type(b.mixer) is AFTLocal and b.mixer.causal for b in model.blocks)


def test_finetuning_row_initializes_from_deit() -> None:
    """Table 8 "ft" differs from "rand" only by its DeiT initialization, run by the training loop."""
    ft, rand = (compose_experiment(f"imagenet_aft_conv_base_k25_h32_{kind}384") for kind in ("ft", "rand"))
    assert ft.model == rand.model and ft.trainer == rand.trainer and ft.optim == rand.optim
    assert "model_init" not in rand
    assert set(instantiate(ft.model_init).keywords) == {"weights"}


@pytest.mark.parametrize("name", sorted(DECODER_ROWS))
def test_decoder_experiment_builds_the_paper_model(name: str) -> None:
    mixer_cls, depth, dim, attributes = DECODER_ROWS[name]
    model = build_on_meta(compose_experiment(name).model)
    assert isinstance(model, Decoder) and len(model.blocks) == depth
    assert model.token_embedding.embedding_dim == dim and model.head.out_features == 256
    cifar10 = name.startswith("cifar10")
    paper_length = attributes.get("seq_len", 3072 if cifar10 else 1024)  # §5.1: 32 x 32 x 3; §5.2: T = 1024
    assert model.seq_len == (128 if name.startswith("embedded") else paper_length)
    assert model.token_embedding.num_embeddings == (257 if cifar10 else 256)  # + BOS on CIFAR10
    half_size = name == "cifar10_sparse_transformer_strided_l128_d256"  # Child et al. 2019 §7.1: 2d
    assert model.blocks[0].mlp.fc1.out_features == (2 if half_size else 4) * dim  # §5.1, §5.2: feed-forward 4d
    for block in model.blocks:
        assert type(block.mixer) is mixer_cls and block.mixer.causal
        assert {key: attribute(block.mixer, key) for key in attributes} == attributes


@pytest.mark.parametrize("name", sorted(VIT_ROWS))
def test_vit_experiment_builds_the_paper_model(name: str) -> None:
    mixer_cls, dim, class_token, attributes = VIT_ROWS[name]
    model = build_on_meta(compose_experiment(name).model)
    assert isinstance(model, VisionTransformer) and len(model.blocks) == 12 and model.num_classes == 1000
    assert model.patch_embed.patch_size == (16, 16) and model.norm.normalized_shape == (dim,)
    assert (model.cls_token is not None) == class_token
    if mixer_cls is AFTConv2d:  # §5.3: no position embedding, fully convolutional
        assert model.pos_embed is None and model.spatial_mixer
    for block in model.blocks:
        assert type(block.mixer) is mixer_cls
        assert {key: attribute(block.mixer, key) for key in attributes} == attributes


@pytest.mark.parametrize("name", sorted(TIMM_ROWS))
def test_timm_experiment_builds_the_timm_model(name: str) -> None:
    model_cls, stages = TIMM_ROWS[name]
    model = build_on_meta(compose_experiment(name).model)
    assert type(model) is model_cls and model.num_classes == 1000
    assert len(model.blocks) == stages if model_cls is TimmViT else len(model.layer4) == 3


def shrink(cfg: DictConfig) -> tuple[DictConfig, torch.Tensor]:
    """A tiny copy of ``cfg.model`` (same classes and options) and an input batch for it."""
    model = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    if model._target_ == "timm.create_model":
        if model.model_name.startswith("deit"):
            model.merge_with({"img_size": 64, "depth": 1, "embed_dim": 32, "num_heads": 2})
            return model, torch.randn(2, 3, 64, 64)
        model.layers = [1, 1, 1, 1]
        return model, torch.randn(2, 3, 32, 32)
    model.dim = 32
    mixer = model.mixer
    if "heads" in mixer:
        mixer.heads = math.gcd(mixer.heads, model.dim)
    if model._target_.endswith("Decoder"):
        model.merge_with({"depth": 2, "seq_len": 48})
        if "data_shape" in model:  # the Sparse Transformer's row, column and channel embeddings
            model.data_shape = [4, 4, 3]
        for key in ("seq_len", "window"):
            if key in mixer:
                mixer[key] = min(mixer[key], model.seq_len if key == "seq_len" else 8)
        return model, torch.randint(model.vocab_size, (2, model.seq_len))
    model.merge_with({"depth": 1, "img_size": 64})  # a 4 x 4 patch grid
    if "seq_len" in mixer:
        mixer.seq_len = 1 + 16
    if "grid_size" in mixer:
        mixer.grid_size = [4, 4]
    return model, torch.randn(2, 3, 64, 64)


@pytest.mark.parametrize("name", experiment_names())
def test_tiny_version_trains(name: str) -> None:
    torch.manual_seed(0)
    model_cfg, inputs = shrink(compose_experiment(name))
    model = instantiate(model_cfg)
    out = model(inputs)
    if inputs.dtype == torch.long:
        assert out.shape == (*inputs.shape, model.head.out_features)
        loss = torch.nn.functional.cross_entropy(out.flatten(0, 1), inputs.flatten())
    else:
        assert out.shape == (inputs.shape[0], model.num_classes)
        loss = out.logsumexp(-1).mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), name
