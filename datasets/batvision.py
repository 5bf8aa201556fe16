"""Readers of the BatVision V1 and V2 on-disk formats (layouts: ``datasets.synthetic.writer``).

This module parses the split CSVs and reads the WAV / ``.npy`` / JPEG files exactly as they are
on disk; every tensor operation lives in the named recipe (``datasets.recipes``) and the optional
preprocessing cache in ``datasets.cache``. Items follow the sample contract of
``datasets.sample``. Bad input raises ``DataError`` naming the file — never a silent zero sample.

A dataset's ``data_fingerprint`` identifies the split's content cheaply (the CSVs' bytes and every
referenced file's size and modification time, no file read): it keys the preprocessing cache and
lets a run record which data it saw.
"""
from __future__ import annotations

import csv
import hashlib
import os
import struct
import tokenize
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from scipy.io import wavfile
from torch.utils.data import Dataset

from datasets.cache import SCALED_UINT8, SampleCache, StoredForm, open_or_build
from datasets.errors import DataError
from datasets.recipes import AUDIO_MODES, SAMPLE_RATE, Recipe, get_recipe, rgb_tensor
from datasets.sample import (AUDIO, DEPTH, META, RGB, SENSOR_VALID, TRUTHS, VALID, Sample,
                             dense_depth_path)

PathLike = Union[str, "os.PathLike[str]"]
SplitCsv = Tuple[Path, bytes]   # a split CSV and its bytes, as read
INT32_FULL_SCALE = 2.0 ** 31


def cache_forms(audio: str, recipe: Recipe) -> Dict[str, StoredForm]:
    """The stored forms a reader asks its cache for beyond the defaults (:mod:`datasets.cache`).

    Log-scaled spectrograms keep their precision in 8 bits; linear magnitudes (the official
    recipe), waveforms and spectrograms with phase channels (signed) take the default forms.

    Args:
        audio: one of :data:`datasets.recipes.AUDIO_MODES`.
        recipe: the preprocessing recipe.
    """
    if audio in ("spectrogram", "mel") and recipe.magnitude_scale is not None:
        return {AUDIO: SCALED_UINT8}
    return {}


@dataclass(frozen=True)
class Record:
    """Where one sample's files are.

    Attributes:
        location: location name (V2 folder; V1: first folder of the depth path).
        index: V2 ``index`` column; V1 row number in the split CSV.
        audio_paths: ``(wav,)`` for V2, ``(left .npy, right .npy)`` for V1.
        depth_path: depth ``.npy`` (millimetres).
        camera_path: camera JPEG, ``None`` when the CSV has no camera column.
    """

    location: str
    index: int
    audio_paths: Tuple[Path, ...]
    depth_path: Path
    camera_path: Optional[Path]


# --------------------------------------------------------------------------------------------
# File readers: one per file kind, each turning any failure into a DataError naming the file.

def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        return np.load(path, allow_pickle=False)
    # numpy re-parses a header that is not a Python literal as a Python 2 header, whose tokenizer
    # raises TokenError on damage such as an unclosed bracket.
    except (OSError, ValueError, EOFError, tokenize.TokenError) as exc:
        raise DataError(path, f"corrupt .npy ({exc})") from exc


