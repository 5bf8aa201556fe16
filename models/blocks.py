"""The U-Net building blocks shared by every model: convolutions, encoder, decoder, depth head.

The layout follows Pytorch-UNet (milesial) with ``bilinear=True``; with ``base`` channels:

=====  ==========================  ======  =====================================
level  channels                    stride  made by
=====  ==========================  ======  =====================================
x1     base                        1       ``DoubleConv`` (the "inc" block)
x2     2 base                      2       ``Down``
x3     4 base                      4       ``Down``
x4     8 base                      8       ``Down``
x5     8 base (16 if not bilinear) 16      ``Down``
d1     4 base (8)                  8       ``Up`` of x5 with skip x4
d2     2 base (4)                  4       ``Up`` of d1 with skip x3
d3     base (2)                    2       ``Up`` of d2 with skip x2
d4     base                        1       ``Up`` of d3 with skip x1
=====  ==========================  ======  =====================================

Both the RGB teacher and the binaural student decode with one :class:`UNetDecoder` and one
:class:`DepthHead`, so their ``x1..x5`` / ``d1..d4`` feature maps are comparable level by level.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

ENCODER_KEYS: Tuple[str, ...] = ("x1", "x2", "x3", "x4", "x5")
DECODER_KEYS: Tuple[str, ...] = ("d1", "d2", "d3", "d4")
FEATURE_KEYS: Tuple[str, ...] = ENCODER_KEYS + DECODER_KEYS
# Four 2x poolings: every input side must divide by 2**4 so the skips line up without padding.
SIZE_MULTIPLE = 16
# DepthHead(init_depth=...) weights: small enough that decoder features of order 1 move the first
# predictions by about 1 % of the depth or less, non-zero so the decoder gets gradient at step one.
HEAD_INIT_WEIGHT_STD = 1e-3


def check_feature_levels(levels: Sequence[str]) -> None:
    """Check feature level names (``return_features=True`` keys).

    Raises:
        ValueError: no level, or one that is not one of ``x1..x5, d1..d4`` (named).
    """
    if not levels:
        raise ValueError(f"no feature level given; choose from {', '.join(FEATURE_KEYS)}")
    for level in levels:
        if level not in FEATURE_KEYS:
            raise ValueError(f"unknown feature level {level!r}; "
                             f"choose from {', '.join(FEATURE_KEYS)}")


def check_input(x: torch.Tensor, channels: int, multiple: int = SIZE_MULTIPLE) -> None:
    """Reject an input the U-Net cannot take, with a one-line reason.

    Args:
        x: model input, expected (B, channels, H, W).
        channels: the channel count the model was built for.
        multiple: H and W must divide by it (2 to the number of halvings; 16 for these U-Nets).

    Raises:
        ValueError: wrong rank or channel count, or H or W not divisible by ``multiple``.
    """
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"expected input of shape (B, {channels}, H, W), got {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if height % multiple or width % multiple:
        raise ValueError(
            f"input height and width must be divisible by {multiple}, got {height}x{width}"
        )


class DoubleConv(nn.Module):
    """(3x3 conv → BatchNorm → ReLU) twice; keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: Optional[int] = None) -> None:
        super().__init__()
        mid_channels = mid_channels or out_channels
        self.block = nn.Sequential(
            # No conv bias: the BatchNorm right after it has its own shift.
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) → (B, out, H, W)."""
        return self.block(x)


class Down(nn.Module):
    """2x2 max-pool then :class:`DoubleConv`: halves H and W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) → (B, out, H/2, W/2)."""
        return self.block(x)


class Up(nn.Module):
    """Upsample 2x, concatenate the skip, then :class:`DoubleConv`.

    Args:
        in_channels: channels of the upsampled map plus the skip, as concatenated.
        out_channels: output channels.
        bilinear: bilinear upsampling (no parameters; the conv halves the channels) instead of a
            learned transposed convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = True) -> None:
        super().__init__()
        if bilinear:
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Deep map (B, C, H, W) and skip (B, C', 2H, 2W) → (B, out, 2H, 2W)."""
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


def encoder_channels(base_channels: int, bilinear: bool = True) -> Tuple[int, ...]:
    """Channels of x1..x5 for a given base width (see the table in the module docstring)."""
    factor = 2 if bilinear else 1
    return (base_channels, 2 * base_channels, 4 * base_channels, 8 * base_channels,
            16 * base_channels // factor)


class UNetEncoder(nn.Module):
    """The contracting path: ``stages[i]`` makes level x{i+1} from the previous level.

    The stages are exposed so a model can act between them (the binaural student mixes its two
    ears after each stage); :meth:`forward` simply runs them in order.
    """

    def __init__(self, in_channels: int, base_channels: int = 64, bilinear: bool = True) -> None:
        super().__init__()
        self.channels = encoder_channels(base_channels, bilinear)
        widths = (in_channels,) + self.channels
        self.stages = nn.ModuleList(
            [DoubleConv(widths[0], widths[1])]
            + [Down(widths[i], widths[i + 1]) for i in range(1, len(self.channels))]
        )

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(B, in, H, W) → dict x1..x5, x{l} of shape (B, channels[l-1], H/2**(l-1), W/2**(l-1))."""
        features = {}
        for key, stage in zip(ENCODER_KEYS, self.stages):
            x = stage(x)
            features[key] = x
        return features


class UNetDecoder(nn.Module):
    """The expanding path: x5 upsampled through the skips x4..x1 into d1..d4."""

    def __init__(self, base_channels: int = 64, bilinear: bool = True) -> None:
        super().__init__()
        factor = 2 if bilinear else 1
        b = base_channels
        self.channels = (8 * b // factor, 4 * b // factor, 2 * b // factor, b)  # d1..d4
        in_channels = (16 * b, 8 * b, 4 * b, 2 * b)  # upsampled map and skip, concatenated
        self.ups = nn.ModuleList(
            [Up(inputs, outputs, bilinear) for inputs, outputs in zip(in_channels, self.channels)]
        )

    def forward(self, encoded: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Encoder dict x1..x5 → dict d1..d4 (shapes in the module docstring)."""
        x = encoded["x5"]
        skips = ("x4", "x3", "x2", "x1")
        decoded = {}
        for key, up, skip in zip(DECODER_KEYS, self.ups, skips):
            x = up(x, encoded[skip])
            decoded[key] = x
        return decoded


def depth_logit(depth: float, max_depth: float) -> float:
    """The pre-sigmoid value at which ``sigmoid(·) × max_depth`` gives ``depth`` metres.

    Raises:
        ValueError: ``depth`` outside (0, max_depth).
    """
    if not 0.0 < depth < max_depth:
        raise ValueError(f"head init depth must lie in (0, max_depth={max_depth}) metres, "
                         f"got {depth}")
    fraction = depth / max_depth
    return math.log(fraction / (1.0 - fraction))


class DepthHead(nn.Module):
    """1x1 conv → sigmoid × max_depth: depth in metres, bounded to [0, max_depth].

    With PyTorch's default initialisation the first predictions scatter around ``max_depth / 2``,
    far from typical scenes when the range is generous (15 m of a 30 m range for rooms 2–4 m
    deep), and the first updates are spent moving the whole map down. ``init_depth`` starts the
    head at a chosen depth instead (e.g. the training split's median valid depth).

    Args:
        in_channels: channels of the decoder's last map.
        max_depth: upper bound of the predicted depth, metres.
        init_depth: ``None`` keeps PyTorch's initialisation; metres in (0, max_depth) set the
            bias to ``logit(init_depth / max_depth)`` and draw the weights with standard
            deviation :data:`HEAD_INIT_WEIGHT_STD`, so every first prediction is ≈ init_depth.

    Raises:
        ValueError: ``init_depth`` outside (0, max_depth).
    """

    def __init__(self, in_channels: int, max_depth: float, init_depth: Optional[float] = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, kernel_size=1)
        self.max_depth = max_depth
        if init_depth is not None:
            nn.init.normal_(self.conv.weight, std=HEAD_INIT_WEIGHT_STD)
            nn.init.constant_(self.conv.bias, depth_logit(init_depth, max_depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) → (B, 1, H, W) depth in metres."""
        return torch.sigmoid(self.conv(x)) * self.max_depth
