"""SparseTransformerDecoder: Table 2's Sparse Transformer row as Child et al. (2019) built it —
59M parameters (their Table 1), half-size feed-forward and query-key projections (§6, §7.1),
data embeddings (§5.3), dropout at the end of the residual branches (§5.4), their initialization
(§5.2, §6)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from aft.baselines import StridedSparseAttention
from aft.baselines.sparse_transformer_decoder import DataPositionEmbedding, SparseTransformerDecoder
from aft.experiments import build_on_meta, compose_experiment, count_parameters
from tests.models.test_param_counts import assert_matches_paper

ROW = "cifar10_sparse_transformer_strided_l128_d256"


def test_table_2_row_has_the_cited_59m_parameters() -> None:
    """Child et al. Table 1: "Sparse Transformer 59M (strided)", 2.80 bits per dim on CIFAR-10."""
    model = build_on_meta(compose_experiment(ROW).model)
    assert isinstance(model, SparseTransformerDecoder)
    assert_matches_paper(count_parameters(model), 59.0)


def test_table_2_row_has_half_size_feed_forward_and_query_key() -> None:
    """§7.1: 2 heads, 128 layers, d = 256, "half-size feedforward network and query-key projections"."""
    model = build_on_meta(compose_experiment(ROW).model)
    assert len(model.blocks) == 128
    for block in model.blocks:
        assert block.mlp.fc1.out_features == 512  # 2d (§6: "half-size" transformations)
        assert isinstance(block.mixer, StridedSparseAttention) and block.mixer.heads == 2
        assert block.mixer.qk_dim == 128 and block.mixer.qkv.out_features == 2 * 128 + 256


def tiny(depth: int = 4, dim: int = 64, dropout: float = 0.25) -> SparseTransformerDecoder:
    torch.manual_seed(0)
    mixer = lambda dim: StridedSparseAttention(dim, heads=2, causal=True, stride=6, qk_ratio=0.5)  # noqa: E731
    return SparseTransformerDecoder(
        mixer=mixer,
        vocab_size=16,
        seq_len=36,
        depth=depth,
        dim=dim,
        mlp_ratio=2,
        dropout=dropout,
        input_vocab_size=17,
        data_shape=(3, 4, 3),
    )


def test_initialization_follows_child_et_al() -> None:
    """§6: weights N(0, 0.125/√d_in), biases 0, output logits 0, embeddings 0.125/√d and
    0.125/√(d·n_emb); §5.2: W₂ and W_p further scaled by 1/√(2N). Standard deviations."""
    depth, dim = 4, 64
    model = tiny(depth, dim)
    residual = (2 * depth) ** -0.5

    def std(weights: list[torch.Tensor]) -> float:
        return torch.cat([w.flatten() for w in weights]).std().item()

    expected = {
        "fc1": (std([b.mlp.fc1.weight for b in model.blocks]), 0.125 / math.sqrt(dim)),
        "qkv": (std([b.mixer.qkv.weight for b in model.blocks]), 0.125 / math.sqrt(dim)),
        "fc2": (std([b.mlp.fc2.weight for b in model.blocks]), 0.125 / math.sqrt(2 * dim) * residual),
        "proj": (std([b.mixer.proj.weight for b in model.blocks]), 0.125 / math.sqrt(dim) * residual),
        "token": (std([model.token_embedding.weight]), 0.125 / math.sqrt(dim)),
        "position": (std([t.weight for t in model.position_embedding.tables]), 0.125 / math.sqrt(3 * dim)),
    }
    for name, (measured, target) in expected.items():
        assert measured == pytest.approx(target, rel=0.1), name
    assert not model.head.weight.any()
    biases = [m.bias for b in model.blocks for m in b.modules() if isinstance(m, nn.Linear)]
    assert biases and not any(bias.any() for bias in biases)


def test_dropout_only_ends_the_residual_branches() -> None:
    """§5.4: no dropout inside the attention or the feed-forward network, only on a(H) and b(H)."""
    model = tiny()
    active = [name for name, m in model.named_modules() if isinstance(m, nn.Dropout) and m.p > 0]
    assert sorted(active) == sorted(f"blocks.{i}.{n}" for i in range(4) for n in ("mixer_drop", "mlp.drop2"))
    assert all(m.p == 0.25 for name, m in model.named_modules() if name in active)


def test_data_embedding_sums_row_column_and_channel() -> None:
    """§5.3, Eq. 15: position t of a (3, 4, 3) raster has row t // 12, column (t // 3) mod 4, channel t mod 3."""
    torch.manual_seed(0)
    embedding = DataPositionEmbedding((3, 4, 3), 8)
    rows, columns, channels = (table.weight for table in embedding.tables)
    t = torch.arange(36)
    expected = rows[t // 12] + columns[(t // 3) % 4] + channels[t % 3]
    torch.testing.assert_close(embedding(t), expected)
    assert count_parameters(embedding) == (3 + 4 + 3) * 8


def test_data_shape_must_cover_the_sequence() -> None:
    mixer = lambda dim: StridedSparseAttention(dim, heads=2, stride=6)  # noqa: E731
    with pytest.raises(ValueError, match="data_shape"):
        SparseTransformerDecoder(mixer=mixer, vocab_size=16, seq_len=35, depth=1, dim=8, data_shape=(3, 4, 3))


def test_trains_and_stays_causal() -> None:
    model = tiny().train()
    x = torch.randint(16, (2, 36))
    logits = model(x)
    assert logits.shape == (2, 36, 16)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    changed = x.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 16
    with torch.no_grad():
        torch.testing.assert_close(model(changed)[:, :20], model(x)[:, :20], rtol=0, atol=1e-6)