def _is_real_number(dtype: np.dtype) -> bool:
    """Integer or floating point: bool, complex, strings and objects are not measurements."""
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def read_wav(path: Path) -> np.ndarray:
    """Read a V2 recording: PCM WAV, 2 channels, 44.1 kHz, int32.

    Returns:
        (2, T) float32 in [-1, 1) (int32 / 2**31, as torchaudio), left ear first.
    """
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        rate, data = wavfile.read(path)
    # Beyond its ValueErrors, scipy 1.17 lets damage surface as UnboundLocalError (no `data`
    # chunk before the end) and ZeroDivisionError (a zero channel count or block alignment).
    except (OSError, ValueError, EOFError, struct.error, UnboundLocalError,
            ZeroDivisionError) as exc:
        raise DataError(path, f"corrupt WAV ({type(exc).__name__}: {exc})") from exc
    # scipy returns the frames of a truncated file with only a warning: compare the RIFF size.
    with open(path, "rb") as f:
        riff_size = struct.unpack("<4sI", f.read(8))[1] + 8
    if riff_size != 0xFFFFFFFF + 8 and path.stat().st_size < riff_size:
        raise DataError(path, f"truncated WAV: {path.stat().st_size} bytes, the header says "
                              f"{riff_size}")
    channels = 1 if data.ndim == 1 else data.shape[1]
    if channels != 2:
        raise DataError(path, f"WAV has {channels} channel(s), expected 2")
    if rate != SAMPLE_RATE:
        raise DataError(path, f"WAV sample rate is {rate} Hz, expected {SAMPLE_RATE}")
    if data.dtype != np.int32:
        raise DataError(path, f"WAV samples are {data.dtype}, expected int32")
    return (data.T / INT32_FULL_SCALE).astype(np.float32)


def read_ear_pair(left: Path, right: Path) -> np.ndarray:
    """Read a V1 recording: one 1-D real ``.npy`` per ear, equal lengths, finite samples of
    magnitude at most 2**31 (stored scale unknown: [-1, 1] floats or raw PCM counts both pass).

    Returns:
        (2, T) float32 waveform, left ear first.

    Raises:
        DataError: naming the bad ear; for unequal lengths, the shorter one (more likely cut).
    """
    ears = []
    for path in (left, right):
        ear = _load_npy(path)
        if ear.ndim != 1 or not _is_real_number(ear.dtype):
            raise DataError(path, f"expected a 1-D real numeric array, got {ear.dtype} "
                                  f"{ear.shape}")
        ear = ear.astype(np.float32)
        bad = np.count_nonzero(~np.isfinite(ear))
        if bad:
            raise DataError(path, f"{bad} of {len(ear)} samples are NaN or infinite")
        peak = float(np.abs(ear).max(initial=0.0))
        if peak > INT32_FULL_SCALE:   # beyond every PCM scale; its spectrogram would overflow
            raise DataError(path, f"peak |sample| {peak:.3g} exceeds 2**31: not a recording")
        ears.append(ear)
    if len(ears[0]) != len(ears[1]):
        (short, n_short), (other, n_other), side = (
            ((left, len(ears[0])), (right, len(ears[1])), "right")
            if len(ears[0]) < len(ears[1]) else
            ((right, len(ears[1])), (left, len(ears[0])), "left"))
        raise DataError(short, f"{n_short} samples, but the {side} ear {other} has {n_other}")
    return np.stack(ears)


def check_audio_length(waveform: np.ndarray, path: Path, recipe: Recipe, max_depth: float,
                       fmt: str) -> None:
    """Refuse a (2, T) recording shorter than ``recipe.required_samples(max_depth, fmt)``.

    Raises:
        DataError: naming ``path``.
    """
    needed = recipe.required_samples(max_depth, fmt)
    if waveform.shape[1] < needed:
        raise DataError(path, f"{waveform.shape[1]} samples, too short: the {recipe.name} recipe "
                              f"needs at least {needed} (STFT and echo window)")


def read_depth_mm(path: Path) -> np.ndarray:
    """Read a depth map: 2-D ``.npy`` in millimetres (V2 uint16, V1 float with NaN/±inf).

    Returns:
        (H, W) array in its stored dtype; interpretation of holes is the recipe's job.
    """
    depth = _load_npy(path)
    if depth.ndim != 2 or not _is_real_number(depth.dtype):
        raise DataError(path, f"expected a 2-D real numeric depth map, got {depth.dtype} "
                              f"{depth.shape}")
    if depth.size == 0:
        raise DataError(path, f"empty depth map of shape {depth.shape}")
    return depth


def read_camera(path: Path) -> np.ndarray:
    """Read a camera JPEG as (H, W, 3) uint8 RGB."""
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    # PIL reports corrupt data as these; DecompressionBombError is a header claiming a size
    # far beyond any camera's (it derives from Exception only).
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(path, f"corrupt image ({exc})") from exc


