"""Every AFT model compiles whole: ``torch.compile(fullgraph=True)`` with zero graph breaks.

Tiny decoders (causal) and ViTs (non-causal) with each AFT mixer, with and without ``q``,
factorized and dense bias; compiled forward and backward match eager. ``aot_eager`` runs
dynamo and AOTAutograd (the custom ops' fake implementations and autograd formulas)
without code generation, to keep CI fast; one model also goes through inductor.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from aft import layers as L
from aft.models.decoder import Decoder
from aft.models.vit import VisionTransformer

T, D = 16, 16
SEQUENCE_MIXERS = {
    "full": partial(L.AFTFull, seq_len=T, bias_dim=4),
    "full_dense": partial(L.AFTFull, seq_len=T, bias_dim=None),
    "local": partial(L.AFTLocal, seq_len=T, window=4, bias_dim=4),
    "local_dense": partial(L.AFTLocal, seq_len=T, window=4, bias_dim=None),
    "local_no_q": partial(L.AFTLocal, seq_len=T, window=4, bias_dim=4, use_query=False),
    "simple": L.AFTSimple,
    "simple_no_q": partial(L.AFTSimple, use_query=False),
    "conv1d": partial(L.AFTConv1d, heads=4, kernel_size=3),
    "conv1d_local_only": partial(L.AFTConv1d, heads=4, kernel_size=3, global_connectivity=False),
}


def _decoder(name: str) -> torch.nn.Module:
    return Decoder(partial(SEQUENCE_MIXERS[name], causal=True), vocab_size=11, seq_len=T, depth=1, dim=D)


def _vit(name: str) -> torch.nn.Module:
    if name.startswith("conv2d"):
        mixer = partial(L.AFTConv2d, heads=4, kernel_size=3, use_query=name != "conv2d_no_q")
        return VisionTransformer(
            mixer,
            img_size=8,
            patch_size=2,
            num_classes=3,
            depth=1,
            dim=D,
            class_token=False,
            position_embedding=False,
            spatial_mixer=True,
        )
    return VisionTransformer(
        SEQUENCE_MIXERS[name], img_size=8, patch_size=2, num_classes=3, depth=1, dim=D, class_token=False
    )


def _compare(model: torch.nn.Module, x: torch.Tensor, backend: str) -> None:
    torch.manual_seed(0)
    model.eval()  # no dropout: eager and compiled see the same function
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    want = model(x)
    grads_want = torch.autograd.grad(want.square().sum(), list(model.parameters()))
    got = compiled(x)
    grads_got = torch.autograd.grad(got.square().sum(), list(model.parameters()))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads_got, grads_want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SEQUENCE_MIXERS))
def test_decoder_compiles_whole_and_matches_eager(name: str) -> None:
    torch._dynamo.reset()
    _compare(_decoder(name), torch.randint(0, 11, (2, T)), "aot_eager")


@pytest.mark.parametrize("name", ["conv2d", "conv2d_no_q", "local_dense", "full", "conv1d"])
def test_vit_compiles_whole_and_matches_eager(name: str) -> None:
    torch._dynamo.reset()
    _compare(_vit(name), torch.randn(2, 3, 8, 8), "aot_eager")


def test_graph_break_count_is_zero() -> None:
    """``torch._dynamo.explain`` counts the breaks (``fullgraph=True`` above refuses any)."""
    model = _decoder("local")
    explanation = torch._dynamo.explain(model)(torch.randint(0, 11, (2, T)))
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_inductor_compiles_aft_local_decoder() -> None:
    torch._dynamo.reset()
    _compare(_decoder("local"), torch.randint(0, 11, (2, T)), "inductor")
