"""The RGB teacher: a Pytorch-UNet-style U-Net from an RGB image to metric depth.

About 17.26 M parameters at ``base_channels=64`` with bilinear upsampling. The feature layout
(``x1..x5``, ``d1..d4``) is the one in :mod:`models.blocks`, shared with the binaural student.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple, Union

import torch
from torch import nn

from models.blocks import DepthHead, UNetDecoder, UNetEncoder, check_input

DEFAULT_MAX_DEPTH = 30.0  # metres, BatVision V2's range (V1 uses 12.0)


class RGBDepthModel(nn.Module):
    """U-Net: (B, in_channels, H, W) image in [0, 1] → (B, 1, H, W) depth in metres.

    Args:
        in_channels: 3 for RGB.
        base_channels: width of the first level; the levels have 1, 2, 4, 8, 8 × this.
        bilinear: bilinear upsampling in the decoder (else transposed convolutions).
        max_depth: upper bound of the predicted depth, metres.
    """

    model_name = "rgb_depth"

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        bilinear: bool = True,
        max_depth: float = DEFAULT_MAX_DEPTH,
    ) -> None:
        super().__init__()
        self.config: Dict[str, Any] = dict(
            in_channels=in_channels, base_channels=base_channels, bilinear=bilinear,
            max_depth=float(max_depth),
        )
        self.in_channels = in_channels
        self.encoder = UNetEncoder(in_channels, base_channels, bilinear)
        self.decoder = UNetDecoder(base_channels, bilinear)
        self.head = DepthHead(base_channels, max_depth)

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, Dict[str, torch.Tensor]]]:
        """Predict depth.

        Args:
            x: (B, in_channels, H, W) image in [0, 1]; H and W divisible by 16.
            return_features: also return the feature maps.

        Returns:
            depth (B, 1, H, W) in metres in [0, max_depth]; with ``return_features``,
            ``(depth, features)`` where features maps x1..x5 and d1..d4 to (B, C, h, w) tensors.

        Raises:
            ValueError: wrong input shape (see :func:`models.blocks.check_input`).
        """
        check_input(x, self.in_channels)
        encoded = self.encoder(x)
        decoded = self.decoder(encoded)
        depth = self.head(decoded["d4"])
        if return_features:
            return depth, {**encoded, **decoded}
        return depth


def create_rgb_depth_model(
    base_channels: int = 64,
    bilinear: bool = True,
    max_depth: float = DEFAULT_MAX_DEPTH,
    in_channels: int = 3,
) -> RGBDepthModel:
    """Build the RGB U-Net teacher (see :class:`RGBDepthModel` for the arguments)."""
    return RGBDepthModel(
        in_channels=in_channels, base_channels=base_channels, bilinear=bilinear, max_depth=max_depth
    )