def read_csv(path: Path, required: Sequence[str]) -> Tuple[List[Dict[str, str]], bytes]:
    """Read a split CSV and check that it has the ``required`` columns, each filled in every row.

    Returns:
        the rows as dicts, and the file's bytes (part of the data fingerprint).
    """
    if not path.is_file():
        raise DataError(path, "split CSV not found")
    raw = path.read_bytes()
    try:
        reader = csv.DictReader(raw.decode("utf-8-sig").splitlines())
        header = reader.fieldnames or []
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"unreadable CSV ({exc})") from exc
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; header is {header}")
    for line, row in enumerate(rows, start=2):
        empty = [c for c in required if not row.get(c)]
        if empty:
            raise DataError(path, f"line {line}: empty {empty}")
    return rows, raw


def _parse_index(value: str, csv_path: Path) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise DataError(csv_path, f"index {value!r} is not an integer") from exc


def _keep_locations(available: Sequence[str], requested: Optional[Iterable[str]],
                    root: Path) -> List[str]:
    """Sorted ``available`` names, or the ``requested`` ones (an unknown name → DataError)."""
    available = sorted(set(available))
    if requested is None:
        return available
    requested = sorted(set([requested] if isinstance(requested, str) else requested))
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise DataError(root, f"no location(s) {unknown}; available: {available}")
    return requested


# --------------------------------------------------------------------------------------------
# Label sanity

# Median valid depth (mm) below which a split's depth looks stored in metres: 50 mm is 5 cm,
# while rooms seen by a depth camera have medians of metres, and a metre map read as mm has
# medians of a few units.
MIN_MEDIAN_DEPTH_MM = 50.0


def spread_indices(length: int, count: int) -> np.ndarray:
    """Up to ``count`` distinct indices spread evenly over ``range(length)``, first and last
    included: a cheap, deterministic sample of a split that covers all its locations."""
    return np.unique(np.linspace(0, length - 1, min(length, count)).round().astype(int))


