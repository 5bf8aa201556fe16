"""The official BatVision baseline: the pix2pix U-Net generator that UNetSoundOnly trains.

The reference row of every experiment table: the network the BatVision authors published as
their sound-only baseline, rebuilt here so it trains with our engine on our data and is scored by
our metrics. Layer for layer it is pix2pix's ``UnetGenerator`` as UNetSoundOnly configures it
(BatchNorm, no dropout, normal(0, 0.02) initialisation, a sigmoid on the last layer because depth
is normalised); the parameter counts are the official ones: 54,408,833 for ``unet_256``
(``num_downs=8``, ``ngf=64``) and 10,458,945 for ``unet_128`` (``num_downs=7``, ``ngf=32``).

The net is a nest of levels, outermost first. Level ``k`` (1 = outermost) halves the size with a
4×4 stride-2 convolution, runs level ``k+1`` (the innermost level runs nothing), doubles the
size back with a 4×4 stride-2 transposed convolution, and (except the outermost) concatenates
its own input as the skip. Widths, with ``n = num_downs``::

    level      1      2       3       4 .. n-1   n (innermost)
    channels   ngf    2 ngf   4 ngf   8 ngf      8 ngf          (output of the down conv)

Down paths use LeakyReLU(0.2), up paths ReLU; BatchNorm follows every convolution except the
outermost two and the innermost down convolution. Convolutions followed by BatchNorm have no bias;
the outermost transposed convolution (the output layer) has one. In pix2pix an in-place
LeakyReLU opens each inner level's down path, on the very tensor that level returns as its skip,
so the skip carries the *activated* features; this module does the same explicitly.

Input sizes: ``n`` halvings need H and W divisible by ``2**n``; at ``H = W = 2**n`` the innermost
map is 1×1, as in the official ``unet_128`` at 128² and ``unet_256`` at 256².
:func:`official_num_downs` gives that ``n`` for a square size (6 for 64², 7 for 128²).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from models.blocks import HEAD_INIT_WEIGHT_STD, check_input, depth_logit
from models.rgb_depth_model import DEFAULT_MAX_DEPTH

# pix2pix always builds the outermost level, three width-doubling levels and the innermost one.
MIN_NUM_DOWNS = 5
INIT_STD = 0.02  # pix2pix's "normal" initialisation, kept by UNetSoundOnly


def official_num_downs(image_size: int) -> int:
    """The depth that brings a square ``image_size``² input to a 1×1 bottleneck, as officially.

    Args:
        image_size: side of the square model input, pixels; a power of two ≥ 32.

    Returns:
        ``log2(image_size)``: 7 for 128 (``unet_128``), 8 for 256 (``unet_256``).

    Raises:
        ValueError: not a power of two, or below ``2**5``.
    """
    if image_size < 2 ** MIN_NUM_DOWNS or image_size & (image_size - 1):
        raise ValueError(f"official_unet needs a power-of-two image size >= {2 ** MIN_NUM_DOWNS}, "
                         f"got {image_size}")
    return image_size.bit_length() - 1


class _Level(nn.Module):
    """One level of the nest: ``x → [x,] up(inner(down(x)))`` (see the module docstring).

    Args:
        in_channels: channels of this level's input.
        out_channels: channels produced by the up path (before the skip concatenation).
        mid_channels: channels of the down convolution's output.
        inner: the next level down, or ``None`` for the innermost level.
        outermost: the first level: no opening activation, no normalisation, no skip, and a
            biased output convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int,
                 inner: Optional["_Level"], outermost: bool = False) -> None:
        super().__init__()
        innermost = inner is None
        # The outermost level reads the raw input; every other level starts with the activation
        # whose output is also its skip (the pix2pix in-place quirk, made explicit).
        self.activation = nn.Identity() if outermost else nn.LeakyReLU(0.2)
        down: list = [nn.Conv2d(in_channels, mid_channels, kernel_size=4, stride=2, padding=1,
                                bias=False)]
        if not (outermost or innermost):
            down.append(nn.BatchNorm2d(mid_channels))
        self.down = nn.Sequential(*down)
        self.inner = inner if inner is not None else nn.Identity()
        # An inner level returns [its input, its output]: twice mid_channels reach the up path.
        up_channels = mid_channels if innermost else 2 * mid_channels
        up: list = [nn.ReLU(), nn.ConvTranspose2d(up_channels, out_channels, kernel_size=4,
                                                  stride=2, padding=1, bias=outermost)]
        if not outermost:
            up.append(nn.BatchNorm2d(out_channels))
        self.up = nn.Sequential(*up)
        self.skip = not outermost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) → (B, in + out, H, W), or (B, out, H, W) for the outermost level."""
        x = self.activation(x)
        y = self.up(self.inner(self.down(x)))
        return torch.cat([x, y], dim=1) if self.skip else y


class OfficialUNet(nn.Module):
    """(B, input_nc, H, W) spectrogram → (B, output_nc, H, W) depth in metres.

    Args:
        ngf: width of the outermost level (64 officially; 32 for the CPU-sized ``unet_128``).
        num_downs: number of 2× downsamplings (≥ 5); 7 is ``unet_128``, 8 ``unet_256``.
        max_depth: metres; the sigmoid output (normalised depth) is multiplied by it.
        input_nc: input channels (2: left and right ear).
        output_nc: output channels (1: depth).
        head_init_depth: ``None`` keeps pix2pix's initialisation (the sigmoid starts near
            ``max_depth / 2``); metres in (0, max_depth) start every prediction there instead,
            exactly as the student's :class:`models.blocks.DepthHead` does (output bias
            ``logit(depth / max_depth)``, output weights of standard deviation
            :data:`models.blocks.HEAD_INIT_WEIGHT_STD`), so the two architectures can share
            that lever of the training recipe.

    Raises:
        ValueError: ``num_downs`` below :data:`MIN_NUM_DOWNS`, or ``head_init_depth`` outside
            (0, max_depth).
    """

    model_name = "official_unet"

    def __init__(self, ngf: int = 32, num_downs: int = 7, max_depth: float = DEFAULT_MAX_DEPTH,
                 input_nc: int = 2, output_nc: int = 1,
                 head_init_depth: Optional[float] = None) -> None:
        super().__init__()
        if num_downs < MIN_NUM_DOWNS:
            raise ValueError(f"num_downs must be >= {MIN_NUM_DOWNS} (the pix2pix U-Net's fixed "
                             f"levels), got {num_downs}")
        self.config: Dict[str, Any] = dict(ngf=ngf, num_downs=num_downs,
                                           max_depth=float(max_depth), input_nc=input_nc,
                                           output_nc=output_nc)
        if head_init_depth is not None:  # old checkpoints' configs lack the key: same model
            self.config["head_init_depth"] = float(head_init_depth)
        self.input_nc = input_nc
        self.num_downs = num_downs
        self.max_depth = float(max_depth)
        # widths[i]: channels of level i+1's down conv (the table in the module docstring).
        widths = [ngf, 2 * ngf, 4 * ngf] + [8 * ngf] * (num_downs - 3)
        # Built inside out: level i+1 reads level i's down output and its up path returns to
        # that width, so the concatenated skip doubles it for level i's up path.
        level: Optional[_Level] = None
        for i in range(num_downs - 1, 0, -1):
            level = _Level(widths[i - 1], widths[i - 1], widths[i], level)
        self.net = _Level(input_nc, output_nc, ngf, level, outermost=True)
        self._initialise()
        if head_init_depth is not None:
            output = self.net.up[-1]
            nn.init.normal_(output.weight, std=HEAD_INIT_WEIGHT_STD)
            nn.init.constant_(output.bias, depth_logit(float(head_init_depth), self.max_depth))

    def _initialise(self) -> None:
        """pix2pix's initialisation: conv weights ~ N(0, 0.02), BN scales ~ N(1, 0.02), biases 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(module.weight, 0.0, INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, INIT_STD)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        """Predict depth.

        Args:
            x: (B, input_nc, H, W) spectrogram; H and W divisible by ``2**num_downs``.
            return_features: must be False: this net has no ``x1..x5``/``d1..d4`` features
                comparable with the teacher's, so it cannot be a distillation student.

        Returns:
            depth (B, output_nc, H, W) in metres in [0, max_depth].

        Raises:
            ValueError: wrong input shape, or ``return_features=True``.
        """
        if return_features:
            raise ValueError("official_unet has no teacher-compatible features "
                             "(return_features=True); it cannot be distilled into")
        check_input(x, self.input_nc, multiple=2 ** self.num_downs)
        return torch.sigmoid(self.net(x)) * self.max_depth


def create_official_unet(ngf: int = 32, num_downs: int = 7, max_depth: float = DEFAULT_MAX_DEPTH,
                         input_nc: int = 2, output_nc: int = 1,
                         head_init_depth: Optional[float] = None) -> OfficialUNet:
    """Build the official BatVision U-Net (see :class:`OfficialUNet`; for another square input
    size pass ``num_downs=official_num_downs(size)``)."""
    return OfficialUNet(ngf=ngf, num_downs=num_downs, max_depth=max_depth, input_nc=input_nc,
                        output_nc=output_nc, head_init_depth=head_init_depth)
