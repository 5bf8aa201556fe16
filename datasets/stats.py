"""Statistics of a BatVision-format tree (V1 or V2, real or simulated), and a check against a
reference.

    python -m datasets.stats /data/BatvisionV2
    python -m datasets.stats /data/world --split test --max_samples 200 --picture stats.png \\
        --compare datasets/reference/batvision_v2_real.json --strict

ROOT is a V1 root, a V2 root, a single V2 location folder, or a folder holding a synthetic world
(as ``--dataset auto`` detects them). Each sample (a recording and its depth map) is read raw,
through the readers' file checks: both ears at 44.1 kHz (V1 ear ``.npy`` files carry no rate;
44.1 kHz is assumed, as the readers do), no cut; depth in millimetres, where 0, negative, NaN and
±inf are holes (the default recipe's rule; the official one counts +inf as max_depth).

Per sample: the energy envelope (mean of the two ears' squared samples, 1 ms moving average, dB
below its own maximum) with its onset (first crossing of -20 dB), peak and level at 5, 20, 50,
100 and 170 ms; the Schroeder RT60 (T20 x 3); the share of energy after the official recipe's
echo-window cut ``int(2 * max_depth / 340 * 44100)`` samples; the interaural level difference;
the spectral centroid; the depth map's valid share, median and maximum depth, and where its holes
fall (image border, near occlusion boundaries, next to which depths). Over the samples, each
statistic's median and inter-quartile range go to a JSON file (--out, never into the tree).

With --compare REF.json, each statistic of the reference is checked against our median: a value
and a tolerance, ``{"value": v, "abs_tol": t}`` or ``{"value": v, "factor": f}`` (within a factor
f either way), under the reference's ``"statistics"``; its optional ``"ranges"`` (``{"min": a,
"max": b}``) are printed beside our value as documentation, with no verdict.
``datasets/reference/batvision_v2_real.json`` holds one real V2 recording's measurements.

Exit status: 0; with --strict, 1 when a compared statistic is outside its tolerance or not
measured; 1 for bad input (missing folder, not a BatVision tree, unreadable file or reference);
2 for bad flags.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy.ndimage import distance_transform_edt, uniform_filter1d
from tqdm import tqdm

from common.argtypes import ArgumentParser, positive_float, positive_int
from common.errors import UsageError, user_errors
from datasets.batvision import (BatvisionV2Dataset, Record, read_depth_mm, read_ear_pair,
                                read_wav, spread_indices, valid_depth)
from datasets.errors import DataError
from datasets.recipes import SAMPLE_RATE, get_recipe
from datasets.registry import READERS, detect_dataset
from datasets.sample import SPLITS

ENVELOPE_WINDOW_S = 1e-3
ONSET_DB = -20.0
ENVELOPE_TIMES_MS = (5, 20, 50, 100, 170)
# T20: the fit starts 5 dB down, past the direct sound's knee, and stops at -25 dB, before the
# noise floor and the recording's end bend the curve.
SCHROEDER_FIT_DB = (-5.0, -25.0)
NOISE_MARGIN_DB = 10.0       # the fit's end must lie this far above the noise floor (ISO 3382)
NOISE_TAIL = 10              # the noise floor is measured on the last 1/NOISE_TAIL of a recording
# The late-energy share is measured after the official recipe's cut, whatever recipe trains.
OFFICIAL_RECIPE = get_recipe("official")
BORDER_SHARE = 0.05          # of the height (rows) and of the width (columns), each side
JUMP_M = 0.3                 # a depth step larger than this between neighbours is an occlusion
BOUNDARY_RADIUS_PX = 2.0
DEPTH_BIN_EDGES_M = (1.0, 2.0, 4.0)
DEPTH_BIN_NAMES = ("0-1", "1-2", "2-4", "4+")
# The picture's time grid: fine enough for the 1 ms envelope, long enough for its 170 ms point.
PICTURE_STEP_MS = 0.5
PICTURE_SPAN_MS = 250.0
SPLIT_CHOICES = (*SPLITS, "all")

Nested = Dict[str, Any]   # statistic name → value, or a dict of them (flattened with dots)


# --------------------------------------------------------------------------------------------
# Audio: (2, T) float waveforms, left ear first

def channel_energy(audio: np.ndarray) -> np.ndarray:
    """Per-sample energy: the mean of the two ears' squared samples.

    Args:
        audio: (2, T) waveform.

    Returns:
        (T,) float64 energy (squared sample units).
    """
    return np.mean(np.square(audio.astype(np.float64)), axis=0)


def energy_envelope(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """The energy envelope: :func:`channel_energy` under a centred 1 ms moving average.

    Args:
        audio: (2, T) waveform.
        sample_rate: Hz.

    Returns:
        (T,) float64, dB relative to the envelope's maximum (0 dB there, -inf where silent;
        all -inf for a silent recording).
    """
    window = max(1, round(ENVELOPE_WINDOW_S * sample_rate))
    # The running sum of the filter can leave -1e-20 where the energy is 0: not a level.
    smooth = np.maximum(uniform_filter1d(channel_energy(audio), window, mode="constant"), 0.0)
    peak = smooth.max(initial=0.0)
    if peak <= 0.0:
        return np.full(smooth.shape, -np.inf)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(smooth / peak)


def onset_ms(envelope_db: np.ndarray, sample_rate: int) -> Optional[float]:
    """Time of the envelope's first sample at or above -20 dB (ms from the recording's start);
    None for a silent recording."""
    above = np.flatnonzero(envelope_db >= ONSET_DB)
    return float(above[0] * 1000.0 / sample_rate) if above.size else None


def peak_ms(envelope_db: np.ndarray, sample_rate: int) -> Optional[float]:
    """Time of the envelope's maximum (its first sample, ms); None for a silent recording."""
    if envelope_db.size == 0 or not np.isfinite(envelope_db.max()):
        return None
    return float(np.argmax(envelope_db) * 1000.0 / sample_rate)


