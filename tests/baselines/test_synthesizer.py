"""DenseSynthesizerAttention: the synthesised attention and its fixed length."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aft.baselines import DenseSynthesizerAttention


@pytest.mark.parametrize("causal", [True, False])
def test_matches_explicit_dense_synthesizer(causal: bool) -> None:
    """Y = softmax(W₂ ReLU(W₁X + b₁) + b₂) G(X) per head (Tay et al. Eq. 1–2), first T columns."""
    torch.manual_seed(0)
    b, t, d, heads, seq_len = 2, 6, 8, 2, 10
    mixer = DenseSynthesizerAttention(d, heads=heads, seq_len=seq_len, causal=causal).double()
    x = torch.randn(b, t, d, dtype=torch.float64)

    hidden = F.relu(x @ mixer.hidden.weight.T + mixer.hidden.bias)
    logits = hidden @ mixer.logits.weight.T + mixer.logits.bias
    logits = logits.view(b, t, heads, seq_len)[..., :t].transpose(1, 2)
    if causal:
        logits = logits.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), -torch.inf)
    values = mixer.value(x).view(b, t, heads, d // heads).transpose(1, 2)
    expected = mixer.proj((logits.softmax(-1) @ values).transpose(1, 2).reshape(b, t, d))

    torch.testing.assert_close(mixer(x), expected)


def test_prefix_of_a_sequence_gets_the_same_causal_outputs() -> None:
    torch.manual_seed(0)
    mixer = DenseSynthesizerAttention(8, heads=2, seq_len=12).double()
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    torch.testing.assert_close(mixer(x[:, :5]), mixer(x)[:, :5])


def test_rejects_sequences_longer_than_seq_len() -> None:
    mixer = DenseSynthesizerAttention(8, heads=2, seq_len=12)
    assert mixer.logits.out_features == 2 * 12
    with pytest.raises(ValueError):
        mixer(torch.randn(1, 13, 8))


def test_parameter_count_for_table_4() -> None:
    d, heads, seq_len = 512, 8, 1024
    count = sum(p.numel() for p in DenseSynthesizerAttention(d, heads=heads, seq_len=seq_len).parameters())
    assert count == 3 * d * d + 3 * d + heads * seq_len * (d + 1) == 4_990_464
