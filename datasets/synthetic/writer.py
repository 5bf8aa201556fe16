"""Write recordings in the exact BatVision V1 and V2 on-disk formats.

This is the one place that knows how to *write* the formats; ``datasets.batvision`` is the one
place that reads them. The synthetic world, the tests and the benchmarks all write through here.

V2 (one folder per location, root holds only location folders)::

    <root>/<Location>/{train,val,test}.csv
    <root>/<Location>/audio/audio_<i>.wav      PCM int32, 2 ch, 44.1 kHz, 24-bit data (low byte 0)
    <root>/<Location>/depth/depth_<i>.npy      uint16 (H, W), millimetres, 0 = invalid
    <root>/<Location>/camera/camera_<i>.jpeg   RGB JPEG, same size as depth
    <root>/<Location>/depth_dense/depth_<i>.npy   simulated worlds only: the complete depth

V1 (one root, CSVs at the top, paths relative to the root)::

    <root>/{train,val,test}.csv   columns: time, camera path left, depth path,
                                  audio path left, audio path right
    <root>/<Location>/audio/<stamp>_left.npy, <stamp>_right.npy   float32 (T,)
    <root>/<Location>/depth/<stamp>.npy                           float32 (H, W) mm, NaN holes
    <root>/<Location>/camera/<stamp>_left.jpeg                    RGB JPEG
    <root>/<Location>/depth_dense/<stamp>.npy                     simulated worlds only

A recording that carries its complete depth (a simulated one) gets it written beside the sensor
map (``datasets.sample.dense_depth_path``), in the sensor map's encoding, without holes.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image
from scipy.io import wavfile

from datasets.sample import SPLITS, dense_depth_path

SAMPLE_RATE = 44_100
V2_WAV_FRAMES = 20_000
V2_COLUMNS = (
    "index", "time", "left audio time", "right audio time", "audio path", "audio file name",
    "camera time", "camera path", "camera file name", "depth time", "depth path", "depth file name",
)
V1_COLUMNS = ("time", "camera path left", "depth path", "audio path left", "audio path right")
JPEG_QUALITY = 90


@dataclass
class Recording:
    """One synchronised capture held in memory.

    Attributes:
        audio: (2, T) float waveform in [-1, 1], left ear first.
        depth_mm: (H, W) float depth in millimetres; 0 or NaN marks an invalid pixel.
        rgb: (H, W, 3) uint8 image of the same view.
        time: capture time in UNIX seconds.
        complete_depth_mm: (H, W) float depth in millimetres of every pixel, or None (what a
            real recording has: no such thing).
    """

    audio: np.ndarray
    depth_mm: np.ndarray
    rgb: np.ndarray
    time: float
    complete_depth_mm: Optional[np.ndarray] = None


def audio_to_int32(audio: np.ndarray) -> np.ndarray:
    """(2, T) float in [-1, 1] → (T, 2) int32 carrying 24-bit audio (low byte 0), as real V2 WAVs."""
    pcm24 = np.round(np.clip(audio, -1.0, 1.0 - 2.0 ** -23) * 2.0 ** 23).astype(np.int64)
    return (pcm24 * 256).astype(np.int32).T.copy()


def write_wav_int32(path: Path, audio: np.ndarray) -> None:
    """Write a (2, T) float waveform as a 2-channel 44.1 kHz int32 WAV."""
    wavfile.write(path, SAMPLE_RATE, audio_to_int32(audio))


def write_jpeg(path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb, mode="RGB").save(path, format="JPEG", quality=JPEG_QUALITY)


def v2_depth(depth_mm: np.ndarray) -> np.ndarray:
    """V2's depth encoding: uint16 millimetres, 0 = invalid (NaN and inf too)."""
    depth = np.nan_to_num(depth_mm, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(np.round(depth), 0, 65535).astype(np.uint16)


def v1_depth(depth_mm: np.ndarray) -> np.ndarray:
    """V1's depth encoding: float32 millimetres, NaN = invalid."""
    depth = depth_mm.astype(np.float32)
    return np.where(depth > 0, depth, np.float32(np.nan))


def write_depth(path: Path, depth_mm: np.ndarray, encode: Callable[[np.ndarray], np.ndarray],
                atomic: bool = False) -> None:
    """Save ``encode(depth_mm)`` as ``.npy`` at ``path`` (its folder created); ``atomic``: through
    a temporary file, so no reader ever sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not atomic:
        np.save(path, encode(depth_mm))
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, encode(depth_mm))
    os.replace(tmp, path)


def _v1_stamp(index: int, time: float) -> str:
    """The file-name stem of a V1 sample: capture time and index."""
    return f"{time:.6f}".replace(".", "_") + f"_{index}"


def _write_csv(path: Path, columns: Tuple[str, ...], rows: List[Dict[str, object]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})


class _Writer:
    """What the two layouts share: a sample's depth maps, the sensor's and the complete one,
    written in the layout's encoding (``encode_depth``) at the layout's ``depth_path``."""

    encode_depth: Callable[[np.ndarray], np.ndarray]

    def __init__(self, root: "str | os.PathLike[str]") -> None:
        self.root = Path(root)

    def depth_path(self, location: str, index: int, time: float) -> Path:
        """The sensor depth map file of a sample."""
        raise NotImplementedError

    def add_complete_depth(self, location: str, index: int, time: float,
                           complete_mm: np.ndarray) -> None:
        """Write the complete depth of a sample written earlier, atomically (a world made before
        dense truth existed gets it added; two processes adding it write the same bytes)."""
        write_depth(dense_depth_path(self.depth_path(location, index, time)), complete_mm,
                    self.encode_depth, atomic=True)

    def _write_depths(self, depth_path: Path, rec: Recording) -> None:
        """The recording's sensor depth at ``depth_path``, and its complete depth when it has
        one."""
        write_depth(depth_path, rec.depth_mm, self.encode_depth)
        if rec.complete_depth_mm is not None:
            write_depth(dense_depth_path(depth_path), rec.complete_depth_mm, self.encode_depth)


class V2Writer(_Writer):
    """Writes recordings location by location in the V2 layout; call ``close()`` to write CSVs."""

    encode_depth = staticmethod(v2_depth)

    def __init__(self, root: "str | os.PathLike[str]") -> None:
        super().__init__(root)
        self._rows: Dict[Tuple[str, str], List[Dict[str, object]]] = {}

    def add(self, location: str, split: str, index: int, rec: Recording) -> None:
        """Write one recording's files and remember its CSV row.

        Args:
            location: location folder name (one room family per location).
            split: one of ``train``, ``val``, ``test``.
            index: sample index; appears in the file names and the ``index`` column.
            rec: the recording; ``audio`` must have exactly 20,000 frames.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        if rec.audio.shape != (2, V2_WAV_FRAMES):
            raise ValueError(f"V2 audio must be (2, {V2_WAV_FRAMES}), got {rec.audio.shape}")
        loc = self.root / location
        for sub in ("audio", "depth", "camera"):
            (loc / sub).mkdir(parents=True, exist_ok=True)
        audio_name, camera_name = f"audio_{index}.wav", f"camera_{index}.jpeg"
        depth_path = self.depth_path(location, index, rec.time)
        write_wav_int32(loc / "audio" / audio_name, rec.audio)
        self._write_depths(depth_path, rec)
        write_jpeg(loc / "camera" / camera_name, rec.rgb)
        t = float(rec.time)
        self._rows.setdefault((location, split), []).append({
            "index": index, "time": t, "left audio time": t, "right audio time": t,
            "audio path": f"{location}/audio/", "audio file name": audio_name,
            "camera time": t + 0.004, "camera path": f"{location}/camera/",
            "camera file name": camera_name,
            "depth time": t + 0.004, "depth path": f"{location}/depth/",
            "depth file name": depth_path.name,
        })

    def depth_path(self, location: str, index: int, time: float) -> Path:
        """The sensor depth map file of a sample (``time`` is not part of a V2 name)."""
        return self.root / location / "depth" / f"depth_{index}.npy"

    def close(self) -> None:
        """Write every location's three split CSVs (empty ones included, as the loader needs all)."""
        locations = sorted({loc for loc, _ in self._rows})
        for location in locations:
            for split in SPLITS:
                rows = sorted(self._rows.get((location, split), []), key=lambda r: r["index"])
                _write_csv(self.root / location / f"{split}.csv", V2_COLUMNS, rows)


class V1Writer(_Writer):
    """Writes recordings in the V1 layout; call ``close()`` to write the three root CSVs."""

    encode_depth = staticmethod(v1_depth)

    def __init__(self, root: "str | os.PathLike[str]") -> None:
        super().__init__(root)
        self._rows: Dict[str, List[Dict[str, object]]] = {s: [] for s in SPLITS}

    def add(self, location: str, split: str, index: int, rec: Recording) -> None:
        """Write one recording's files (float32 audio per ear, float32 mm depth with NaN holes)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}")
        loc = self.root / location
        for sub in ("audio", "depth", "camera"):
            (loc / sub).mkdir(parents=True, exist_ok=True)
        stamp = _v1_stamp(index, rec.time)
        left, right = (f"{location}/audio/{stamp}_{ear}.npy" for ear in ("left", "right"))
        depth_path = self.depth_path(location, index, rec.time)
        depth_rel = depth_path.relative_to(self.root).as_posix()
        camera_rel = f"{location}/camera/{stamp}_left.jpeg"
        np.save(self.root / left, rec.audio[0].astype(np.float32))
        np.save(self.root / right, rec.audio[1].astype(np.float32))
        self._write_depths(depth_path, rec)
        write_jpeg(self.root / camera_rel, rec.rgb)
        self._rows[split].append({
            "time": float(rec.time), "camera path left": camera_rel, "depth path": depth_rel,
            "audio path left": left, "audio path right": right,
        })

    def depth_path(self, location: str, index: int, time: float) -> Path:
        """The sensor depth map file of a sample."""
        return self.root / location / "depth" / f"{_v1_stamp(index, time)}.npy"

    def close(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            _write_csv(self.root / f"{split}.csv", V1_COLUMNS, self._rows[split])