def envelope_levels(envelope_db: np.ndarray, sample_rate: int,
                    times_ms: Sequence[float] = ENVELOPE_TIMES_MS) -> Dict[str, Optional[float]]:
    """The envelope's level (dB below its maximum) at each of ``times_ms``.

    Returns:
        ``{str(time): dB}``; None where the recording is shorter than the time, or silent.
    """
    levels: Dict[str, Optional[float]] = {}
    for time in times_ms:
        i = round(time * sample_rate / 1000.0)
        level = float(envelope_db[i]) if i < envelope_db.size else None
        levels[f"{time:g}"] = level if level is not None and np.isfinite(level) else None
    return levels


def noise_floor(audio: np.ndarray) -> float:
    """The recording's noise floor: the mean energy (:func:`channel_energy`) of its last 10 %,
    where the echoes have died away (an overestimate where they have not)."""
    energy = channel_energy(audio)
    return float(energy[-max(1, energy.size // NOISE_TAIL):].mean()) if energy.size else 0.0


def schroeder_rt60(audio: np.ndarray, sample_rate: int) -> Optional[float]:
    """Reverberation time by Schroeder backward integration (T20 extrapolated to 60 dB).

    The decay curve is the energy (:func:`channel_energy`, less the :func:`noise_floor`, which
    would otherwise flatten the curve's tail) summed from each sample to the end, in dB below its
    value at the recording's start; a least-squares line through the curve from its first sample
    5 dB down to its first sample 25 dB down gives the decay rate, and RT60 is the time that rate
    takes to fall 60 dB.

    Args:
        audio: (2, T) waveform.
        sample_rate: Hz.

    Returns:
        seconds; None for a silent recording, where the decay curve does not reach -25 dB (or
        falls from -5 to -25 dB within two samples, as after a lone impulse), or
        where the noise floor is less than 35 dB below the energy envelope's maximum: the fit's
        end would lie within 10 dB of the noise, which ISO 3382 forbids (stationary noise has no
        decay to measure; a recording that ends before its reverberation has fallen 35 dB, such
        as an RT60 of 0.8 s in 0.45 s, is not measured either).
    """
    energy = channel_energy(audio)
    window = max(1, round(ENVELOPE_WINDOW_S * sample_rate))
    peak = uniform_filter1d(energy, window, mode="constant").max(initial=0.0)
    floor = noise_floor(audio)
    top, bottom = SCHROEDER_FIT_DB
    if peak <= 0.0 or (floor > 0.0 and 10.0 * np.log10(peak / floor) < NOISE_MARGIN_DB - bottom):
        return None
    decay = np.cumsum(np.maximum(energy - floor, 0.0)[::-1])[::-1]
    if decay[0] <= 0.0:
        return None
    with np.errstate(divide="ignore"):
        decay_db = 10.0 * np.log10(decay / decay[0])
    if not (decay_db <= bottom).any():
        return None
    start, end = int(np.argmax(decay_db <= top)), int(np.argmax(decay_db <= bottom))
    if end - start < 2:   # an impulse: no decay to fit a line to
        return None
    times = np.arange(start, end + 1) / sample_rate
    slope = np.polyfit(times, decay_db[start:end + 1], 1)[0]   # dB per second
    return float(-60.0 / slope) if slope < 0 else None


def echo_window_samples(max_depth: float) -> int:
    """Samples the official recipe keeps of a V2 recording at 44.1 kHz: the round trip to
    ``max_depth`` metres (7,782 at 30 m; :meth:`datasets.recipes.Recipe.cut_length`), applied
    to V1 trees too so both are measured after the same window."""
    return OFFICIAL_RECIPE.cut_length(max_depth, "v2")


def late_energy_share(audio: np.ndarray, cut: int) -> Optional[float]:
    """Share (0-1) of the recording's energy in its samples ``cut`` onwards (what the official
    recipe's cut drops; 0 for a recording of at most ``cut`` samples); None when silent."""
    energy = channel_energy(audio)
    total = energy.sum()
    return float(energy[cut:].sum() / total) if total > 0 else None


def ild_db(audio: np.ndarray) -> Optional[float]:
    """Interaural level difference, ``10 log10(left energy / right energy)`` in dB (positive:
    louder on the left); None when an ear is silent."""
    left, right = np.sum(np.square(audio.astype(np.float64)), axis=1)
    return float(10.0 * np.log10(left / right)) if left > 0 and right > 0 else None


def spectral_centroid_hz(audio: np.ndarray, sample_rate: int) -> Optional[float]:
    """Magnitude-weighted mean frequency (Hz) of the spectrum of the two ears' mean, over the
    whole recording; None when silent."""
    magnitude = np.abs(np.fft.rfft(audio.astype(np.float64).mean(axis=0)))
    total = magnitude.sum()
    if total <= 0:
        return None
    frequencies = np.fft.rfftfreq(audio.shape[1], 1.0 / sample_rate)
    return float((frequencies * magnitude).sum() / total)


def audio_statistics(audio: np.ndarray, sample_rate: int, cut: int) -> Nested:
    """Every audio statistic of one recording (see the module docstring).

    Args:
        audio: (2, T) waveform, native rate, uncut.
        sample_rate: Hz.
        cut: the echo window in samples (:func:`echo_window_samples`).

    Returns:
        ``onset_ms``, ``peak_ms``, ``envelope_db_at_ms`` (a dict by time), ``rt60_s``,
        ``late_energy_share``, ``ild_db``, ``spectral_centroid_hz``; None where not measurable.
    """
    envelope = energy_envelope(audio, sample_rate)
    return {
        "onset_ms": onset_ms(envelope, sample_rate),
        "peak_ms": peak_ms(envelope, sample_rate),
        "envelope_db_at_ms": envelope_levels(envelope, sample_rate),
        "rt60_s": schroeder_rt60(audio, sample_rate),
        "late_energy_share": late_energy_share(audio, cut),
        "ild_db": ild_db(audio),
        "spectral_centroid_hz": spectral_centroid_hz(audio, sample_rate),
    }


# --------------------------------------------------------------------------------------------
# Depth: (H, W) maps in millimetres

def border_mask(shape: Tuple[int, int], share: float = BORDER_SHARE) -> np.ndarray:
    """The image's outer frame: ``share`` of the height at the top and bottom, of the width at
    the left and right (at least one pixel each)."""
    height, width = shape
    rows, columns = max(1, round(share * height)), max(1, round(share * width))
    frame = np.ones(shape, dtype=bool)
    frame[rows:height - rows, columns:width - columns] = False
    return frame


def occlusion_boundaries(filled_m: np.ndarray, jump_m: float = JUMP_M) -> np.ndarray:
    """Both pixels of every horizontal or vertical neighbour pair whose depths differ by more than
    ``jump_m`` metres (bool mask of ``filled_m``'s shape)."""
    boundary = np.zeros(filled_m.shape, dtype=bool)
    for axis in (0, 1):
        jump = np.abs(np.diff(filled_m, axis=axis)) > jump_m
        lower = [slice(None), slice(None)]
        upper = [slice(None), slice(None)]
        lower[axis], upper[axis] = slice(None, -1), slice(1, None)
        boundary[tuple(lower)] |= jump
        boundary[tuple(upper)] |= jump
    return boundary


def depth_statistics(depth_mm: np.ndarray) -> Nested:
    """Every depth statistic of one depth map.

    Holes (0, negative, NaN, ±inf) are located three ways. ``hole_share.border`` and
    ``hole_share.inside``: the share of the pixels of the outer 5 % frame (:func:`border_mask`),
    and of the rest, that are holes. ``holes_near_boundary``: the share of holes within 2 pixels
    of an occlusion boundary, a jump > 0.3 m between neighbours once every hole takes its nearest
    valid pixel's depth: a jump between neighbouring valid pixels counts, and so does one hidden
    under a band of holes that separates a near surface from a far one (the depth camera's
    shadow), placed midway across the band. ``holes_by_nearest_depth_m``: the share of holes
    whose nearest valid pixel lies in each depth bin (<1, 1-2, 2-4, >=4 m).

    Args:
        depth_mm: (H, W) depth in millimetres, any real dtype.

    Returns:
        ``valid_share``; ``median_depth_m``, ``max_depth_m`` of the valid pixels;
        ``hole_share`` (``border``, ``inside``), ``holes_near_boundary``,
        ``holes_by_nearest_depth_m`` (by bin name). None where not measurable (no valid pixel,
        no hole, no inside).
    """
    valid = valid_depth(depth_mm)
    holes = ~valid
    frame = border_mask(valid.shape)
    stats: Nested = {
        "valid_share": float(valid.mean()),
        "median_depth_m": None,
        "max_depth_m": None,
        "hole_share": {"border": float(holes[frame].mean()),
                       "inside": float(holes[~frame].mean()) if (~frame).any() else None},
        "holes_near_boundary": None,
        "holes_by_nearest_depth_m": dict.fromkeys(DEPTH_BIN_NAMES),
    }
    if not valid.any():
        return stats
    metres = np.where(valid, depth_mm, 0).astype(np.float64) / 1000.0
    stats["median_depth_m"] = float(np.median(metres[valid]))
    stats["max_depth_m"] = float(metres[valid].max())
    if not holes.any():
        return stats
    # The transform measures the distance to the nearest zero of its input: the valid pixels.
    nearest = distance_transform_edt(holes, return_distances=False, return_indices=True)
    filled = metres[nearest[0], nearest[1]]
    boundary = occlusion_boundaries(filled)
    if boundary.any():
        near = distance_transform_edt(~boundary) <= BOUNDARY_RADIUS_PX
        stats["holes_near_boundary"] = float(near[holes].mean())
    else:
        stats["holes_near_boundary"] = 0.0
    bins = np.digitize(filled[holes], DEPTH_BIN_EDGES_M)
    shares = np.bincount(bins, minlength=len(DEPTH_BIN_NAMES)) / bins.size
    stats["holes_by_nearest_depth_m"] = {
        name: float(share) for name, share in zip(DEPTH_BIN_NAMES, shares)}
    return stats


# --------------------------------------------------------------------------------------------
# Aggregation

def flatten(nested: Mapping[str, Any], prefix: str = "") -> Dict[str, Optional[float]]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``: one dotted name per statistic."""
    flat: Dict[str, Optional[float]] = {}
    for key, value in nested.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def summarise(values: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    """Median and inter-quartile range of the measured values (None and NaN are skipped).

    Returns:
        ``{"median", "q25", "q75"}`` (None when nothing was measured) and ``n``, the number of
        values measured.
    """
    measured = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if measured.size == 0:
        return {"median": None, "q25": None, "q75": None, "n": 0}
    q25, median, q75 = np.percentile(measured, [25, 50, 75])
    return {"median": float(median), "q25": float(q25), "q75": float(q75), "n": int(measured.size)}


# --------------------------------------------------------------------------------------------
# Trees

@dataclass(frozen=True)
class Tree:
    """The samples of a BatVision-format tree, as the readers list them.

    Attributes:
        root: the folder given.
        dataset: ``batvisionv1`` or ``batvisionv2`` (a synthetic world is V2).
        detected: what the folder was recognised as: a dataset name, ``synthetic`` or
            ``batvisionv2 location``.
        records: the selected splits' samples, splits in SPLITS order.
        max_depth: metres; sets the echo window of ``late_energy_share``.
    """

    root: Path
    dataset: str
    detected: str
    records: List[Record]
    max_depth: float


def _is_v2_location(folder: Path) -> bool:
    """Whether ``folder`` is one V2 location (its own ``train.csv`` in the V2 columns)."""
    path = folder / "train.csv"
    if not path.is_file():
        return False
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        header = next(csv.reader(f), [])
    return set(BatvisionV2Dataset.AUDIO_COLUMNS) <= set(header)


def open_tree(root: Path, split: str = "all", max_depth: Optional[float] = None) -> Tree:
    """Recognise the tree at ``root`` and list the samples of ``split``.

    Args:
        root: a V1 root, a V2 root, one V2 location folder or a synthetic world's folder.
        split: ``train``, ``val``, ``test`` or ``all`` (every split that has samples).
        max_depth: metres (None: the dataset's, V1 12, V2 30).

    Raises:
        DataError: ``root`` is missing or not a BatVision tree, a split CSV is bad, or the
            selection has no sample.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "no such folder")
    locations = None
    reader_root = root
    if _is_v2_location(root):
        # The readers take a root of locations; keep only this one.
        detected, reader_root, locations = "batvisionv2 location", root.parent, [root.name]
    else:
        try:
            detected = detect_dataset(root)
        except UsageError:
            raise DataError(root, "not a BatVision tree: looked for a V1 root (train.csv, "
                                  "val.csv, test.csv in the V1 columns), a V2 root (location "
                                  "folders with a V2 train.csv), a V2 location folder or a "
                                  "synthetic world (v2/ and v2.world.json)") from None
        if detected == "synthetic":
            reader_root = root / "v2"
    dataset = "batvisionv1" if detected == "batvisionv1" else "batvisionv2"
    reader = READERS[dataset]
    records: List[Record] = []
    for name in SPLITS if split == "all" else (split,):
        try:
            # Only the records are used: no tensor is made, so the recipe does not matter.
            records += reader(reader_root, name, locations=locations).records
        except DataError as error:
            if split == "all" and error.problem == f"split {name!r} has no samples":
                continue   # e.g. a world without a test split: the other splits still count
            raise
    if not records:
        raise DataError(root, f"no samples in any split ({', '.join(SPLITS)})")
    return Tree(root=root, dataset=dataset, detected=detected, records=records,
                max_depth=float(reader.default_max_depth if max_depth is None else max_depth))


def read_sample(record: Record) -> Tuple[np.ndarray, np.ndarray]:
    """One sample's raw (2, T) float32 waveform and (H, W) depth map in mm, through the
    readers' checks (a bad file raises DataError naming it)."""
    if len(record.audio_paths) == 1:
        audio = read_wav(record.audio_paths[0])
    else:
        audio = read_ear_pair(*record.audio_paths)
    return audio, read_depth_mm(record.depth_path)


@dataclass
class Measurement:
    """What :func:`measure` found.

    Attributes:
        samples: samples read.
        statistics: name → :func:`summarise` of the per-sample values.
        valid_shares: per-sample valid share (for the picture's histogram).
        envelope_ms: (K,) time grid of ``envelopes``.
        envelopes: (samples, K) envelopes in dB on that grid (NaN past a recording's end);
            empty unless asked for.
    """

    samples: int
    statistics: Dict[str, Dict[str, Optional[float]]]
    valid_shares: List[float]
    envelope_ms: np.ndarray
    envelopes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))


def measure(tree: Tree, max_samples: Optional[int] = None, keep_envelopes: bool = False,
            progress: bool = True) -> Measurement:
    """Every statistic of every (or ``max_samples`` evenly spread) sample of ``tree``.

    Args:
        tree: from :func:`open_tree`.
        max_samples: read at most this many samples, spread evenly over the records
            (deterministic; first and last included).
        keep_envelopes: keep each envelope on a 0.5 ms grid up to 250 ms (for the picture).
        progress: show a progress bar over the samples.

    Raises:
        DataError: an unreadable file.
    """
    picks = (spread_indices(len(tree.records), max_samples) if max_samples is not None
             else np.arange(len(tree.records)))
    cut = echo_window_samples(tree.max_depth)
    grid_ms = np.arange(0.0, PICTURE_SPAN_MS + PICTURE_STEP_MS / 2, PICTURE_STEP_MS)
    values: Dict[str, List[Optional[float]]] = {}
    envelopes: List[np.ndarray] = []
    valid_shares: List[float] = []
    for i in tqdm(picks, desc="stats", unit="sample", disable=not progress):
        audio, depth_mm = read_sample(tree.records[i])
        sample = flatten({**audio_statistics(audio, SAMPLE_RATE, cut),
                          **depth_statistics(depth_mm)})
        for name, value in sample.items():
            values.setdefault(name, []).append(value)
        valid_shares.append(sample["valid_share"])
        if keep_envelopes:
            envelope = energy_envelope(audio, SAMPLE_RATE)
            index = np.round(grid_ms * SAMPLE_RATE / 1000.0).astype(int)
            inside = index < envelope.size
            row = np.full(grid_ms.shape, np.nan)
            row[inside] = envelope[index[inside]]
            envelopes.append(row)
    return Measurement(
        samples=len(picks), statistics={name: summarise(v) for name, v in values.items()},
        valid_shares=valid_shares, envelope_ms=grid_ms,
        envelopes=np.array(envelopes) if envelopes else np.zeros((0, grid_ms.size)))


# --------------------------------------------------------------------------------------------
# Reference and comparison

@dataclass(frozen=True)
class Expected:
    """A reference value with its tolerance: ``abs_tol`` (|ours - value| <= abs_tol) or
    ``factor`` (ours within ``value / factor`` .. ``value * factor``, both positive)."""

    value: float
    abs_tol: Optional[float] = None
    factor: Optional[float] = None

    def accepts(self, ours: float) -> bool:
        """Whether ``ours`` is within the tolerance."""
        if self.abs_tol is not None:
            return abs(ours - self.value) <= self.abs_tol
        assert self.factor is not None
        return ours > 0 and max(ours / self.value, self.value / ours) <= self.factor

    def describe(self) -> str:
        """The tolerance as text, e.g. ``± 2`` or ``× / ÷ 2``."""
        return f"± {self.abs_tol:g}" if self.abs_tol is not None else f"× / ÷ {self.factor:g}"


@dataclass(frozen=True)
class Reference:
    """A reference file: statistics with tolerances (compared) and documented ranges (shown).

    Attributes:
        path: the file.
        statistics: name → :class:`Expected`.
        ranges: name → (min, max), shown beside our value with no verdict.
    """

    path: Path
    statistics: Dict[str, Expected]
    ranges: Dict[str, Tuple[float, float]]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _expected(path: Path, name: str, entry: Any) -> Expected:
    """Parse one ``statistics`` entry of a reference (DataError naming the file when bad)."""
    where = f"statistic {name!r}"
    if not isinstance(entry, dict) or not _number(entry.get("value")):
        raise DataError(path, f"{where}: expected {{\"value\": number, \"abs_tol\" or "
                              f"\"factor\": number}}, got {json.dumps(entry)}")
    kinds = [kind for kind in ("abs_tol", "factor") if kind in entry]
    if len(kinds) != 1 or not _number(entry[kinds[0]]):
        raise DataError(path, f"{where}: needs exactly one number of \"abs_tol\" or \"factor\", "
                              f"got {json.dumps(entry)}")
    value, tolerance = float(entry["value"]), float(entry[kinds[0]])
    if kinds[0] == "abs_tol":
        if tolerance < 0:
            raise DataError(path, f"{where}: abs_tol must be >= 0, got {tolerance:g}")
        return Expected(value, abs_tol=tolerance)
    if tolerance < 1 or value <= 0:
        raise DataError(path, f"{where}: a factor tolerance needs factor >= 1 and value > 0, "
                              f"got factor {tolerance:g}, value {value:g}")
    return Expected(value, factor=tolerance)


def load_reference(path: Path) -> Reference:
    """Read a reference JSON: ``{"statistics": {name: {"value", "abs_tol" | "factor"}},
    "ranges": {name: {"min", "max"}}}`` (``ranges`` optional; other keys, such as a ``note``,
    are documentation).

    Raises:
        DataError: naming ``path``: missing, unreadable, not JSON, or an entry of the wrong form.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "reference file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(path, f"unreadable reference ({exc.strerror})") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"reference is not JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("statistics"), dict) \
            or not data["statistics"]:
        raise DataError(path, "expected a JSON object with a non-empty \"statistics\" object")
    statistics = {name: _expected(path, name, entry)
                  for name, entry in data["statistics"].items()}
    ranges: Dict[str, Tuple[float, float]] = {}
    for name, entry in (data.get("ranges") or {}).items():
        if not isinstance(entry, dict) or not _number(entry.get("min")) \
                or not _number(entry.get("max")) or entry["min"] > entry["max"]:
            raise DataError(path, f"range {name!r}: expected {{\"min\": a, \"max\": b}} with "
                                  f"a <= b, got {json.dumps(entry)}")
        ranges[name] = (float(entry["min"]), float(entry["max"]))
    return Reference(path=path, statistics=statistics, ranges=ranges)


WITHIN, OUTSIDE, NOT_MEASURED = "within", "outside", "not measured"


@dataclass(frozen=True)
class Row:
    """One compared statistic: our summary, the reference and the verdict."""

    name: str
    median: Optional[float]
    q25: Optional[float]
    q75: Optional[float]
    expected: Expected
    verdict: str   # WITHIN, OUTSIDE or NOT_MEASURED

    def line(self) -> str:
        """The row as one printed line."""
        ours = ("not measured" if self.median is None else
                f"{self.median:.4g} (IQR {self.q25:.4g} .. {self.q75:.4g})")
        return (f"{self.name}: ours {ours}; reference {self.expected.value:.4g} "
                f"{self.expected.describe()}: {self.verdict}")


def compare(statistics: Mapping[str, Mapping[str, Optional[float]]],
            reference: Reference) -> List[Row]:
    """Our medians against each statistic of ``reference``, in the reference's order.

    Args:
        statistics: name → ``{"median", "q25", "q75", ...}`` (:func:`summarise`).
        reference: from :func:`load_reference`.

    Returns:
        one :class:`Row` per reference statistic; ``not measured`` where we have no median.
    """
    rows = []
    for name, expected in reference.statistics.items():
        summary = statistics.get(name) or {}
        median = summary.get("median")
        verdict = (NOT_MEASURED if median is None else
                   WITHIN if expected.accepts(median) else OUTSIDE)
        rows.append(Row(name, median, summary.get("q25"), summary.get("q75"), expected, verdict))
    return rows


# --------------------------------------------------------------------------------------------
# Output

def report(tree: Tree, split: str, found: Measurement) -> Dict[str, Any]:
    """The JSON document written by ``--out``."""
    return {"root": os.path.abspath(tree.root), "dataset": tree.dataset,
            "detected": tree.detected, "split": split, "max_depth_m": tree.max_depth,
            "sample_rate_hz": SAMPLE_RATE,
            "echo_window_samples": echo_window_samples(tree.max_depth),
            "samples": found.samples, "statistics": found.statistics}


def save_picture(path: Path, found: Measurement, reference: Optional[Reference]) -> None:
    """Two panels: the median envelope (dB vs ms) with its inter-quartile band, the reference's
    ``envelope_db_at_ms.*`` points overlaid with their tolerance; a histogram of valid share."""
    from matplotlib.figure import Figure   # only when a picture is asked for (slow import)

    figure = Figure(figsize=(11, 4), layout="constrained")
    left, right = figure.subplots(1, 2)
    measured = ~np.all(np.isnan(found.envelopes), axis=0) if found.envelopes.size else None
    if measured is not None and measured.any():
        with warnings.catch_warnings():   # -inf levels (silence) make the percentiles warn
            warnings.simplefilter("ignore", RuntimeWarning)
            q25, median, q75 = np.nanpercentile(found.envelopes[:, measured], [25, 50, 75],
                                                 axis=0)
        times = found.envelope_ms[measured]
        left.fill_between(times, q25, q75, alpha=0.3, label="inter-quartile range")
        left.plot(times, median, label=f"median of {found.samples} samples")
    if reference is not None:
        points = [(float(name.rpartition(".")[2]), expected)
                  for name, expected in reference.statistics.items()
                  if name.startswith("envelope_db_at_ms.")]
        if points:
            left.errorbar([t for t, _ in points], [e.value for _, e in points],
                          yerr=[e.abs_tol or 0.0 for _, e in points], fmt="o", color="black",
                          capsize=3, label=f"reference ({reference.path.name})")
    left.set_xlabel("time from the recording's start (ms)")
    left.set_ylabel("energy envelope (dB below its maximum)")
    left.set_ylim(bottom=-60, top=3)
    left.legend(loc="best")
    right.hist(found.valid_shares, bins=20, range=(0.0, 1.0))
    right.set_xlabel("valid depth share")
    right.set_ylabel("samples")
    figure.savefig(path)


def _format(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4g}"


def print_statistics(found: Measurement) -> None:
    """One line per statistic: name, median, inter-quartile range, samples measured."""
    width = max(map(len, found.statistics), default=0)
    for name, summary in found.statistics.items():
        print(f"{name:<{width}}  {_format(summary['median']):>9}  "
              f"[{_format(summary['q25'])} .. {_format(summary['q75'])}]  n={summary['n']}")


def _check_writable(parser: argparse.ArgumentParser, flag: str, path: Optional[str]) -> None:
    """Refuse an output whose folder is missing now, not after the whole pass over the data."""
    if path is not None and not Path(path).resolve().parent.is_dir():
        parser.error(f"{flag} {path}: folder {Path(path).resolve().parent} does not exist")


def build_parser() -> argparse.ArgumentParser:
    """The command's flags (one-line argparse errors, exit 2, as every script of the project)."""
    parser = ArgumentParser(__doc__)
    parser.prog = "python -m datasets.stats"
    parser.add_argument("root", metavar="ROOT",
                        help="a BatVision V1 root, V2 root, V2 location folder or synthetic "
                             "world folder (read only)")
    parser.add_argument("--split", choices=SPLIT_CHOICES, default="all",
                        help="split to measure; all: every split that has samples")
    parser.add_argument("--max_samples", type=positive_int, default=None,
                        help="measure at most N samples, spread evenly over the split(s) "
                             "(deterministic; None: all)")
    parser.add_argument("--max_depth", type=positive_float, default=None,
                        help="metres; late_energy_share counts the energy after the official "
                             "echo window int(2 * max_depth / 340 * 44100) samples (None: the "
                             "dataset's, V1 12, V2 30)")
    parser.add_argument("--out", default="stats.json",
                        help="JSON file to write: {root, dataset, samples, statistics: {name: "
                             "{median, q25, q75, n}}}")
    parser.add_argument("--picture", default=None, metavar="FILE.png",
                        help="also draw the median energy envelope with its inter-quartile band "
                             "(and the reference's envelope points with --compare) and a "
                             "histogram of the valid depth share")
    parser.add_argument("--compare", default=None, metavar="REF.json",
                        help="check our medians against a reference's values and tolerances, "
                             "e.g. datasets/reference/batvision_v2_real.json")
    parser.add_argument("--strict", action="store_true",
                        help="with --compare: exit 1 when a statistic is outside its tolerance "
                             "or not measured")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, measure the tree, write the JSON (and picture), print the statistics and
    the comparison; the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.strict and args.compare is None:
        parser.error("--strict needs --compare REF.json")
    _check_writable(parser, "--out", args.out)
    _check_writable(parser, "--picture", args.picture)
    with user_errors():
        # Before the long pass: a bad reference should not cost one.
        reference = load_reference(Path(args.compare)) if args.compare else None
        tree = open_tree(Path(args.root), args.split, args.max_depth)
        found = measure(tree, args.max_samples, keep_envelopes=args.picture is not None,
                        progress=not args.no_progress)
        outputs = [(args.out, lambda path: path.write_text(
            json.dumps(report(tree, args.split, found), indent=2) + "\n"))]
        if args.picture is not None:
            outputs.append((args.picture, lambda path: save_picture(path, found, reference)))
        for path, write in outputs:
            try:
                write(Path(path))
            except OSError as exc:
                raise UsageError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    print_statistics(found)
    print(f"{tree.dataset} ({tree.detected}) at {args.root}, split {args.split}: "
          f"{found.samples} of {len(tree.records)} samples; statistics written to {args.out}"
          + (f", picture to {args.picture}" if args.picture else ""))
    if reference is None:
        return 0
    rows = compare(found.statistics, reference)
    print(f"compared with {reference.path}:")
    for row in rows:
        print(f"  {row.line()}")
    for name, (low, high) in reference.ranges.items():
        ours = (found.statistics.get(name) or {}).get("median")
        ours_text = "not measured" if ours is None else f"{ours:.4g}"
        print(f"  {name}: ours {ours_text}; typical range {low:g} .. {high:g} "
              "(documentation, no verdict)")
    within = sum(row.verdict == WITHIN for row in rows)
    print(f"{within} of {len(rows)} statistics within tolerance")
    return 1 if args.strict and within < len(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
