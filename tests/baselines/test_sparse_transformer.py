"""StridedSparseAttention: each head's connectivity equals Child et al.'s A⁽¹⁾ / A⁽²⁾."""

from __future__ import annotations

import pytest
import torch

from aft.baselines import StridedSparseAttention
from tests.baselines.helpers import dependency_matrix

T, STRIDE, DIM = 11, 3, 8  # T is not a multiple of the stride: exercises the padding


def strided_patterns(causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A⁽¹⁾ (previous `stride` positions) and A⁽²⁾ (every stride-th position), Child et al. §4.2."""
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    visible = j <= i if causal else torch.ones(T, T, dtype=torch.bool)
    local = visible & ((i - j).abs() <= STRIDE)
    strided = visible & ((i - j) % STRIDE == 0)
    return local, strided


def single_head(causal: bool, keep: int) -> StridedSparseAttention:
    """A 2-head mixer whose output projection only reads head ``keep``."""
    torch.manual_seed(0)
    mixer = StridedSparseAttention(DIM, heads=2, causal=causal, stride=STRIDE).double()
    with torch.no_grad():
        head_width = DIM // 2
        mixer.proj.weight[:, (1 - keep) * head_width : (2 - keep) * head_width] = 0.0
    return mixer


@pytest.mark.parametrize("causal", [True, False])
def test_each_head_has_its_strided_pattern(causal: bool) -> None:
    x = torch.randn(1, T, DIM, dtype=torch.float64)
    for head, pattern in enumerate(strided_patterns(causal)):
        assert torch.equal(dependency_matrix(single_head(causal, head), x), pattern), f"head {head}"


@pytest.mark.parametrize("qk_ratio", [1.0, 0.5])
@pytest.mark.parametrize("causal", [True, False])
def test_equals_dense_attention_under_the_strided_masks(causal: bool, qk_ratio: float) -> None:
    """Four heads: the first half use A⁽¹⁾, the second half A⁽²⁾; queries and keys of width
    ``DIM * qk_ratio`` (Child et al. §6 "halve the size of the query and key transformations")."""
    torch.manual_seed(0)
    heads, qk_width = 4, int(DIM * qk_ratio)
    mixer = StridedSparseAttention(DIM, heads=heads, causal=causal, stride=STRIDE, qk_ratio=qk_ratio).double()
    x = torch.randn(2, T, DIM, dtype=torch.float64)
    q, k, v = (z.view(2, T, heads, -1).transpose(1, 2) for z in mixer.qkv(x).split([qk_width, qk_width, DIM], dim=-1))
    local, strided = strided_patterns(causal)
    allowed = torch.stack([local, local, strided, strided])
    scores = (q @ k.transpose(-2, -1) / (qk_width // heads) ** 0.5).masked_fill(~allowed, -torch.inf)
    expected = mixer.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, T, DIM))
    torch.testing.assert_close(mixer(x), expected)


def test_rejects_odd_head_count() -> None:
    with pytest.raises(ValueError):
        StridedSparseAttention(DIM, heads=1)


def test_rejects_a_query_key_width_the_heads_do_not_divide() -> None:
    with pytest.raises(ValueError, match="qk_ratio"):
        StridedSparseAttention(DIM, heads=2, qk_ratio=0.125)  # width 1