def valid_depth(depth_mm: np.ndarray) -> np.ndarray:
    """Bool mask of the pixels of a raw depth map that hold a depth: finite and > 0 (what the
    recipes keep; 0, negative, NaN and ±inf are holes)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(depth_mm) & (depth_mm > 0)


def check_labels(dataset: "_BatvisionDataset", max_files: int = 32) -> None:
    """Stop on a split whose depth labels cannot be right, from a cheap deterministic sample.

    Reads up to ``max_files`` raw depth maps evenly spaced over the split. Valid pixels are
    finite and > 0 (what the recipes keep). The split is refused when none of them has a valid
    pixel (a run would train on loss 0 and score nothing), or when the median of their per-map
    median valid depth is below ``MIN_MEDIAN_DEPTH_MM`` (metres stored where millimetres are
    expected: every depth would be divided by 1000 again).

    Args:
        dataset: a V1 or V2 reader.
        max_files: depth maps to read at most.

    Raises:
        DataError: naming the dataset root, the split and the evidence; or an unreadable map.
    """
    n = len(dataset.records)
    picks = spread_indices(n, max_files)
    medians: List[float] = []
    example: Optional[Path] = None
    for i in picks:
        path = dataset.records[i].depth_path
        depth = read_depth_mm(path)
        valid = depth[valid_depth(depth)]
        if valid.size:
            medians.append(float(np.median(valid)))
            example = example or path
    where = f"split {dataset.split!r}"
    if not medians:
        raise DataError(dataset.root, f"{where}: no valid depth pixel (all 0, negative or NaN) in "
                                      f"the {len(picks)} depth maps checked of {n}, e.g. "
                                      f"{dataset.records[picks[0]].depth_path}: nothing to train "
                                      "on or score")
    median = float(np.median(medians))
    if median < MIN_MEDIAN_DEPTH_MM:
        raise DataError(dataset.root, f"{where}: median valid depth is {median:.3g} mm in the "
                                      f"{len(medians)} depth maps checked (e.g. {example}), below "
                                      f"{MIN_MEDIAN_DEPTH_MM:g} mm: depth looks stored in metres, "
                                      "the readers expect millimetres")


# --------------------------------------------------------------------------------------------
# Datasets

class _BatvisionDataset(Dataset):
    """Shared reader: records → raw arrays → recipe tensors (or the preprocessing cache).

    Subclasses list the records of a split (``_scan``) and name their format.
    """

    format: ClassVar[str]
    default_max_depth: ClassVar[float]

    def __init__(self, root: PathLike, split: str, max_depth: Optional[float] = None,
                 image_size: int = 256, audio: str = "spectrogram", use_rgb: bool = False,
                 recipe: str = "default", locations: Optional[Iterable[str]] = None,
                 cache_dir: Optional[PathLike] = None,
                 ground_truth: Optional[str] = None, truth: str = "sensor") -> None:
        if audio not in AUDIO_MODES:
            raise ValueError(f"unknown audio mode {audio!r}; expected one of {AUDIO_MODES}")
        if truth not in TRUTHS:
            raise ValueError(f"unknown truth {truth!r}; expected one of {TRUTHS}")
        self.truth = truth
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.root = Path(os.path.abspath(root))
        self.split = split
        self.max_depth = float(self.default_max_depth if max_depth is None else max_depth)
        if self.max_depth <= 0:
            raise ValueError(f"max_depth must be positive, got {self.max_depth}")
        self.image_size = image_size
        self.audio = audio
        self.use_rgb = use_rgb
        self.recipe: Recipe = get_recipe(recipe)
        self.ground_truth: Recipe = get_recipe(ground_truth or recipe)
        cut = self.recipe.cut_length(self.max_depth, self.format)
        if cut is not None and cut < self.recipe.min_audio_samples:
            raise ValueError(f"max_depth {self.max_depth} m keeps {cut} samples; the STFT needs "
                             f"at least {self.recipe.min_audio_samples}")
        if not self.root.is_dir():
            raise DataError(self.root, "dataset root not found")
        self.records, self._csvs = self._scan(locations)
        if not self.records:
            raise DataError(self.root, f"split {split!r} has no samples")
        self.locations = sorted({r.location for r in self.records})
        if truth == "dense" and not dense_depth_path(self.records[0].depth_path).is_file():
            raise DataError(dense_depth_path(self.records[0].depth_path),
                            "no complete depth beside the sensor's depth map: dense truth exists "
                            "only in simulated worlds (real recordings have holes and nothing "
                            "behind them); score against the sensor's depth instead (evaluate.py "
                            "--truth sensor, the default)")
        self._cache: Optional[SampleCache] = None
        if cache_dir is not None:
            params = {
                "format": self.format, "root": str(self.root), "split": split,
                "locations": self.locations, "image_size": image_size, "audio": audio,
                "use_rgb": use_rgb, "max_depth": self.max_depth, "recipe": self.recipe.params(),
                "data_fingerprint": self.data_fingerprint,
            }
            if self.ground_truth != self.recipe:   # earlier caches keep their keys
                params["ground_truth"] = self.ground_truth.params()
            if truth != "sensor":
                params["truth"] = truth
            self._cache = open_or_build(
                cache_dir, f"{self.format}-{split}", params, len(self.records), self.load_sample,
                forms=cache_forms(audio, self.recipe))

    def _scan(self, locations: Optional[Iterable[str]]) -> Tuple[List[Record], List[SplitCsv]]:
        """The split's records (kept locations only) and the CSVs they were read from."""
        raise NotImplementedError

    @cached_property
    def data_fingerprint(self) -> str:
        """sha256 (hex) of the split's content as seen from outside the files.

        Covers the format, every split CSV read (path relative to the root, bytes) and, for every
        record, each referenced file (audio, depth, and the camera image whenever the CSV names
        one, used or not) by path relative to the root, size and ``st_mtime_ns``. Only ``stat`` is
        called, so it is cheap; a missing or unreadable file is hashed as such (reading it is
        what reports it). The root's own location does not enter: a tree moved with its times
        kept (``cp -a``, ``rsync -a``) keeps its fingerprint.
        """
        digest = hashlib.sha256(f"batvision-{self.format}\n".encode())
        for path, raw in self._csvs:
            digest.update(f"csv {self._relative(path)} {len(raw)}\n".encode())
            digest.update(raw)
        for record in self.records:
            paths = record.audio_paths + (record.depth_path,)
            if self.truth == "dense":
                paths += (dense_depth_path(record.depth_path),)
            if record.camera_path is not None:
                paths += (record.camera_path,)
            for path in paths:
                try:
                    stat = os.stat(path)
                    entry = f"{stat.st_size} {stat.st_mtime_ns}"
                except (OSError, ValueError):   # ValueError: a NUL byte in a damaged CSV path
                    entry = "unreadable"
                digest.update(f"{self._relative(path)} {entry}\n".encode())
        return digest.hexdigest()

    def _relative(self, path: Path) -> str:
        return os.path.relpath(path, self.root)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Sample:
        i = range(len(self.records))[i]
        return self._cache[i] if self._cache is not None else self.load_sample(i)

    def load_sample(self, i: int) -> Sample:
        """Read and preprocess sample ``i`` from the source files, bypassing any cache."""
        record = self.records[i]
        if len(record.audio_paths) == 1:
            waveform = read_wav(record.audio_paths[0])
        else:
            waveform = read_ear_pair(*record.audio_paths)
        check_audio_length(waveform, record.audio_paths[0], self.recipe, self.max_depth,
                           self.format)
        depth, valid = self.ground_truth.depth(
            read_depth_mm(record.depth_path), self.image_size, self.max_depth)
        sensor_valid = valid
        if self.truth == "dense":
            depth, valid = self.ground_truth.depth(
                read_depth_mm(dense_depth_path(record.depth_path)), self.image_size,
                self.max_depth)
        sample: Sample = {
            AUDIO: self.recipe.audio(waveform, self.audio, self.image_size, self.max_depth,
                                     self.format),
            DEPTH: depth,
            VALID: valid,
        }
        if self.truth == "dense":
            sample[SENSOR_VALID] = sensor_valid
        if self.use_rgb:
            sample[RGB] = rgb_tensor(read_camera(record.camera_path), self.image_size)
        sample[META] = self._meta(record)
        return sample

    def _meta(self, record: Record) -> Dict[str, object]:
        if len(record.audio_paths) == 1:
            audio = {"audio_path": str(record.audio_paths[0])}
        else:
            audio = {"audio_path_left": str(record.audio_paths[0]),
                     "audio_path_right": str(record.audio_paths[1])}
        return {"location": record.location, "index": record.index, **audio,
                "depth_path": str(record.depth_path),
                "camera_path": "" if record.camera_path is None else str(record.camera_path)}


