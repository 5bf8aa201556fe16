"""The student's image-query decoder: queries laid out on the image grid read the binaural tokens.

Why
    The U-Net decoder concatenates the encoder's x4..x1 to its maps at the same (i, j). For the
    binaural student those are frequency × time cells, so spectrogram-grid features flow straight
    into the depth map's pixels, and its d1..d4 are not purely image-grid features (which feature
    distillation compares with the teacher's pixel by pixel). Here each position of the depth map
    asks for what it needs instead: queries on the image grid attend to the binaural tokens, as
    Perceiver IO decodes dense outputs from a latent array.

Data flow, for an (H, W) input; (h, w) = (H/16, W/16) is the x5 grid, D the width of x5::

    memory_l = PatchEmbed_l(x_l)          l = 1..5: x_l cut into 2^(5-l)-pixel square patches,
                                          each flattened and mapped to one D-channel token:
                                          h·w tokens per level
    q  = Linear(pos(h, w))                one query per x5 cell of the image
    q += CrossAttn(LN q → memory_1..5)    keys: + pos + a learned level embedding
    q += MLP(LN q)                        these two lines QUERY_BLOCKS times; i5 = LN q
    for d_k, k = 1..4, with level l = 5 - k and d_0 = i5:
        r_l    = CrossAttn(LN(d_{k-1}) + pos'_l → memory_l)     image grid of d_{k-1}
        skip_l = upsample(r_l) + pos_l    image grid of level l, x_l's shape
        d_k    = Up_k(d_{k-1}, skip_l)    the teacher's Up blocks (:class:`models.blocks.UNetDecoder`)

``pos`` is the fixed 2-D sinusoidal code of :func:`models.attention.sinusoidal_position_2d`;
``pos'_l`` and ``pos_l`` are learned linear maps of it on the query grid and on level l's grid
(the same for every sample, so computed once per batch). Patch embedding (a learned linear map
of the whole patch) rather than average pooling keeps where inside its patch a feature sits, e.g.
when an echo arrives. Each skip's queries come from the decoder's current map, so what a level
reads depends on what the coarser levels decoded; the skip also carries the level's position
code, the image-grid stand-in for the spatial layout a U-Net skip brings.

Cost: each readout attends to the h·w tokens of its own level only, from the decoder map's grid
(half the level's side) but never finer than H/4 × W/4 (:data:`FINEST_QUERY_STRIDE`; d3 is
average-pooled 2x before it queries for d4's skip). At 128² that is at most 32² queries × 64
keys per level.
"""
from __future__ import annotations

from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import CrossAttention, head_count, sinusoidal_position_2d
from models.blocks import DECODER_KEYS, ENCODER_KEYS, UNetDecoder, encoder_channels

QUERY_BLOCKS = 2  # cross-attention + MLP blocks of the x5 queries
# Readouts query from grids no finer than H/4 × W/4: d4's skip (stride 1) reads from its
# stride-2 decoder map pooled 2x, at a quarter of the cost of reading from the map itself.
FINEST_QUERY_STRIDE = 4
MLP_RATIO = 4
# Learned embeddings start small beside the O(1) position code, as ViT's position embedding.
EMBEDDING_INIT_STD = 0.02


def grid_code(height: int, width: int, channels: int, like: torch.Tensor) -> torch.Tensor:
    """Sinusoidal position code of an (height, width) grid as (height·width, channels) tokens,
    on ``like``'s device and dtype."""
    return sinusoidal_position_2d(height, width, channels, like.device, like.dtype).flatten(0, 1)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) map → (B, h·w, C) tokens, row-major."""
    return x.flatten(2).transpose(1, 2)


def to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, h·w, C) row-major tokens → (B, C, h, w) map."""
    return tokens.transpose(1, 2).unflatten(-1, (height, width))


class QueryBlock(nn.Module):
    """Pre-norm transformer block of queries reading a memory: cross-attention, then an MLP.

    Args:
        channels: width of queries and memory.
        num_heads: attention heads (must divide ``channels``).
    """

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(channels)
        self.attention = CrossAttention(channels, channels, channels, num_heads)
        self.mlp_norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, MLP_RATIO * channels),
            nn.GELU(),
            nn.Linear(MLP_RATIO * channels, channels),
        )

    def forward(self, queries: torch.Tensor, memory: torch.Tensor,
                memory_position: torch.Tensor) -> torch.Tensor:
        """Queries (B, N, C), memory (B, M, C), memory position (M, C) → queries (B, N, C)."""
        queries = queries + self.attention(self.attention_norm(queries), memory, memory_position)
        return queries + self.mlp(self.mlp_norm(queries))


