"""GPT-style decoder (§5.1, §5.2): causality, incremental decoding, sampling, init, checkpointing."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from hydra.utils import instantiate

from aft.experiments import compose_config
from aft.layers import AFTLocal, AFTSimple
from aft.models import Decoder
from aft.position_bias import ConvPositionBias, FactorizedPositionBias

SEQ_LEN, VOCAB = 24, 11
# model/mixer config -> overrides making its pattern non-trivial at T = 24
MIXERS = {
    "aft_full": ["model.mixer.bias_dim=4"],
    "aft_local": ["model.mixer.window=5", "model.mixer.bias_dim=4"],
    "aft_simple": [],
    "aft_conv1d": ["model.mixer.heads=4", "model.mixer.kernel_size=4"],
    "attention": ["model.mixer.heads=2"],
    "image_transformer_local2d": [
        "model.mixer.height=4",
        "model.mixer.width_channels=8",
        "model.mixer.query_shape=[2,4]",
        "model.mixer.memory_flange=[2,2]",
    ],
    "sparse_strided": ["model.mixer.stride=5"],
    "linear_transformer": ["model.mixer.heads=2", "model.mixer.chunk_size=8"],
    "performer": ["model.mixer.heads=2", "model.mixer.chunk_size=8"],
    "synthesizer": ["model.mixer.heads=2"],
    "reformer": ["model.mixer.heads=2", "model.mixer.chunk_size=4", "model.mixer.n_buckets=4"],
}
RECURRENT = ["aft_full", "aft_local", "aft_simple", "aft_conv1d"]


def tiny_decoder(mixer: str, seed: int = 0) -> Decoder:
    """A 2-block float64 decoder in eval mode with the ``mixer`` config, position biases randomized."""
    size = ["model.depth=2", "model.dim=16", f"model.seq_len={SEQ_LEN}", f"model.vocab_size={VOCAB}"]
    cfg = compose_config([f"model/mixer={mixer}", *size, *MIXERS[mixer]])
    torch.manual_seed(seed)
    model = instantiate(cfg.model).double().eval()
    for module in model.modules():  # their default init is ~0 (u, v ~ 1e-2; Eq. 8 gain 0)
        if isinstance(module, (FactorizedPositionBias, ConvPositionBias)):
            for p in module.parameters():
                p.data = torch.randn_like(p) * 0.5
    return model


def tokens(batch: int = 2, length: int = SEQ_LEN, seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mixer", sorted(set(MIXERS) - {"reformer"}))
def test_changing_future_tokens_leaves_past_logits_unchanged(mixer: str) -> None:
    model, x = tiny_decoder(mixer), tokens()
    for t in (0, 9, SEQ_LEN - 2):
        changed = x.clone()
        changed[:, t + 1 :] = (x[:, t + 1 :] + 1 + torch.arange(SEQ_LEN - t - 1)) % VOCAB
        with torch.no_grad():
            before, after = model(x), model(changed)
        torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], rtol=0, atol=1e-12)
        assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :])


@pytest.mark.parametrize("mixer", sorted(MIXERS))
def test_past_logits_have_no_gradient_from_future_tokens(mixer: str) -> None:
    """∂ logits_<=t / ∂ embedding_>t = 0; the exact check for LSH attention, whose bucketing of
    future tokens can move chunk boundaries (aft.baselines.reformer)."""
    model, captured = tiny_decoder(mixer), {}

    def keep(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        output.retain_grad()
        captured["embedding"] = output

    model.token_embedding.register_forward_hook(keep)
    t = 9
    model(tokens())[:, : t + 1].sum().backward()
    grad = captured["embedding"].grad
    assert grad[:, : t + 1].abs().sum() > 0
    assert torch.equal(grad[:, t + 1 :], torch.zeros_like(grad[:, t + 1 :]))


@pytest.mark.parametrize("mixer", RECURRENT)
def test_decode_step_matches_forward(mixer: str) -> None:
    model, x = tiny_decoder(mixer), tokens()
    assert model.supports_recurrent_decoding
    with torch.no_grad():
        full, cache, steps = model(x), None, []
        for t in range(SEQ_LEN):
            logits, cache = model.decode_step(x[:, t], cache)
            steps.append(logits)
    assert cache.t == SEQ_LEN
    torch.testing.assert_close(torch.stack(steps, dim=1), full, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="seq_len"):
        model.decode_step(x[:, 0], cache)


def test_decode_step_needs_steppable_mixers() -> None:
    model = tiny_decoder("attention")
    assert not model.supports_recurrent_decoding
    with pytest.raises(ValueError, match="step"):
        model.decode_step(tokens()[:, 0])


@pytest.mark.parametrize("mixer", ["aft_local", "attention"])
def test_generate_is_reproducible_with_a_seeded_generator(mixer: str) -> None:
    model, prefix = tiny_decoder(mixer), tokens(length=3)

    def sample(seed: int) -> torch.Tensor:
        return model.generate(prefix, 12, temperature=1.5, top_k=6, generator=torch.Generator().manual_seed(seed))

    out = sample(0)
    assert out.shape == (2, 15) and out.dtype == torch.long
    assert torch.equal(out[:, :3], prefix) and int(out.max()) < VOCAB
    assert torch.equal(sample(0), out)
    assert not torch.equal(sample(1), out)


def test_recurrent_generation_matches_rerunning_the_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    model, prefix = tiny_decoder("aft_conv1d"), tokens(length=4)
    recurrent = model.generate(prefix, SEQ_LEN - 3, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(Decoder, "supports_recurrent_decoding", property(lambda self: False))
    rerun = model.generate(prefix, SEQ_LEN - 3, generator=torch.Generator().manual_seed(0))
    assert recurrent.shape == (2, SEQ_LEN + 1) and torch.equal(recurrent, rerun)


def test_generate_rejects_sequences_longer_than_seq_len() -> None:
    model = tiny_decoder("aft_simple")
    with pytest.raises(ValueError, match="seq_len"):
        model.generate(tokens(length=4), SEQ_LEN - 2)
    with pytest.raises(ValueError, match="seq_len"):
        model(tokens(length=SEQ_LEN + 1))


def test_top_k_one_is_greedy() -> None:
    model, prefix = tiny_decoder("aft_simple"), tokens(length=5)
    out = model.generate(prefix, 1, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, -1], model(prefix)[:, -1].argmax(-1))


def test_gpt2_init_spares_the_position_biases() -> None:
    torch.manual_seed(0)
    mixer = partial(AFTLocal, seq_len=256, window=8, bias_dim=64, causal=True)
    model = Decoder(mixer, vocab_size=256, seq_len=256, depth=2, dim=64)
    for name, p in model.named_parameters():
        if name.endswith("position_bias.u"):
            assert abs(p.std().item() - 1e-2) < 1e-3  # §5.1: N(0, 1e-2), not GPT-2's 0.02
        elif name.endswith(("to_v.weight", "fc1.weight", "token_embedding.weight", "position_embedding.weight")):
            assert abs(p.std().item() - 0.02) < 2e-3
        elif name.endswith("to_v.bias"):
            assert torch.equal(p, torch.zeros_like(p))


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    x, grads = tokens(), []
    for flag in (False, True):
        model = tiny_decoder("aft_local").train()
        model.activation_checkpointing = flag
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-12)


def test_a_non_causal_mixer_is_rejected() -> None:
    with pytest.raises(ValueError, match="causal"):
        Decoder(partial(AFTSimple, causal=False), vocab_size=VOCAB, seq_len=SEQ_LEN, depth=1, dim=16)
