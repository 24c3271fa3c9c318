"""LSHAttention: agreement with a dense definition, hashing randomness and locality."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aft.baselines import LSHAttention
from tests.baselines.helpers import dependency_matrix


def build(**kwargs: object) -> LSHAttention:
    torch.manual_seed(0)
    config = {"heads": 2, "n_buckets": 4, "chunk_size": 4, "n_hashes": 2} | kwargs
    return LSHAttention(16, **config)


def test_eval_mode_is_deterministic() -> None:
    mixer = build().eval()
    x = torch.randn(2, 20, 16)
    assert torch.equal(mixer(x), mixer(x))
    twin = build().eval()
    assert torch.equal(twin(x), mixer(x))


def test_train_mode_redraws_hashes_each_call() -> None:
    mixer = build().train()
    x = torch.randn(2, 20, 16)
    assert not torch.allclose(mixer(x), mixer(x))


def test_hash_seed_selects_the_eval_hashes() -> None:
    x = torch.randn(2, 20, 16)
    assert not torch.allclose(build(hash_seed=0).eval()(x), build(hash_seed=1).eval()(x))


def dense_lsh_reference(mixer: LSHAttention, x: torch.Tensor) -> torch.Tensor:
    """LSH attention written densely from its definition, with the mixer's own hash buckets.

    Round r: query i attends to keys j of its bucket whose rank among that bucket's tokens (in
    position order) is within C of i's (and j ≤ i when causal); its own key only as a last
    resort (logit −1e5). Rounds are combined with weights softmax_r(logsumexp_r).
    """
    b, t, d = x.shape
    heads, c = mixer.heads, mixer.chunk_size
    q = mixer.qk(x).view(b, t, heads, d // heads).transpose(1, 2)
    v = mixer.value(x).view(b, t, heads, d // heads).transpose(1, 2)
    buckets = mixer.buckets(q)  # (B, H, R, T)
    one_hot = F.one_hot(buckets, mixer.n_buckets)
    rank = (one_hot.cumsum(3) * one_hot).sum(-1)  # 1-based rank within the bucket
    same = buckets[..., :, None] == buckets[..., None, :]
    allowed = same & ((rank[..., :, None] - rank[..., None, :]).abs() <= c)
    if mixer.causal:
        allowed = allowed & torch.ones(t, t, dtype=torch.bool).tril()
    eye = torch.eye(t, dtype=torch.bool)
    logits = (q @ F.normalize(q, dim=-1).transpose(-2, -1) * (d // heads) ** -0.5)[:, :, None]
    logits = logits.masked_fill(eye, -1e5).masked_fill(~(allowed | eye), -torch.inf)
    log_norm = logits.logsumexp(-1, keepdim=True)  # (B, H, R, T, 1)
    rounds = (logits - log_norm).exp() @ v[:, :, None]
    out = (rounds * log_norm.softmax(dim=2)).sum(2)
    return mixer.proj(out.transpose(1, 2).reshape(b, t, d))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(("n_hashes", "chunk_size"), [(1, 4), (3, 4), (2, 5), (2, 32)])
def test_equals_dense_reference(causal: bool, n_hashes: int, chunk_size: int) -> None:
    mixer = build(causal=causal, n_hashes=n_hashes, chunk_size=chunk_size).double().eval()
    x = torch.randn(2, 21, 16, dtype=torch.float64)
    torch.testing.assert_close(mixer(x), dense_lsh_reference(mixer, x))


@pytest.mark.parametrize("n_hashes", [1, 2])
def test_each_query_sees_at_most_chunk_size_keys_per_round(n_hashes: int) -> None:
    chunk = 4
    mixer = build(n_hashes=n_hashes, chunk_size=chunk, heads=1).double().eval()
    depends = dependency_matrix(mixer, torch.randn(1, 24, 16, dtype=torch.float64))
    # Per round: the query itself and at most C earlier keys of its bucket.
    assert depends.sum(1).max() <= n_hashes * chunk + 1