class LevelReadout(nn.Module):
    """The image-grid skip of one decoder level: the decoder map reads one memory level.

    Each cell of the decoder map (B, in, h, w), average-pooled by ``query_pool``, queries the
    memory; the read is upsampled to the level's (2h, 2w) grid and the level's position embedding
    added. Reading on a coarse grid costs a fraction of reading on the level's own (at 128², the
    finest read would otherwise be the decoder's most expensive step), and the Up block's
    convolutions refine it anyway.

    Args:
        in_channels: channels of the decoder map before this level's upsampling.
        channels: channels of the skip (the teacher's encoder width at this level).
        memory_channels: D, the width of the memory tokens and of the position code.
        num_heads: upper bound on the heads (see :func:`models.attention.head_count`).
        query_pool: the decoder map is average-pooled by this factor before it queries.
    """

    def __init__(self, in_channels: int, channels: int, memory_channels: int, num_heads: int,
                 query_pool: int = 1) -> None:
        super().__init__()
        self.memory_channels = memory_channels
        self.query_pool = query_pool
        self.query_norm = nn.LayerNorm(in_channels)
        self.query_position = nn.Linear(memory_channels, channels)
        self.skip_position = nn.Linear(memory_channels, channels)
        self.attention = CrossAttention(in_channels, memory_channels, channels,
                                        head_count(channels, num_heads))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_position: torch.Tensor) -> torch.Tensor:
        """Decoder map (B, in, h, w), memory (B, M, D), its position (M, D) → skip (B, C, 2h, 2w)."""
        height, width = x.shape[-2:]
        queries = F.avg_pool2d(x, self.query_pool) if self.query_pool > 1 else x
        query_height, query_width = queries.shape[-2:]
        query_position = self.query_position(
            grid_code(query_height, query_width, self.memory_channels, x))
        read = self.attention(self.query_norm(to_tokens(queries)), memory, memory_position,
                              query_position=query_position)
        read = F.interpolate(to_map(read, query_height, query_width), size=(2 * height, 2 * width),
                             mode="bilinear", align_corners=True)
        skip_position = self.skip_position(grid_code(2 * height, 2 * width, self.memory_channels, x))
        return read + to_map(skip_position[None], 2 * height, 2 * width)


class ImageQueryDecoder(nn.Module):
    """Fused encoder levels x1..x5 (spectrogram grid) → d1..d4 on the image grid (module docstring).

    ``d1..d4`` have the teacher's shapes (:class:`models.blocks.UNetDecoder`'s), so the
    :class:`models.blocks.DepthHead` and feature distillation work unchanged.

    Args:
        base_channels: width of the first level, as for the teacher.
        bilinear: bilinear upsampling in the Up blocks, as for the teacher.
        num_heads: upper bound on the attention heads of each block (at least 16 channels per
            head, see :func:`models.attention.head_count`).
    """

    def __init__(self, base_channels: int = 64, bilinear: bool = True, num_heads: int = 4) -> None:
        super().__init__()
        widths = encoder_channels(base_channels, bilinear)
        self.memory_channels = width = widths[-1]
        self.patches = [2 ** (len(widths) - 1 - level) for level in range(len(widths))]  # 16 .. 1
        # Patch embedding as pixel_unshuffle + Linear: the same map as a convolution with
        # kernel = stride = patch, as a plain matrix product, which a CPU runs in about half the
        # time for x1's 16×16 patches (the convolution's backward is the slow part).
        self.patch_embeds = nn.ModuleList(
            [nn.Linear(channels * patch ** 2, width) for channels, patch in zip(widths, self.patches)]
        )
        self.level_embedding = nn.Parameter(torch.randn(len(widths), width) * EMBEDDING_INIT_STD)
        self.query_embedding = nn.Linear(width, width)
        self.blocks = nn.ModuleList(
            [QueryBlock(width, head_count(width, num_heads)) for _ in range(QUERY_BLOCKS)]
        )
        self.query_norm = nn.LayerNorm(width)
        unet = UNetDecoder(base_channels, bilinear)
        self.ups = unet.ups  # the teacher's Up blocks: same widths, so d1..d4 match its shapes
        decoder_inputs = (width,) + unet.channels[:-1]
        skip_widths = widths[-2::-1]  # x4, x3, x2, x1
        decoder_strides = (16, 8, 4, 2)  # of the maps the readouts of d1..d4 query from
        self.readouts = nn.ModuleList(
            [LevelReadout(in_channels, channels, width, num_heads,
                          query_pool=max(1, FINEST_QUERY_STRIDE // stride))
             for in_channels, channels, stride in zip(decoder_inputs, skip_widths, decoder_strides)]
        )

    def forward(self, encoded: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Encoder dict x1..x5 (spectrogram grid) → dict d1..d4 (image grid, the teacher's shapes)."""
        height, width = encoded["x5"].shape[-2:]
        memory: List[torch.Tensor] = [
            embed(to_tokens(F.pixel_unshuffle(encoded[key], patch)))
            for key, patch, embed in zip(ENCODER_KEYS, self.patches, self.patch_embeds)
        ]
        position = grid_code(height, width, self.memory_channels, memory[0])
        all_memory = torch.cat(memory, dim=1)
        all_position = (position[None] + self.level_embedding[:, None]).flatten(0, 1)
        queries = self.query_embedding(position).expand(all_memory.shape[0], -1, -1)
        for block in self.blocks:
            queries = block(queries, all_memory, all_position)
        x = to_map(self.query_norm(queries), height, width)
        decoded = {}
        # d1 reads x4's tokens, ..., d4 reads x1's, as the U-Net's skips pair them.
        for key, level_memory, up, readout in zip(DECODER_KEYS, memory[-2::-1], self.ups, self.readouts):
            x = up(x, readout(x, level_memory, position))
            decoded[key] = x
        return decoded