class BatvisionV2Dataset(_BatvisionDataset):
    """BatVision V2 (Mines Paris): a root of location folders, each with its own split CSVs.

    Location folders are read in sorted order (never raw ``os.listdir`` order); a stray file or
    hidden folder in the root is skipped with a warning (the official loader crashes on it).

    Args:
        root: folder holding only location folders.
        split: ``train``, ``val`` or ``test`` (reads ``<root>/<location>/<split>.csv``).
        max_depth: metres; depth is clipped to it and the audio cut to its echo window
            (default 30.0).
        image_size: S, side of the square audio, depth and rgb tensors.
        audio: ``spectrogram`` | ``mel`` | ``waveform`` (see ``datasets.recipes``).
        use_rgb: also return the camera image as ``rgb``.
        recipe: ``default`` or ``official`` (see ``datasets.recipes``).
        locations: location names to keep (default all); an unknown name raises DataError.
        cache_dir: when given, preprocess the split once into a cache there and serve from it.
        ground_truth: the recipe whose depth rule makes ``depth`` and ``valid`` (``None``:
            ``recipe``). Models trained on different recipes are compared on one ground truth:
            the official recipe blends holes into their neighbours and counts +inf as valid.
        truth: ``sensor`` (the depth maps the CSVs name) or ``dense`` (a simulated world's
            complete depth beside each of them, ``datasets.sample.dense_depth_path``; the
            sample then also holds ``sensor_valid``). DataError where there is none.

    Audio must hold at least ``max(n_fft // 2 + 1, cut)`` samples, else DataError: a shorter
    recording would be stretched over the same grid as full-length ones.
    """

    format = "v2"
    default_max_depth = 30.0
    AUDIO_COLUMNS = ("index", "audio path", "audio file name", "depth path", "depth file name")
    CAMERA_COLUMNS = ("camera path", "camera file name")

    def _scan(self, locations: Optional[Iterable[str]]) -> Tuple[List[Record], List[SplitCsv]]:
        folders = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):   # e.g. .ipynb_checkpoints
                folders.append(entry.name)
            else:
                warnings.warn(f"{entry}: not a location folder, skipped", stacklevel=3)
        required = self.AUDIO_COLUMNS + (self.CAMERA_COLUMNS if self.use_rgb else ())
        records: List[Record] = []
        csvs: List[SplitCsv] = []
        for location in _keep_locations(folders, locations, self.root):
            csv_path = self.root / location / f"{self.split}.csv"
            if not csv_path.is_file():
                raise DataError(csv_path, f"location folder has no {self.split}.csv")
            rows, raw = read_csv(csv_path, required)
            csvs.append((csv_path, raw))
            for row in rows:
                camera = (self.root / row["camera path"] / row["camera file name"]
                          if row.get("camera path") and row.get("camera file name") else None)
                records.append(Record(
                    location=location, index=_parse_index(row["index"], csv_path),
                    audio_paths=(self.root / row["audio path"] / row["audio file name"],),
                    depth_path=self.root / row["depth path"] / row["depth file name"],
                    camera_path=camera))
        return records, csvs


