"""The named recipes: ``official`` against an independent computation, ``default``'s guarantees."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.io import wavfile

from datasets import BatvisionV1Dataset, BatvisionV2Dataset, get_recipe
from datasets.recipes import (DEFAULT, OFFICIAL, SAMPLE_RATE, mel_filterbank, phase_difference,
                              swap_ears)

TOLERANCE = 1e-4


def reference_magnitude_stft(wave: np.ndarray, n_fft: int = 512, win_length: int = 64,
                             hop: int = 16) -> np.ndarray:
    """Explicit numpy framing + FFT: periodic Hann centred in n_fft, reflect-padded, |X|."""
    n = np.arange(win_length)
    window = np.zeros(n_fft)
    start = (n_fft - win_length) // 2
    window[start:start + win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * n / win_length)
    padded = np.pad(wave.astype(np.float64), ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    n_frames = 1 + (padded.shape[1] - n_fft) // hop
    frame_starts = hop * np.arange(n_frames)
    frames = padded[:, frame_starts[:, None] + np.arange(n_fft)[None, :]] * window
    return np.abs(np.fft.rfft(frames, axis=-1)).transpose(0, 2, 1)   # (2, freq, time)


def reference_bilinear(image: np.ndarray, size: int, antialias: bool = False) -> np.ndarray:
    """(C, H, W) → (C, size, size), half-pixel bilinear, in float64."""
    tensor = torch.from_numpy(image.astype(np.float64))[None]
    return F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=antialias)[0].numpy()


def read_wav_reference(path: str) -> np.ndarray:
    rate, data = wavfile.read(path)
    assert rate == SAMPLE_RATE
    return data.T.astype(np.float64) / 2.0 ** 31


@pytest.mark.parametrize("image_size", [64, 256])
def test_official_v2_spectrogram_matches_independent_computation(v2_root, image_size):
    dataset = BatvisionV2Dataset(v2_root, "val", image_size=image_size, recipe="official")
    sample = dataset[1]
    wave = read_wav_reference(sample["meta"]["audio_path"])[:, :int(2 * 30.0 / 340 * 44100)]
    assert wave.shape[1] == 7782
    spec = reference_magnitude_stft(wave)
    assert spec.shape == (2, 257, 487)
    expected = reference_bilinear(spec, image_size)
    assert np.abs(sample["audio"].numpy() - expected).max() <= TOLERANCE


def test_official_v1_spectrogram_is_uncut_and_matches(v1_root):
    dataset = BatvisionV1Dataset(v1_root, "train", image_size=64, recipe="official")
    sample = dataset[0]
    left = np.load(sample["meta"]["audio_path_left"])
    right = np.load(sample["meta"]["audio_path_right"])
    spec = reference_magnitude_stft(np.stack([left, right]))
    assert spec.shape == (2, 257, 1 + 5000 // 16)
    expected = reference_bilinear(spec, 64)
    assert np.abs(sample["audio"].numpy() - expected).max() <= TOLERANCE


def test_official_resize_is_not_antialiased(v2_root):
    """Official = antialias=False (torchvision < 0.17 tensor Resize); True gives other values."""
    sample = BatvisionV2Dataset(v2_root, "train", image_size=64, recipe="official")[0]
    wave = read_wav_reference(sample["meta"]["audio_path"])[:, :7782]
    spec = reference_magnitude_stft(wave)
    got = sample["audio"].numpy()
    assert np.abs(got - reference_bilinear(spec, 64, antialias=False)).max() <= TOLERANCE
    assert np.abs(got - reference_bilinear(spec, 64, antialias=True)).max() > 100 * TOLERANCE


def test_official_depth_matches_independent_computation(v1_root):
    """V1 quirk: NaN and -inf → 0 (invalid), +inf → max_depth (valid); then clip and bilinear."""
    dataset = BatvisionV1Dataset(v1_root, "train", image_size=32, recipe="official")
    depth_path = dataset.records[0].depth_path
    raw = np.load(depth_path)
    raw[0, :5] = np.inf
    raw[1, :5] = -np.inf
    raw[2, :5] = -300.0
    np.save(depth_path, raw)
    metres = raw.astype(np.float64)
    metres[np.isnan(metres) | np.isneginf(metres)] = 0.0
    metres[np.isposinf(metres)] = 12.0 * 1000
    metres = np.clip(metres / 1000, 0.0, 12.0)
    expected = reference_bilinear(metres[None], 32)
    sample = dataset[0]
    assert np.abs(sample["depth"].numpy() - expected).max() <= TOLERANCE
    assert torch.equal(sample["valid"], sample["depth"] > 0)


@pytest.mark.parametrize("recipe, inf_valid", [("official", True), ("default", False)])
def test_positive_infinity_depth(v1_root, recipe, inf_valid):
    """At S equal to the depth size both resizes are the identity, so each pixel is visible."""
    dataset = BatvisionV1Dataset(v1_root, "train", image_size=16, recipe=recipe)
    path = dataset.records[0].depth_path
    raw = np.full((16, 16), 5000.0, dtype=np.float32)
    raw[3, 4], raw[5, 6], raw[7, 8] = np.inf, -np.inf, np.nan
    np.save(path, raw)
    sample = dataset[0]
    depth, valid = sample["depth"][0], sample["valid"][0]
    assert depth[3, 4].item() == (12.0 if inf_valid else 0.0)
    assert valid[3, 4].item() is inf_valid
    assert depth[5, 6].item() == 0.0 and depth[7, 8].item() == 0.0
    assert not valid[5, 6] and not valid[7, 8]
    valid[3, 4] = False
    assert torch.all(depth[valid] == 5.0)


@pytest.mark.parametrize("image_size", [8, 33, 64])
def test_default_depth_keeps_holes_and_invents_nothing(image_size):
    rng = np.random.default_rng(1)
    depth_mm = rng.uniform(500, 9000, size=(20, 28)).astype(np.float32)
    depth_mm[rng.random((20, 28)) < 0.3] = 0.0
    depth, valid = DEFAULT.depth(depth_mm, image_size, max_depth=30.0)
    metres = torch.from_numpy(depth_mm / 1000.0)
    # nearest-exact: output pixel (i, j) is source pixel (floor((i + .5) H / S), ...).
    rows = np.minimum(((np.arange(image_size) + 0.5) * 20 / image_size).astype(int), 19)
    cols = np.minimum(((np.arange(image_size) + 0.5) * 28 / image_size).astype(int), 27)
    source = metres[rows][:, cols]
    assert torch.equal(depth[0], source)
    assert torch.equal(valid[0], source > 0)      # a hole never becomes valid, nor the reverse
    assert set(depth.unique().tolist()) <= set(metres.unique().tolist())


def test_official_bilinear_depth_blends_holes():
    """Why the default differs: bilinear mixes holes (0) into walls, inventing depths."""
    depth_mm = np.zeros((8, 8), dtype=np.float32)
    depth_mm[:, 4:] = 4000.0
    depth, _ = OFFICIAL.depth(depth_mm, 16, max_depth=30.0)
    assert not set(depth.unique().tolist()) <= {0.0, 4.0}


@pytest.mark.parametrize("mode", ["spectrogram", "mel"])
def test_default_scaling_is_global(mode):
    """Scaling one ear changes only its channel (level difference kept); no per-sample norm."""
    rng = np.random.default_rng(2)
    wave = rng.normal(0, 0.1, size=(2, 9000)).astype(np.float32)
    quieter_left = wave.copy()
    quieter_left[0] *= 0.25
    base = DEFAULT.audio(wave, mode, 32, max_depth=30.0, fmt="v2")
    changed = DEFAULT.audio(quieter_left, mode, 32, max_depth=30.0, fmt="v2")
    assert torch.equal(changed[1], base[1])
    assert (base[0] - changed[0]).abs().min() > 0.5          # log1p(|X|/c): about ln 4 lower
    both_quieter = DEFAULT.audio(wave * 0.25, mode, 32, max_depth=30.0, fmt="v2")
    assert (base - both_quieter).abs().min() > 0.5


@pytest.mark.parametrize("recipe, fmt, expected", [
    ("official", "v2", 7782), ("official", "v1", None), ("default", "v2", 7782),
    ("default", "v1", 7782)])
def test_cut_length(recipe, fmt, expected):
    assert get_recipe(recipe).cut_length(30.0, fmt) == expected


def test_waveform_mode_returns_the_cut_waveform():
    wave = np.random.default_rng(3).normal(0, 0.1, size=(2, 20000)).astype(np.float32)
    out = DEFAULT.audio(wave, "waveform", 64, max_depth=12.0, fmt="v2")
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.from_numpy(wave[:, :3112]))


def test_phase_channels_hold_the_interaural_delay_and_swap_with_the_ears():
    delay = 5  # the right ear hears the tone 5 samples late
    tone = np.sin(2 * np.pi * 5000.0 * np.arange(6000) / SAMPLE_RATE).astype(np.float32)
    silence = np.zeros(6000, dtype=np.float32)
    wave = np.stack([np.concatenate([tone, silence]), np.concatenate([np.roll(tone, delay),
                                                                      silence])])
    stft = DEFAULT.stft(torch.from_numpy(wave))
    phase = phase_difference(stft)
    tone_bin = round(5000.0 / SAMPLE_RATE * DEFAULT.n_fft)
    lag = 2 * np.pi * 5000.0 * delay / SAMPLE_RATE  # angle of L·conj(R), by hand
    np.testing.assert_allclose(phase[:, tone_bin, 100:200].mean(dim=1).numpy(),
                               [np.cos(lag), np.sin(lag)], atol=1e-3)
    assert phase[:, :, -20:].abs().max() < 1e-6  # both ears silent: no phase, not noise

    audio = DEFAULT.audio(wave, "spectrogram_ipd", 32, max_depth=30.0, fmt="v2")
    assert audio.shape == (4, 32, 32)
    torch.testing.assert_close(audio[:2], DEFAULT.audio(wave, "spectrogram", 32, 30.0, "v2"))
    swapped = DEFAULT.audio(wave[::-1].copy(), "spectrogram_ipd", 32, max_depth=30.0, fmt="v2")
    torch.testing.assert_close(swap_ears(audio[None])[0], swapped, atol=1e-5, rtol=0)
    two_ears = audio[None, :2]
    assert torch.equal(swap_ears(two_ears), two_ears.flip(1))


def test_mel_filterbank_is_htk_triangles():
    n_mels, f_min, f_max = 40, 20.0, 20_000.0
    bank = mel_filterbank(257, n_mels, f_min, f_max, SAMPLE_RATE)
    assert bank.shape == (n_mels, 257) and bank.dtype == np.float32
    assert bank.min() >= 0.0 and bank.max() <= 1.0

    def mel(hz):
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    edges = 700.0 * (10 ** (np.linspace(mel(f_min), mel(f_max), n_mels + 2) / 2595.0) - 1.0)
    bins_hz = np.linspace(0, SAMPLE_RATE // 2, 257)
    inside = (bins_hz >= edges[1]) & (bins_hz <= edges[-2])
    # Overlapping unnormalised triangles partition unity between the first and last centre.
    np.testing.assert_allclose(bank[:, inside].sum(axis=0), 1.0, atol=1e-5)
    tone_bin = np.argmin(np.abs(bins_hz - 5000.0))
    assert np.argmax(bank[:, tone_bin]) == np.argmin(np.abs(edges[1:-1] - bins_hz[tone_bin]))


def test_mel_mode_applies_filterbank_to_the_same_stft():
    wave = np.random.default_rng(4).normal(0, 0.1, size=(2, 8000)).astype(np.float32)
    spec = reference_magnitude_stft(wave[:, :7782])
    bank = mel_filterbank(257, OFFICIAL.n_mels, OFFICIAL.f_min, OFFICIAL.f_max, SAMPLE_RATE)
    expected = reference_bilinear(np.einsum("mf,cft->cmt", bank.astype(np.float64), spec), 32)
    got = OFFICIAL.audio(wave, "mel", 32, max_depth=30.0, fmt="v2").numpy()
    assert np.abs(got - expected).max() <= TOLERANCE * max(1.0, np.abs(expected).max())


def test_registry():
    assert get_recipe("official") is OFFICIAL and get_recipe("default") is DEFAULT
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("fancy")
    json.dumps(DEFAULT.params())
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.n_fft = 256  # type: ignore[misc]


@pytest.mark.parametrize("cached", [False, True])
def test_ground_truth_of_another_recipe_keeps_the_inputs_and_takes_its_depth(
        v1_root, tmp_path, cached):
    """An official-recipe model scored on the default recipe's ground truth: its audio as it was
    trained on, the depth and mask of the default recipe (holes kept, +inf invalid), and a cache
    that never serves one recipe's depth for the other's."""
    path = BatvisionV1Dataset(v1_root, "train").records[0].depth_path
    raw = np.load(path)
    raw[0] = np.inf   # nearest keeps the first row (invalid); bilinear blends it with the next
    np.save(path, raw)
    cache = {"cache_dir": tmp_path / "cache"} if cached else {}
    official, default, scored = (
        BatvisionV1Dataset(v1_root, "train", image_size=16, recipe=recipe, ground_truth=truth,
                           **cache)[0]
        for recipe, truth in (("official", None), ("default", None), ("official", "default")))
    assert torch.equal(scored["audio"], official["audio"])
    assert torch.equal(scored["depth"], default["depth"])
    assert torch.equal(scored["valid"], default["valid"])
    assert not torch.equal(official["valid"], default["valid"])   # the two rules differ here
