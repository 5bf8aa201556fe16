"""Cross-attention between the two ears' feature maps, and the naive reference it is checked against.

Layout convention: a spectrogram feature map is ``(B, C, F, T)``: dim -2 is **frequency**, dim -1
is **time** (the layout of ``torch.stft`` and of the dataset's ``audio`` tensor).

Why attention along time, per frequency band
    What the two ears disagree on is *when* (interaural time difference) and *how loud*
    (interaural level difference) each echo arrives, frequency band by frequency band; the
    reflections that make up depth are shifts along the time axis. So at a large level each
    frequency row of one ear attends to the same row of the other ear: ``F`` independent
    sequences of ``T`` tokens. Memory and compute grow as ``F·T²`` instead of ``(F·T)²``:
    at the 128×128 level of a 256² input that is 128× smaller (8 MiB instead of 1 GiB of float32
    scores per head and sample, were they materialised), and no row attends to another band,
    which the physics does not ask for anyway (cross-band context comes from the convolutions
    and from the global attention at the small levels).

Why global attention at the small levels
    When a level has few tokens, global attention is cheap and lets every time-frequency cell
    see the whole other ear. ``mode="auto"`` uses it when ``F·T <= global_token_limit``
    (default 256, e.g. the 16×16 level of a 256² input), and time attention above.

Position
    Attention alone is blind to where a key sits, so it could not prefer "the same echo a little
    later in the other ear" over an unrelated echo of similar shape. A fixed 2-D sinusoidal
    encoding (half the channels for frequency, half for time) is added to queries and keys,
    not values, so the content carried across is unchanged.

Both patterns run through :func:`torch.nn.functional.scaled_dot_product_attention`, multi-head,
which never materialises the score matrix on the fused CPU/GPU kernels. So does
:class:`CrossAttention`, the token-to-memory attention of the student's image-query decoder
(:mod:`models.query_decoder`). ``mode="naive"`` is the
plain ``softmax(Q Kᵀ / √d) V`` over all ``F·T`` tokens with explicit matrix products: a reference
for tests and the cost benchmark only, never for training.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_MODES: Tuple[str, ...] = ("auto", "global", "time", "naive")
DEFAULT_GLOBAL_TOKEN_LIMIT = 256


def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Reference attention with explicit matrix products: ``softmax(Q Kᵀ / √d) V``.

    Materialises the full (L, S) score matrix per batch element and head.

    Args:
        q: (N, heads, L, d) queries.
        k, v: (N, heads, S, d) keys and values.
        mask: optional bool (L, S); False entries are excluded from the softmax.

    Returns:
        (N, heads, L, d).
    """
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: str) -> torch.Tensor:
    """Multi-head attention of per-head tokens laid out on the (frequency, time) grid.

    Args:
        q, k, v: (B, F, T, heads, d), token (f, t) of the query map / context map.
        pattern: ``"time"`` (each frequency row attends to the same row only), ``"global"``
            (every token attends to all F·T tokens) or ``"naive"`` (global, explicit products).

    Returns:
        (B, F, T, heads, d) attended values.
    """
    batch, freqs, times, heads, dim = q.shape
    if pattern == "time":
        def to_sequences(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch * freqs, times, heads, dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(to_sequences(q), to_sequences(k), to_sequences(v))
    elif pattern in ("global", "naive"):
        def to_sequences(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, freqs * times, heads, dim).transpose(1, 2)
        attention = naive_attention if pattern == "naive" else F.scaled_dot_product_attention
        out = attention(to_sequences(q), to_sequences(k), to_sequences(v))
    else:
        raise ValueError(f"attention pattern must be 'time', 'global' or 'naive', got {pattern!r}")
    return out.transpose(1, 2).reshape(batch, freqs, times, heads, dim)


def sinusoidal_position_2d(
    freqs: int, times: int, channels: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Fixed 2-D sinusoidal position code: channels [0, C/2) encode frequency, [C/2, C) time.

    Args:
        freqs, times: grid size (F, T).
        channels: C, divisible by 4 (a sine and a cosine per axis).

    Returns:
        (F, T, C) tensor with values in [-1, 1].
    """
    quarter = channels // 4
    rates = torch.exp(torch.arange(quarter, device=device) * (-math.log(10_000.0) / quarter))

    def encode(length: int) -> torch.Tensor:
        angles = torch.arange(length, device=device)[:, None] * rates[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (length, C/2)

    freq_code = encode(freqs)[:, None, :].expand(freqs, times, 2 * quarter)
    time_code = encode(times)[None, :, :].expand(freqs, times, 2 * quarter)
    return torch.cat([freq_code, time_code], dim=-1).to(dtype)


class EarCrossAttention(nn.Module):
    """One direction of ear-to-ear attention: the query ear reads from the context ear.

    ``out = query + W_o · attention(W_q(LN(query) + pos), W_k(LN(context) + pos), W_v LN(context))``.
    ``W_o`` starts at zero, so the block starts as the identity and the encoders train as if
    independent until the attention learns something useful.

    Args:
        channels: C of both feature maps; divisible by 4 and by ``num_heads``.
        num_heads: attention heads.
        mode: ``"auto"`` (global when F·T <= ``global_token_limit``, else time), ``"global"``,
            ``"time"`` or ``"naive"`` (see the module docstring).
        global_token_limit: the token count up to which ``"auto"`` attends globally.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 4,
        mode: str = "auto",
        global_token_limit: int = DEFAULT_GLOBAL_TOKEN_LIMIT,
    ) -> None:
        super().__init__()
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
        if channels % num_heads or channels % 4:
            raise ValueError(
                f"attention channels ({channels}) must be divisible by 4 and by num_heads ({num_heads})"
            )
        self.num_heads = num_heads
        self.mode = mode
        self.global_token_limit = global_token_limit
        self.query_norm = nn.LayerNorm(channels)
        self.context_norm = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.out_proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def pattern_for(self, freqs: int, times: int) -> str:
        """The attention pattern this block uses on an (F, T) grid: "time", "global" or "naive"."""
        if self.mode != "auto":
            return self.mode
        return "global" if freqs * times <= self.global_token_limit else "time"

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Query-ear map (B, C, F, T) and context-ear map (B, C, F, T) → updated query (B, C, F, T)."""
        _, channels, freqs, times = query.shape
        # Channels-last tokens: LayerNorm and Linear act on the last dim, no copies needed.
        query_tokens = self.query_norm(query.permute(0, 2, 3, 1))
        context_tokens = self.context_norm(context.permute(0, 2, 3, 1))
        position = sinusoidal_position_2d(freqs, times, channels, query.device, query_tokens.dtype)
        heads = (self.num_heads, channels // self.num_heads)
        q = self.to_q(query_tokens + position).unflatten(-1, heads)
        k = self.to_k(context_tokens + position).unflatten(-1, heads)
        v = self.to_v(context_tokens).unflatten(-1, heads)
        attended = attend(q, k, v, self.pattern_for(freqs, times)).flatten(-2)
        return query + self.out_proj(attended).permute(0, 3, 1, 2)


def head_count(channels: int, num_heads: int, min_head_channels: int = 16) -> int:
    """The most heads, at most ``num_heads``, that split ``channels`` evenly into heads of at least
    ``min_head_channels`` channels (1 when ``channels`` is smaller): narrow maps get fewer, wider
    heads rather than heads of 2 or 4 channels.
    """
    heads = max(1, min(num_heads, channels // min_head_channels))
    while channels % heads:
        heads -= 1
    return heads


class CrossAttention(nn.Module):
    """Multi-head attention of query tokens to memory tokens (no residual, no query norm).

    ``out = W_o · attention(W_q query + query_position, W_k(LN(memory) + memory_position),
    W_v LN(memory))``. Positions enter queries and keys, not values, as in
    :class:`EarCrossAttention`. The query is taken as given: pre-norm blocks normalise it.

    Args:
        query_channels: channels of the query tokens.
        memory_channels: channels of the memory tokens (and of ``memory_position``).
        channels: attention width and output channels.
        num_heads: heads; must divide ``channels``.
    """

    def __init__(self, query_channels: int, memory_channels: int, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.memory_norm = nn.LayerNorm(memory_channels)
        self.to_q = nn.Linear(query_channels, channels)
        self.to_k = nn.Linear(memory_channels, channels)
        self.to_v = nn.Linear(memory_channels, channels)
        self.out_proj = nn.Linear(channels, channels)

    def forward(
        self,
        query: torch.Tensor,
        memory: torch.Tensor,
        memory_position: torch.Tensor,
        query_position: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Attend.

        Args:
            query: (B, N, query_channels) tokens.
            memory: (B, M, memory_channels) tokens.
            memory_position: (M, memory_channels) added to the normalised memory for the keys.
            query_position: optional (N, channels) added to the projected queries.

        Returns:
            (B, N, channels).
        """
        memory = self.memory_norm(memory)
        q = self.to_q(query)
        if query_position is not None:
            q = q + query_position
        k = self.to_k(memory + memory_position)
        v = self.to_v(memory)

        def split(x: torch.Tensor) -> torch.Tensor:  # (B, L, C) → (B, heads, L, C / heads)
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        attended = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return self.out_proj(attended.transpose(1, 2).flatten(-2))
