"""Ear-to-ear attention: efficient patterns equal the naive reference where both apply."""
from __future__ import annotations

import pytest
import torch

from models.attention import (CrossAttention, EarCrossAttention, attend, head_count,
                              naive_attention, sinusoidal_position_2d)

BATCH, FREQS, TIMES, HEADS, HEAD_DIM = 2, 4, 6, 2, 8


def random_tokens(seed: int) -> torch.Tensor:
    """(B, F, T, heads, d) per-head tokens."""
    return torch.randn(BATCH, FREQS, TIMES, HEADS, HEAD_DIM, generator=torch.Generator().manual_seed(seed))


def random_block(mode: str, channels: int = 16) -> EarCrossAttention:
    """A block with a non-zero output projection, so attention actually changes the output."""
    torch.manual_seed(0)
    block = EarCrossAttention(channels, num_heads=2, mode=mode)
    torch.nn.init.normal_(block.out_proj.weight)
    return block


def test_global_pattern_equals_naive_attention() -> None:
    q, k, v = random_tokens(0), random_tokens(1), random_tokens(2)
    torch.testing.assert_close(attend(q, k, v, "global"), attend(q, k, v, "naive"))


def test_time_pattern_equals_naive_attention_restricted_to_each_frequency_row() -> None:
    q, k, v = random_tokens(0), random_tokens(1), random_tokens(2)

    def flat(x: torch.Tensor) -> torch.Tensor:  # (B, F, T, h, d) → (B, h, F·T, d), row-major
        return x.reshape(BATCH, FREQS * TIMES, HEADS, HEAD_DIM).transpose(1, 2)

    row = torch.arange(FREQS * TIMES) // TIMES
    same_row = row[:, None] == row[None, :]
    expected = naive_attention(flat(q), flat(k), flat(v), mask=same_row)
    torch.testing.assert_close(flat(attend(q, k, v, "time")), expected)


def test_block_in_global_mode_equals_naive_mode() -> None:
    query, context = torch.randn(2, 2, 16, 4, 8).unbind(0)
    efficient, naive = random_block("global"), random_block("naive")
    naive.load_state_dict(efficient.state_dict())  # strict: the mode changes no parameter
    torch.testing.assert_close(efficient(query, context), naive(query, context))


def test_time_mode_keeps_frequency_bands_apart() -> None:
    query, context = torch.randn(2, 2, 16, 4, 8).unbind(0)
    changed_context = context.clone()
    changed_context[:, :, 1, :] += 1.0  # dims: (B, C, F, T); only frequency row 1 changes
    for mode, rows_expected_equal in (("time", [0, 2, 3]), ("global", [])):
        block = random_block(mode)
        changed = (block(query, context) - block(query, changed_context)).abs().amax(dim=(0, 1, 3)) > 0
        assert [f for f in range(4) if not changed[f]] == rows_expected_equal, mode


def test_new_block_is_the_identity() -> None:
    query, context = torch.randn(2, 2, 16, 4, 8).unbind(0)
    assert torch.equal(EarCrossAttention(16, num_heads=2)(query, context), query)


@pytest.mark.parametrize("grid, limit, expected", [
    ((16, 16), 256, "global"), ((16, 32), 256, "time"), ((8, 8), 32, "time"),
])
def test_auto_mode_picks_global_up_to_the_token_limit(grid: tuple, limit: int, expected: str) -> None:
    assert EarCrossAttention(16, mode="auto", global_token_limit=limit).pattern_for(*grid) == expected


@pytest.mark.parametrize("kwargs", [dict(channels=16, mode="windowed"), dict(channels=18),
                                    dict(channels=16, num_heads=3)])
def test_bad_block_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        EarCrossAttention(**kwargs)


def test_position_code_shape_range_and_axes() -> None:
    code = sinusoidal_position_2d(3, 5, 8, torch.device("cpu"), torch.float32)
    assert code.shape == (3, 5, 8) and code.abs().max() <= 1.0
    # First half of the channels varies only along frequency, second half only along time.
    assert torch.equal(code[:, :1, :4].expand(3, 5, 4), code[..., :4])
    assert torch.equal(code[:1, :, 4:].expand(3, 5, 4), code[..., 4:])


def test_cross_attention_equals_the_naive_formula() -> None:
    torch.manual_seed(0)
    block = CrossAttention(query_channels=6, memory_channels=12, channels=8, num_heads=2)
    query, memory = torch.randn(2, 5, 6), torch.randn(2, 7, 12)
    memory_position, query_position = torch.randn(7, 12), torch.randn(5, 8)
    normed = torch.nn.functional.layer_norm(memory, (12,))  # the block's LayerNorm starts as this

    def heads(x: torch.Tensor) -> torch.Tensor:  # (B, L, 8) → (B, 2, L, 4)
        return x.reshape(2, -1, 2, 4).transpose(1, 2)

    q = heads(block.to_q(query) + query_position)
    k = heads(block.to_k(normed + memory_position))
    v = heads(block.to_v(normed))
    expected = block.out_proj(naive_attention(q, k, v).transpose(1, 2).reshape(2, 5, 8))
    torch.testing.assert_close(block(query, memory, memory_position, query_position), expected)


def test_cross_attention_ignores_the_order_of_memory_tokens() -> None:
    torch.manual_seed(0)
    block = CrossAttention(8, 8, 8, num_heads=2)
    query, memory, position = torch.randn(1, 3, 8), torch.randn(1, 6, 8), torch.randn(6, 8)
    order = torch.tensor([3, 0, 5, 1, 4, 2])  # tokens travel with their positions
    torch.testing.assert_close(block(query, memory, position),
                               block(query, memory[:, order], position[order]))


@pytest.mark.parametrize("channels, expected", [(64, 4), (32, 2), (16, 1), (8, 1), (48, 3), (56, 2)])
def test_head_count_keeps_heads_of_at_least_16_channels(channels: int, expected: int) -> None:
    assert head_count(channels, num_heads=4) == expected
