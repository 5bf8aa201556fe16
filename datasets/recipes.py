"""Named preprocessing recipes: raw arrays from ``datasets.batvision`` → the tensors of a sample.

A recipe is a frozen dataclass holding every parameter that shapes the tensors, so the cache key
(``datasets.cache``) can be derived from it. Two recipes are registered in ``RECIPES``:

``official``
    Reproduces the official UNetSoundOnly tensors (AmandineBtto/Batvision-Dataset) on the same
    files: V2 audio cut to ``int(2 * max_depth / 340 * 44100)`` samples (V1: no cut), magnitude
    STFT (n_fft 512, win_length 64, hop 16, periodic Hann, centred, reflect padding, power 1,
    no scaling), bilinear resize to S×S with **antialias=False** (the official code ran on
    torchvision < 0.17, where tensor ``Resize`` did not antialias), depth mm → m with
    ``np.nan_to_num`` first (NaN, −inf → 0 invalid; +inf → max_depth, counted valid), clipped to
    ``[0, max_depth]`` and resized bilinearly (which blends holes into their valid neighbours).

``default``
    Our recipe; it changes what the official one gets wrong or loses:

    * audio of both formats cut to the echo window of ``max_depth`` (echoes from farther away
      carry no label);
    * magnitude scaled by one global constant, ``log1p(|STFT| / 1e-3)``: compresses the dynamic
      range of echoes into O(1–10) values without any per-channel or per-sample normalisation,
      so the level difference between the ears survives (on the simulated world, with the rest
      of our training recipe, the official linear magnitude without antialiasing validated
      better for both audio models, so configs/synthetic take the official recipe);
    * antialiased bilinear resize of the spectrogram (a plain bilinear downsample aliases);
    * depth resized by nearest neighbour (``nearest-exact``): a hole stays a hole and no depth
      value is invented by blending a wall with a hole; +inf is invalid, not max_depth.

Audio modes: ``spectrogram`` (2, S, S); ``spectrogram_ipd`` (4, S, S) — the two ears'
magnitudes as ``spectrogram``, then the interaural phase difference as its cosine and sine
(:func:`phase_difference`), the timing cue a magnitude drops; ``mel`` — an HTK mel filterbank
applied to the same magnitude STFT, then the recipe's scaling and resize, (2, S, S); ``waveform``
(2, T) after the cut. The official code's mel path used hop 32 (torchaudio's default); here mel
always shares the recipe's STFT.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

SAMPLE_RATE = 44_100
AUDIO_MODES = ("spectrogram", "spectrogram_ipd", "mel", "waveform")
# Cross-spectrum power |L·R*| (linear magnitude², the recordings' scale) under which the phase
# difference fades to 0: below the default recipe's magnitude floor (1e-3) a phase is noise.
PHASE_FLOOR = 1e-6
FORMATS = ("v1", "v2")


@dataclass(frozen=True)
class Recipe:
    """Every parameter of one preprocessing recipe.

    Attributes:
        name: registry name.
        cut_formats: formats (``"v1"``, ``"v2"``) whose audio is cut to the echo window
            ``int(2 * max_depth / speed_of_sound * 44100)`` samples (never padded).
        speed_of_sound: m/s, for the echo window.
        n_fft, win_length, hop_length: STFT parameters in samples (periodic Hann window of
            ``win_length``, centred in ``n_fft``, reflect padding, magnitude).
        magnitude_scale: ``None`` keeps the linear magnitude; a float ``c`` gives
            ``log1p(magnitude / c)`` with that one global constant.
        spectrogram_antialias: antialias flag of the bilinear spectrogram resize.
        depth_resize: ``"bilinear"`` (antialias off, as official) or ``"nearest-exact"``.
        posinf_valid: +inf depth becomes max_depth and counts as valid (the official V1 quirk);
            otherwise +inf is invalid.
        n_mels, f_min, f_max: HTK mel filterbank for the ``mel`` mode (Hz).
    """

    name: str
    cut_formats: Tuple[str, ...]
    speed_of_sound: float = 340.0
    n_fft: int = 512
    win_length: int = 64
    hop_length: int = 16
    magnitude_scale: Optional[float] = None
    spectrogram_antialias: bool = False
    depth_resize: str = "bilinear"
    posinf_valid: bool = True
    n_mels: int = 32
    f_min: float = 20.0
    f_max: float = 20_000.0

    def params(self) -> Dict[str, Any]:
        """All parameters as a JSON-serialisable dict (part of the cache key)."""
        return dataclasses.asdict(self)

    @property
    def min_audio_samples(self) -> int:
        """Fewest samples the STFT accepts: reflect padding of n_fft // 2 needs one more."""
        return self.n_fft // 2 + 1

    def required_samples(self, max_depth: float, fmt: str) -> int:
        """Fewest samples a recording must hold: the STFT's minimum, and the whole echo window
        when this recipe cuts (shorter audio would be stretched over the same S×S grid).

        Args:
            max_depth: metres; sets the echo window.
            fmt: ``"v1"`` or ``"v2"``.
        """
        return max(self.min_audio_samples, self.cut_length(max_depth, fmt) or 0)

    def cut_length(self, max_depth: float, fmt: str) -> Optional[int]:
        """Samples kept from the start of the recording, or ``None`` for no cut.

        Args:
            max_depth: metres; the echo window is the round trip to this distance.
            fmt: ``"v1"`` or ``"v2"``.
        """
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
        if fmt not in self.cut_formats:
            return None
        return int(2 * max_depth / self.speed_of_sound * SAMPLE_RATE)

    def audio(self, waveform: np.ndarray, mode: str, image_size: int, max_depth: float,
              fmt: str) -> torch.Tensor:
        """Turn a binaural waveform into the ``audio`` tensor of a sample.

        Args:
            waveform: (2, T) float32 in [-1, 1], left ear first, 44.1 kHz.
            mode: ``spectrogram``, ``mel`` or ``waveform``.
            image_size: S, side of the square output for the spectrogram modes.
            max_depth: metres, sets the cut.
            fmt: ``"v1"`` or ``"v2"``.

        Returns:
            float32 (2, S, S) for ``spectrogram``/``mel`` (linear or log1p-scaled magnitude, see
            ``magnitude_scale``), (4, S, S) for ``spectrogram_ipd`` (those two channels, then
            :func:`phase_difference`), float32 (2, T') for ``waveform``.
        """
        if mode not in AUDIO_MODES:
            raise ValueError(f"unknown audio mode {mode!r}; expected one of {AUDIO_MODES}")
        cut = self.cut_length(max_depth, fmt)
        wave = torch.from_numpy(np.ascontiguousarray(waveform[:, :cut], dtype=np.float32))
        if mode == "waveform":
            return wave
        stft = self.stft(wave)
        spec = stft.abs()
        if mode == "mel":
            bank = torch.from_numpy(mel_filterbank(
                self.n_fft // 2 + 1, self.n_mels, self.f_min, self.f_max, SAMPLE_RATE))
            spec = torch.einsum("mf,cft->cmt", bank, spec)
        if self.magnitude_scale is not None:
            spec = torch.log1p(spec / self.magnitude_scale)
        if mode == "spectrogram_ipd":
            spec = torch.cat([spec, phase_difference(stft)])
        return resize(spec, image_size, "bilinear", antialias=self.spectrogram_antialias)

    def stft(self, wave: torch.Tensor) -> torch.Tensor:
        """(2, T) float32 waveform → (2, n_fft // 2 + 1, 1 + T // hop) complex STFT."""
        return torch.stft(
            wave, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
            window=torch.hann_window(self.win_length), center=True, pad_mode="reflect",
            return_complex=True)

    def depth(self, depth_mm: np.ndarray, image_size: int,
              max_depth: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """Turn a raw depth map into the ``depth`` and ``valid`` tensors of a sample.

        Args:
            depth_mm: (H, W) depth in millimetres, any numeric dtype; 0, negative, NaN and −inf
                are invalid; +inf is max_depth (``posinf_valid``) or invalid.
            image_size: S.
            max_depth: metres; larger depths are clipped to it.

        Returns:
            depth float32 (1, S, S) in metres in [0, max_depth], 0 = invalid; valid bool
            (1, S, S) = depth > 0.
        """
        posinf = np.finfo(np.float32).max if self.posinf_valid else 0.0
        metres = np.nan_to_num(depth_mm.astype(np.float32), nan=0.0, posinf=posinf, neginf=0.0)
        metres = np.clip(metres / 1000.0, 0.0, max_depth)
        depth = resize(torch.from_numpy(metres)[None], image_size, self.depth_resize,
                       antialias=False)
        return depth, depth > 0


def phase_difference(stft: torch.Tensor) -> torch.Tensor:
    """Interaural phase difference of a (2, F, T) complex STFT (left ear first), as (2, F, T)
    float32 ``(cos, sin)`` of the phase of ``L · conj(R)``, scaled by ``p / (p + PHASE_FLOOR)``
    with ``p = |L · conj(R)|``: where either ear is silent the phase is noise and fades to 0.

    Swapping the ears conjugates ``L · conj(R)``: the cosine stays, the sine changes sign
    (:func:`swap_ears`).
    """
    cross = stft[0] * stft[1].conj()
    power = cross.abs()
    unit = cross / (power + PHASE_FLOOR)
    return torch.stack([unit.real, unit.imag]).float()


def swap_ears(audio: torch.Tensor) -> torch.Tensor:
    """The same recording heard with the ears swapped: a batch (B, C, ...) of any audio mode.

    Channels 0 and 1 (the ears) trade places; with ``spectrogram_ipd``'s phase channels
    (C = 4), the cosine stays and the sine changes sign (:func:`phase_difference`).
    """
    ears = audio[:, [1, 0]]
    if audio.shape[1] == 2:
        return ears
    return torch.cat([ears, audio[:, 2:3], -audio[:, 3:4]], dim=1)


def resize(image: torch.Tensor, size: int, mode: str, antialias: bool) -> torch.Tensor:
    """Resize a (C, H, W) float tensor to (C, size, size), half-pixel aligned (align_corners=False).

    ``nearest-exact`` copies source pixels (no new values); ``bilinear`` interpolates, with
    ``antialias`` (ignored by ``nearest-exact``) low-pass filtering when it shrinks.
    """
    kwargs = {"align_corners": False, "antialias": antialias} if mode == "bilinear" else {}
    return F.interpolate(image[None], size=(size, size), mode=mode, **kwargs)[0]


def rgb_tensor(image: np.ndarray, image_size: int) -> torch.Tensor:
    """(H, W, 3) uint8 image → float32 (3, S, S) in [0, 1], antialiased bilinear resize.

    Recipe-independent: the official code never loads images.
    """
    rgb = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    return resize(rgb, image_size, "bilinear", antialias=True).clamp_(0.0, 1.0)


def mel_filterbank(n_freqs: int, n_mels: int, f_min: float, f_max: float,
                   sample_rate: int) -> np.ndarray:
    """Triangular HTK mel filterbank (no area normalisation), as torchaudio's ``htk`` scale.

    Args:
        n_freqs: STFT bins, ``n_fft // 2 + 1``, spread linearly over [0, sample_rate // 2] Hz.
        n_mels: number of mel bands.
        f_min, f_max: Hz, edges of the lowest and highest band.
        sample_rate: Hz.

    Returns:
        float32 (n_mels, n_freqs); row m weights the STFT bins of band m.
    """
    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    bin_hz = np.linspace(0, sample_rate // 2, n_freqs)
    edges_hz = mel_to_hz(np.linspace(hz_to_mel(np.float64(f_min)), hz_to_mel(np.float64(f_max)),
                                     n_mels + 2))
    widths = np.diff(edges_hz)
    offsets = edges_hz[None, :] - bin_hz[:, None]          # (n_freqs, n_mels + 2)
    rising = -offsets[:, :-2] / widths[:-1]
    falling = offsets[:, 2:] / widths[1:]
    return np.maximum(0.0, np.minimum(rising, falling)).T.astype(np.float32)


OFFICIAL = Recipe(name="official", cut_formats=("v2",))
DEFAULT = Recipe(
    name="default", cut_formats=("v1", "v2"), magnitude_scale=1e-3, spectrogram_antialias=True,
    depth_resize="nearest-exact", posinf_valid=False, n_mels=64)
RECIPES: Dict[str, Recipe] = {"official": OFFICIAL, "default": DEFAULT}


def get_recipe(name: str) -> Recipe:
    """The registered recipe called ``name`` (``official`` or ``default``)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name]
