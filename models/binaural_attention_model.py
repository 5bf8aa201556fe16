"""The binaural student: two ear encoders, ear-to-ear cross-attention, the teacher's decoder.

Input ``(B, 2, F, T)``: channel 0 is the left ear, channel 1 the right ear; dim -2 is frequency,
dim -1 is time (see :mod:`models.attention`). With ``input_features="ild"`` each ear's encoder
also sees the interaural level difference, its own channel minus the other's (below). Data flow,
for each level l = 1..5::

    left_l  = left_stage_l(left_{l-1})          right_l = right_stage_l(right_{l-1})
    if l in attention_levels (both read the other ear's map from before this exchange):
        left_l, right_l = left_l + Attn(left_l ← right_l), right_l + Attn(right_l ← left_l)
    x_l = ReLU(BN(1x1 conv(concat(left_l, right_l))))     # the teacher's width at level l

The attended maps feed the next stage of each encoder, so deeper levels are computed from
binaural features. The encoders have the teacher's encoder widths and the fusion maps each level
back to the teacher's width, through BN + ReLU like the teacher's own ``x1..x5``; the fused
``x1..x5`` therefore have exactly the teacher's shapes, and the decoder and head are the
teacher's classes (:class:`models.blocks.UNetDecoder`, :class:`models.blocks.DepthHead`), so
``d1..d4`` match too. Every attention block starts as the identity (zero output projection).

Options, each off by default so old configs rebuild the same network:

* ``decoder="query"``: :class:`models.query_decoder.ImageQueryDecoder` instead of the U-Net
  decoder: image-grid queries cross-attend to the binaural tokens, so no spectrogram-grid skip
  reaches the depth map and ``d1..d4`` are image-grid features (same shapes).
* ``input_features="ild"``: encoder inputs ``(left, left − right)`` and ``(right, right − left)``.
  The difference of the input channels is a level ratio for log-magnitude recipes (the default
  recipe's ``log1p``), a plain difference for linear ones. Derived inside the model, so swapping
  the ears (the mirror augmentation) swaps the encoders' inputs, sign of the difference included.
* ``input_features="ild_ipd"``: input ``(B, 4, F, T)``, the ``spectrogram_ipd`` audio mode (two
  magnitudes, then the cosine and sine of the interaural phase difference, see
  :func:`datasets.recipes.phase_difference`); encoder inputs ``(left, left − right, cos, sin)``
  and ``(right, right − left, cos, −sin)``: each ear sees the phase of the other relative to
  itself, so swapping the ears (which negates the sine) again swaps the encoders' inputs.
* ``head_init_depth``: the depth head starts there (:class:`models.blocks.DepthHead`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from models.attention import DEFAULT_GLOBAL_TOKEN_LIMIT, EarCrossAttention
from models.blocks import (
    ENCODER_KEYS, DepthHead, UNetDecoder, UNetEncoder, check_input, encoder_channels,
)
from models.query_decoder import ImageQueryDecoder
from models.rgb_depth_model import DEFAULT_MAX_DEPTH

DEFAULT_ATTENTION_LEVELS: Tuple[int, ...] = (2, 3, 4, 5)
DECODERS: Tuple[str, ...] = ("unet", "query")
INPUT_FEATURES: Tuple[str, ...] = ("magnitude", "ild", "ild_ipd")
# Input channels (B, C, F, T) and each ear encoder's channels, per input_features.
INPUT_CHANNELS = {"magnitude": (2, 1), "ild": (2, 2), "ild_ipd": (4, 4)}


def check_attention_levels(levels: Sequence[int], base_channels: Optional[int] = None,
                           num_heads: Optional[int] = None, bilinear: bool = True) -> List[int]:
    """The attended encoder levels, sorted, after checking them: distinct, in 1..5 and, given
    ``base_channels`` and ``num_heads``, each attended level's width divisible by 4 and by the
    number of heads (what :class:`models.attention.EarCrossAttention` needs).

    Args:
        levels: encoder levels (1..5) with ear-to-ear cross-attention.
        base_channels: the model's first-level width, or ``None`` to skip the width check.
        num_heads: attention heads per level, or ``None`` to skip the width check.
        bilinear: as for :func:`models.blocks.encoder_channels`.

    Raises:
        ValueError: one line saying which level is wrong and why.
    """
    ordered = sorted(int(level) for level in levels)
    if len(set(ordered)) != len(ordered) or any(not 1 <= level <= 5 for level in ordered):
        raise ValueError(f"attention_levels must be distinct levels in 1..5, got {list(levels)}")
    if base_channels is not None and num_heads is not None:
        widths = encoder_channels(base_channels, bilinear)
        for level in ordered:
            width = widths[level - 1]
            if width % num_heads or width % 4:
                raise ValueError(f"attended level {level} has {width} channels, which must "
                                 f"divide by 4 and by the number of heads ({num_heads})")
    return ordered


def _ear_fusion(channels: int) -> nn.Module:
    """Concatenated (left, right) maps, 2C channels → C channels, non-negative like a U-Net level."""
    return nn.Sequential(
        nn.Conv2d(2 * channels, channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    )


class BinauralAttentionModel(nn.Module):
    """(B, 2, F, T) two-ear spectrogram → (B, 1, F, T) depth in metres (see the module docstring).

    Args:
        base_channels: width of the first level, as for the teacher.
        attention_levels: levels (1..5) with ear-to-ear cross-attention.
        bilinear: bilinear upsampling in the decoder, as for the teacher.
        max_depth: upper bound of the predicted depth, metres.
        num_heads: attention heads per level.
        attention_mode: ``"auto"``, ``"global"``, ``"time"`` or ``"naive"``
            (see :class:`models.attention.EarCrossAttention`; ``"naive"`` is for benchmarks only).
        global_token_limit: in ``"auto"`` mode, levels with at most this many F·T tokens attend
            globally, larger ones along time per frequency band.
        decoder: ``"unet"`` (the teacher's decoder, skips from the fused levels) or ``"query"``
            (image-grid queries, :class:`models.query_decoder.ImageQueryDecoder`).
        input_features: ``"magnitude"`` (each encoder sees its ear), ``"ild"`` (its ear and
            the level difference, own minus other) or ``"ild_ipd"`` (those and the phase
            difference; a (B, 4, F, T) input).
        head_init_depth: ``None``, or metres in (0, max_depth) where the depth head starts.

    Raises:
        ValueError: bad attention levels, decoder, input features or head init depth.
    """

    model_name = "binaural_attention"

    def __init__(
        self,
        base_channels: int = 64,
        attention_levels: Sequence[int] = DEFAULT_ATTENTION_LEVELS,
        bilinear: bool = True,
        max_depth: float = DEFAULT_MAX_DEPTH,
        num_heads: int = 4,
        attention_mode: str = "auto",
        global_token_limit: int = DEFAULT_GLOBAL_TOKEN_LIMIT,
        decoder: str = "unet",
        input_features: str = "magnitude",
        head_init_depth: Optional[float] = None,
    ) -> None:
        super().__init__()
        levels = check_attention_levels(attention_levels, base_channels, num_heads, bilinear)
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if input_features not in INPUT_FEATURES:
            raise ValueError(f"input_features must be one of {INPUT_FEATURES}, got {input_features!r}")
        self.config: Dict[str, Any] = dict(
            base_channels=base_channels, attention_levels=levels, bilinear=bilinear,
            max_depth=float(max_depth), num_heads=num_heads, attention_mode=attention_mode,
            global_token_limit=global_token_limit, decoder=decoder, input_features=input_features,
            head_init_depth=None if head_init_depth is None else float(head_init_depth),
        )
        self.input_features = input_features
        self.in_channels, ear_channels = INPUT_CHANNELS[input_features]
        self.left_encoder = UNetEncoder(ear_channels, base_channels, bilinear)
        self.right_encoder = UNetEncoder(ear_channels, base_channels, bilinear)
        widths = dict(zip(ENCODER_KEYS, self.left_encoder.channels))
        attended = [ENCODER_KEYS[level - 1] for level in levels]

        def attention(key: str) -> EarCrossAttention:
            return EarCrossAttention(widths[key], num_heads, attention_mode, global_token_limit)

        self.left_from_right = nn.ModuleDict({key: attention(key) for key in attended})
        self.right_from_left = nn.ModuleDict({key: attention(key) for key in attended})
        self.fusion = nn.ModuleDict({key: _ear_fusion(widths[key]) for key in ENCODER_KEYS})
        self.decoder = (ImageQueryDecoder(base_channels, bilinear, num_heads) if decoder == "query"
                        else UNetDecoder(base_channels, bilinear))
        self.head = DepthHead(base_channels, max_depth, head_init_depth)

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, Dict[str, torch.Tensor]]]:
        """Predict depth.

        Args:
            x: (B, 2, F, T) spectrogram, left ear first (``ild_ipd``: (B, 4, F, T), the phase
                difference's cosine and sine after the ears); F and T divisible by 16.
            return_features: also return the feature maps.

        Returns:
            depth (B, 1, F, T) in metres in [0, max_depth]; with ``return_features``,
            ``(depth, features)`` where features maps the fused x1..x5 and d1..d4 to tensors of
            the teacher's shapes for the same H, W.

        Raises:
            ValueError: wrong input shape (see :func:`models.blocks.check_input`).
        """
        check_input(x, self.in_channels)
        left, right = x[:, :1], x[:, 1:2]
        if self.input_features != "magnitude":
            left, right = torch.cat([left, left - right], dim=1), torch.cat([right, right - left], dim=1)
        if self.input_features == "ild_ipd":
            cos, sin = x[:, 2:3], x[:, 3:4]
            left, right = torch.cat([left, cos, sin], dim=1), torch.cat([right, cos, -sin], dim=1)
        encoded = {}
        for key, left_stage, right_stage in zip(
            ENCODER_KEYS, self.left_encoder.stages, self.right_encoder.stages
        ):
            left, right = left_stage(left), right_stage(right)
            if key in self.left_from_right:
                left, right = (self.left_from_right[key](left, right),
                               self.right_from_left[key](right, left))
            encoded[key] = self.fusion[key](torch.cat([left, right], dim=1))
        decoded = self.decoder(encoded)
        depth = self.head(decoded["d4"])
        if return_features:
            return depth, {**encoded, **decoded}
        return depth


def create_binaural_attention_model(
    base_channels: int = 64,
    attention_levels: Sequence[int] = DEFAULT_ATTENTION_LEVELS,
    bilinear: bool = True,
    max_depth: float = DEFAULT_MAX_DEPTH,
    num_heads: int = 4,
    attention_mode: str = "auto",
    global_token_limit: int = DEFAULT_GLOBAL_TOKEN_LIMIT,
    decoder: str = "unet",
    input_features: str = "magnitude",
    head_init_depth: Optional[float] = None,
) -> BinauralAttentionModel:
    """Build the binaural cross-attention student (see :class:`BinauralAttentionModel`)."""
    return BinauralAttentionModel(
        base_channels=base_channels, attention_levels=attention_levels, bilinear=bilinear,
        max_depth=max_depth, num_heads=num_heads, attention_mode=attention_mode,
        global_token_limit=global_token_limit, decoder=decoder, input_features=input_features,
        head_init_depth=head_init_depth,
    )
