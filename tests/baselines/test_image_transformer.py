"""LocalAttention2d: the effective 2d block-local pattern, padding and the CIFAR-10 default."""

from __future__ import annotations

import pytest
import torch

from aft.baselines import LocalAttention2d
from tests.baselines.helpers import dependency_matrix

# A 4×4 RGB image: 4 rows of 12 sub-pixels, query blocks of 2 rows × 4 sub-pixels,
# memory extends 1 row up and 2 sub-pixels left and right: 3 × 8 = 24 positions.
HEIGHT, WIDTH, QUERY, FLANGE = 4, 12, (2, 4), (1, 2)


def expected_pattern(causal: bool) -> torch.Tensor:
    """Which inputs each output may depend on, from the Image Transformer's geometry directly."""
    size = HEIGHT * WIDTH
    allowed = torch.zeros(size, size, dtype=torch.bool)
    for i in range(size):
        row, col = divmod(i, WIDTH)
        top = row // QUERY[0] * QUERY[0] - FLANGE[0]
        left = col // QUERY[1] * QUERY[1] - FLANGE[1]
        for j in range(size):
            key_row, key_col = divmod(j, WIDTH)
            inside = top <= key_row < top + QUERY[0] + FLANGE[0] and left <= key_col < left + QUERY[1] + 2 * FLANGE[1]
            allowed[i, j] = inside and (j <= i or not causal)
    return allowed


def build(causal: bool) -> LocalAttention2d:
    torch.manual_seed(0)
    return LocalAttention2d(
        8, heads=2, causal=causal, height=HEIGHT, width_channels=WIDTH, query_shape=QUERY, memory_flange=FLANGE
    ).double()


@pytest.mark.parametrize("causal", [True, False])
def test_effective_pattern_is_the_local_2d_memory_block(causal: bool) -> None:
    mixer = build(causal)
    depends = dependency_matrix(mixer, torch.randn(1, HEIGHT * WIDTH, 8, dtype=torch.float64))
    assert torch.equal(depends, expected_pattern(causal))
    assert depends.sum(1).max() <= mixer.memory_size == 24
    if causal:
        assert not depends.triu(1).any()


def test_short_sequence_is_a_prefix_of_the_full_one() -> None:
    mixer = build(causal=True)
    x = torch.randn(2, HEIGHT * WIDTH, 8, dtype=torch.float64)
    torch.testing.assert_close(mixer(x[:, :30]), mixer(x)[:, :30])


@pytest.mark.parametrize(("causal", "length"), [(True, HEIGHT * WIDTH), (False, HEIGHT * WIDTH), (False, 30)])
def test_equals_dense_attention_under_the_local_2d_mask(causal: bool, length: int) -> None:
    """Same output as full softmax attention masked to the memory blocks (padding excluded)."""
    mixer = build(causal)
    x = torch.randn(2, length, 8, dtype=torch.float64)
    q, k, v = (z.view(2, length, 2, 4).transpose(1, 2) for z in mixer.qkv(x).chunk(3, dim=-1))
    allowed = expected_pattern(causal)[:length, :length]
    scores = (q @ k.transpose(-2, -1) / 2.0).masked_fill(~allowed, -torch.inf)
    expected = mixer.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, length, 8))
    torch.testing.assert_close(mixer(x), expected)


def test_cifar10_default_geometry() -> None:
    mixer = LocalAttention2d(8, heads=2)
    assert (mixer.seq_len, mixer.memory_size) == (3072, 256)
    x = torch.randn(1, 3072, 8)
    assert mixer(x).shape == x.shape


def test_rejects_query_blocks_that_do_not_tile_the_grid() -> None:
    with pytest.raises(ValueError):
        LocalAttention2d(8, heads=2, height=4, width_channels=12, query_shape=(3, 4))