class BatvisionV1Dataset(_BatvisionDataset):
    """BatVision V1 (UC Berkeley): one root with ``train.csv``, ``val.csv``, ``test.csv``.

    Audio is one 1-D ``.npy`` per ear; depth a float ``.npy`` in mm that may hold NaN and ±inf.
    The location of a sample is the first folder of its depth path.

    Args:
        root: folder with the split CSVs (paths in them are relative to it).
        split: ``train``, ``val`` or ``test``.
        max_depth: metres (default 12.0).
        image_size, audio, recipe, cache_dir, ground_truth, truth: as ``BatvisionV2Dataset``,
            and the same rule on audio length.
        use_rgb: also return the ``camera path left`` image; DataError if the CSV lacks it.
        locations: location names to keep (default all); an unknown name raises DataError.
    """

    format = "v1"
    default_max_depth = 12.0
    AUDIO_COLUMNS = ("depth path", "audio path left", "audio path right")
    CAMERA_COLUMN = "camera path left"

    def _scan(self, locations: Optional[Iterable[str]]) -> Tuple[List[Record], List[SplitCsv]]:
        csv_path = self.root / f"{self.split}.csv"
        required = self.AUDIO_COLUMNS + ((self.CAMERA_COLUMN,) if self.use_rgb else ())
        rows, raw = read_csv(csv_path, required)
        records = []
        for row_number, row in enumerate(rows):
            camera = row.get(self.CAMERA_COLUMN)
            records.append(Record(
                location=Path(row["depth path"]).parts[0], index=row_number,
                audio_paths=(self.root / row["audio path left"],
                             self.root / row["audio path right"]),
                depth_path=self.root / row["depth path"],
                camera_path=self.root / camera if camera else None))
        keep = _keep_locations([r.location for r in records], locations, self.root)
        return [r for r in records if r.location in keep], [(csv_path, raw)]
