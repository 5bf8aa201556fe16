"""Preprocessed samples on disk: decode + preprocess a split once, then serve epochs from it.

A cache is one folder ``<cache_dir>/<name>-<key>/`` where ``key`` hashes the caller's parameters
(everything that shapes the tensors, and a fingerprint of the data), the number of samples and
``CACHE_FORMAT_VERSION``, so a changed parameter lands in a new folder and never reuses a stale
one. Inside::

    <key>.bin        one raw C-order (N, ...) array per tensor of the sample, in its stored form
                     (below), memory-mapped on read; ``valid`` is not stored, it is ``depth > 0``
    <key>.scale.bin  (N,) float32, the per-sample scale of a scaled form
    meta.json        the N ``meta`` dicts
    manifest.json    format version, parameters, N, and per tensor its form, shape and dtypes;
                     written last

Stored forms: what the source holds, turned back into the sample's float32 on read. Bounds are
on ``|cached - uncached|`` per value and are tested:

``rgb``: uint8 ``round(255 x)``
    ≤ 0.5/255 (+ 6e-8 of float32 rounding). The tensor is an antialiased resize of 8-bit
    pixels, so it is not exactly 8-bit itself; 16 bits would double the largest array.
``depth``: uint16 millimetres ``round(1000 d)``, at least 1 mm where ``d > 0``
    0 (bit-identical) for integer-mm sources resized by nearest neighbour (V2, default
    recipe); ≤ 0.5 mm otherwise, except that a depth in (0, 0.5 mm) (bilinear blending of a hole
    with a wall) is stored as 1 mm. Holes stay exactly 0, so ``valid`` is exact.
``audio`` log-scaled spectrograms (``(2, S, S)``, recipes with a ``magnitude_scale``: the
default one), the caller's choice (``forms``): uint8 times a scale per sample (peak / 255)
    ≤ max(x)/510 (+ float32 rounding, 2⁻²³·max(x)). On log1p magnitudes (0 to ~10) that is at
    most 0.02, a 2 % error of the linear magnitude: an 8-bit log scale, as audio codecs and
    8-bit μ-law use. Its cost, measured by training the same student on both forms, is in
    RGB_DEPTH_README.md.
``audio`` other spectrograms (linear magnitudes: the official recipe): float16 times a
    power-of-two scale per sample ≤ 2⁻¹¹·|x| + 2⁻³⁹·max|x| (relative 4.9e-4). Eight linear
    bits would flatten their dynamic range. The scale puts the sample's peak in [2¹⁴, 2¹⁵), so
    no recipe's range can overflow float16 (linear magnitudes reach 32 per unit of waveform
    amplitude, and V1's stored amplitude is unverified) and values down to 2⁻²⁹ of the peak keep
    full relative precision.
anything else (the ``waveform`` audio mode, non-float32 tensors): stored as it is, exact
    A waveform is small (2 × 7,782 float32 at V2's 30 m cut) and its V2 source is integer PCM.

A sample outside its stored form's range (a depth below 0 or beyond 65.535 m, an rgb value
outside [0, 1], a non-finite audio value) restarts the build with that tensor stored as it is.
At 256² with rgb a sample of the default recipe takes 448 KiB (rgb 192, audio 128, depth 128)
against 1.5 MiB in float32; of the official recipe 576 KiB (float16 audio, 256).

Building and robustness:

* Processes that open a missing cache at the same time (torchrun ranks, two runs sharing a
  ``cache_dir``) build it once: the build holds an exclusive lock on ``<folder>.lock`` (flock;
  released by the kernel when its holder dies, even by SIGKILL) and the others wait on it, then
  read. No collective is involved, so ranks may open caches in any order and a long build cannot
  hit a process-group timeout.
* A build writes into ``<folder>.tmp-<host>-<pid>-<random>`` and renames it into place, so a
  killed build never leaves a half cache under the final name. The next build of the same cache
  deletes such leftovers: all of them while it holds the lock (every live builder holds it, so
  none is in use); where the file system cannot lock, only those of dead processes of this host
  (a pid, unlike an age, tells a slow live build from a dead one).
* Opening checks the manifest, ``meta.json`` and every array file's size against the manifest;
  a corrupt cache (unreadable or mismatched manifest or meta, a missing or truncated array) is
  reported in one warning naming the file and rebuilt. Disk space is reserved when the build
  starts, so a full disk is a one-line ``DataError``, not a SIGBUS halfway through.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Set, Tuple, Union

import numpy as np
import torch
from tqdm import tqdm

from datasets.errors import DataError
from datasets.sample import AUDIO, DEPTH, META, RGB, VALID, Sample

CACHE_FORMAT_VERSION = 3
MANIFEST = "manifest.json"
META_FILE = "meta.json"
TMP_MARK = ".tmp-"
LOCK_SUFFIX = ".lock"
SCALE_DTYPE = np.dtype(np.float32)

PathLike = Union[str, "os.PathLike[str]"]
# What an encoder returns: the stored array and its scale (1.0 for unscaled forms), or None
# when the values are outside what the form can hold.
Encoded = Optional[Tuple[np.ndarray, float]]


# --------------------------------------------------------------------------------------------
# Stored forms

@dataclass(frozen=True)
class StoredForm:
    """How one tensor of a sample is stored on disk and turned back on read.

    Attributes:
        name: recorded in the manifest.
        dtype: stored dtype; ``None`` keeps the sample's own.
        scaled: a float32 scale per sample is stored beside the array.
        encode: sample array → stored array and scale, or ``None`` when it does not fit.
        decode: stored row and scale → a new tensor of the sample's dtype.
    """

    name: str
    dtype: Optional[str]
    scaled: bool
    encode: Callable[[np.ndarray], Encoded]
    decode: Callable[[np.ndarray, float], torch.Tensor]


def _encode_unit_uint8(x: np.ndarray) -> Encoded:
    if not np.all((x >= 0.0) & (x <= 1.0)):              # NaN fails too
        return None
    return np.rint(x.astype(np.float64) * 255.0).astype(np.uint8), 1.0


# Decoders copy the row out of the read-only map first (np.array): torch refuses to wrap a
# read-only array without a warning, and the sample must not alias the map.

def _decode_unit_uint8(stored: np.ndarray, scale: float) -> torch.Tensor:
    return torch.from_numpy(np.array(stored)).float().div_(255.0)


def _encode_mm_uint16(x: np.ndarray) -> Encoded:
    mm = np.rint(x.astype(np.float64) * 1000.0)
    if not np.all((mm >= 0) & (mm <= np.iinfo(np.uint16).max)):
        return None
    mm[(mm == 0) & (x > 0)] = 1.0                         # a valid depth never becomes a hole
    return mm.astype(np.uint16), 1.0


def _decode_mm_uint16(stored: np.ndarray, scale: float) -> torch.Tensor:
    # float32(mm) / 1000 in float32, as the recipes compute it: bit-identical for integer-mm
    # sources. (astype copies; torch has few uint16 kernels.)
    metres = stored.astype(np.float32)
    metres /= np.float32(1000.0)
    return torch.from_numpy(metres)


def _encode_scaled_float16(x: np.ndarray) -> Encoded:
    if not np.all(np.isfinite(x)):
        return None
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0:
        return x.astype(np.float16), 1.0
    # peak in [2**(e-1), 2**e): dividing by 2**(e-15) puts it in [2**14, 2**15), below float16's
    # 65504 after rounding; a power of two divides and multiplies back exactly. The floor keeps
    # the scale a normal float32.
    scale = math.ldexp(1.0, max(math.frexp(peak)[1] - 15, -126))
    return (x / np.float32(scale)).astype(np.float16), scale


def _decode_scaled(stored: np.ndarray, scale: float) -> torch.Tensor:
    # torch: numpy's float16 → float32 cast is ~50x slower (no SIMD), the whole read's cost.
    return torch.from_numpy(np.array(stored)).float().mul_(scale)


def _encode_scaled_uint8(x: np.ndarray) -> Encoded:
    if not np.all(np.isfinite(x)) or (x.size and float(x.min()) < 0.0):
        return None
    peak = float(x.max()) if x.size else 0.0
    # The float32 scale the decoder will multiply by, so encoding rounds against it.
    scale = float(np.float32(peak / 255.0)) if peak > 0.0 else 1.0
    return np.clip(np.rint(x.astype(np.float64) / scale), 0, 255).astype(np.uint8), scale


def _encode_exact(x: np.ndarray) -> Encoded:
    return x, 1.0


def _decode_exact(stored: np.ndarray, scale: float) -> torch.Tensor:
    return torch.from_numpy(np.array(stored))


UNIT_UINT8 = StoredForm("unit-uint8", "uint8", False, _encode_unit_uint8, _decode_unit_uint8)
MM_UINT16 = StoredForm("mm-uint16", "uint16", False, _encode_mm_uint16, _decode_mm_uint16)
SCALED_FLOAT16 = StoredForm("scaled-float16", "float16", True, _encode_scaled_float16,
                            _decode_scaled)
SCALED_UINT8 = StoredForm("scaled-uint8", "uint8", True, _encode_scaled_uint8, _decode_scaled)
EXACT = StoredForm("exact", None, False, _encode_exact, _decode_exact)
FORMS: Dict[str, StoredForm] = {
    form.name: form for form in (UNIT_UINT8, MM_UINT16, SCALED_FLOAT16, SCALED_UINT8, EXACT)}


def stored_form(key: str, x: np.ndarray,
                forms: Optional[Mapping[str, StoredForm]] = None) -> StoredForm:
    """The compact form for tensor ``key`` of a sample (see the module docstring).

    Args:
        key: the sample's key (``rgb``, ``depth``, ``audio``...).
        x: sample 0's array of that key.
        forms: the caller's choice for some float32 keys (e.g. ``{"audio": SCALED_UINT8}`` for
            log-scaled spectrograms), instead of the default form.
    """
    if x.dtype != np.float32:
        return EXACT
    if forms and key in forms:
        return forms[key]
    if key == RGB:
        return UNIT_UINT8
    if key == DEPTH:
        return MM_UINT16
    if key == AUDIO and x.ndim == 3:                      # spectrogram modes, not the waveform
        return SCALED_FLOAT16
    return EXACT


# --------------------------------------------------------------------------------------------
# Manifest

@dataclass(frozen=True)
class ArraySpec:
    """One stored tensor, as the manifest describes it.

    Attributes:
        form: its :class:`StoredForm`.
        shape: ``(N, ...)``.
        dtype: stored dtype.
        sample_dtype: dtype of the tensor in a sample.
    """

    form: StoredForm
    shape: Tuple[int, ...]
    dtype: np.dtype
    sample_dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        """Bytes of one sample's row of the array file."""
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def stored_bytes(self) -> int:
        """Bytes of one sample on disk (row and scale)."""
        return self.row_bytes + (SCALE_DTYPE.itemsize if self.form.scaled else 0)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one sample's tensor in memory (what a float32 cache would store)."""
        return math.prod(self.shape[1:]) * self.sample_dtype.itemsize

    def to_json(self) -> Dict[str, Any]:
        return {"form": self.form.name, "shape": list(self.shape), "dtype": self.dtype.str,
                "sample_dtype": self.sample_dtype.str}

    @classmethod
    def from_json(cls, entry: Any) -> "ArraySpec":
        """Raises KeyError, TypeError or ValueError for an entry that is not a spec."""
        shape = tuple(int(n) for n in entry["shape"])
        if any(n < 0 for n in shape):
            raise ValueError(f"negative shape {shape}")
        return cls(FORMS[entry["form"]], shape, np.dtype(entry["dtype"]),
                   np.dtype(entry["sample_dtype"]))


@dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` holds.

    Attributes:
        version: ``CACHE_FORMAT_VERSION`` of the writer.
        params: the caller's parameters (JSON values).
        length: N, the number of samples.
        arrays: stored tensors by sample key.
    """

    version: int
    params: Any
    length: int
    arrays: Dict[str, ArraySpec]

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "params": self.params, "length": self.length,
                           "arrays": {k: a.to_json() for k, a in self.arrays.items()}}, indent=1)


def read_manifest(folder: Path) -> Manifest:
    """Read and check the structure of ``folder``'s manifest.

    Raises:
        DataError: naming the manifest, when it is missing, unreadable, of another format version
            or malformed.
    """
    path = Path(folder) / MANIFEST
    raw = _read_json(path)
    version = raw.get("version") if isinstance(raw, dict) else None
    if version != CACHE_FORMAT_VERSION:
        raise DataError(path, f"cache format version {version}, expected {CACHE_FORMAT_VERSION}")
    try:
        length = int(raw["length"])
        arrays = {str(key): ArraySpec.from_json(entry) for key, entry in raw["arrays"].items()}
        params = raw["params"]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(path, f"malformed cache manifest ({type(exc).__name__}: {exc})") from exc
    if not arrays or any(spec.shape[:1] != (length,) for spec in arrays.values()):
        raise DataError(path, f"malformed cache manifest: array shapes do not start with {length}")
    return Manifest(version, params, length, arrays)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DataError(path, "missing from the cache") from exc
    except (OSError, ValueError) as exc:                  # ValueError: bad JSON or UTF-8
        raise DataError(path, f"unreadable ({exc})") from exc


def _array_path(folder: Path, key: str) -> Path:
    return folder / f"{key}.bin"


def _scale_path(folder: Path, key: str) -> Path:
    return folder / f"{key}.scale.bin"


# --------------------------------------------------------------------------------------------
# Reading

class SampleCache:
    """Read side of a built cache: ``cache[i]`` is the sample dict, equal to the source's within
    the bounds of the module docstring.

    The arrays are memory-mapped lazily in each process (and dropped when pickled into
    DataLoader workers), so opening is cheap and workers share the page cache.

    Args:
        folder: the cache folder.
        params: the caller's parameters, which the manifest must hold.
        length: N, which the manifest must hold.

    Raises:
        DataError: naming the file, when the manifest, ``meta.json`` or an array file is
            missing, unreadable or does not match (see :func:`open_or_build`, which rebuilds).
    """

    def __init__(self, folder: Path, params: Mapping[str, Any], length: int) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if (self.manifest.params, self.manifest.length) != (_as_json(params), length):
            raise DataError(self.folder / MANIFEST, "parameters or length differ from the "
                                                    "cache's key")
        for key, spec in self.manifest.arrays.items():
            _check_size(_array_path(self.folder, key), length * spec.row_bytes)
            if spec.form.scaled:
                _check_size(_scale_path(self.folder, key), length * SCALE_DTYPE.itemsize)
        self.metas = _read_json(self.folder / META_FILE)
        if not (isinstance(self.metas, list) and len(self.metas) == length
                and all(isinstance(meta, dict) for meta in self.metas)):
            raise DataError(self.folder / META_FILE, f"expected a list of {length} meta dicts")
        self._arrays: Optional[Dict[str, Tuple[np.ndarray, Optional[np.ndarray]]]] = None

    def __len__(self) -> int:
        return self.manifest.length

    def __getstate__(self) -> Dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def __getitem__(self, i: int) -> Sample:
        if self._arrays is None:
            self._arrays = {key: self._map(key, spec)
                            for key, spec in self.manifest.arrays.items()}
        sample: Sample = {}
        for key, (stored, scales) in self._arrays.items():
            form = self.manifest.arrays[key].form
            scale = 1.0 if scales is None else float(scales[i])
            sample[key] = form.decode(stored[i], scale)
        sample[VALID] = sample[DEPTH] > 0
        sample[META] = dict(self.metas[i])
        return sample

    def _map(self, key: str, spec: ArraySpec) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        # np.asarray: plain ndarray views of the maps, so rows index without memmap overhead.
        stored = np.asarray(np.memmap(_array_path(self.folder, key), dtype=spec.dtype,
                                      mode="r", shape=spec.shape))
        scales = (np.asarray(np.memmap(_scale_path(self.folder, key), dtype=SCALE_DTYPE,
                                       mode="r", shape=spec.shape[:1]))
                  if spec.form.scaled else None)
        return stored, scales


def _check_size(path: Path, expected: int) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise DataError(path, "missing from the cache") from exc
    if size != expected:
        raise DataError(path, f"{size} bytes, the manifest implies {expected} (truncated?)")


def _as_json(params: Mapping[str, Any]) -> Any:
    """``params`` as the manifest stores them (tuples become lists, keys strings)."""
    return json.loads(json.dumps(params))


# --------------------------------------------------------------------------------------------
# Building

class _DoesNotFit(Exception):
    """Sample ``index``'s tensor ``key`` is outside the range of its stored form."""

    def __init__(self, key: str, index: int, form: StoredForm) -> None:
        super().__init__(key, index, form)
        self.key, self.index, self.form = key, index, form


def cache_folder(cache_dir: PathLike, name: str, params: Mapping[str, Any], length: int,
                 forms: Optional[Mapping[str, StoredForm]] = None) -> Path:
    """Folder of the cache of ``length`` samples for ``params`` (JSON-serialisable) stored in the
    default forms, except those of ``forms`` (see :func:`stored_form`)."""
    keyed = json.dumps({"version": CACHE_FORMAT_VERSION, "params": params, "length": length,
                        "forms": {key: form.name for key, form in (forms or {}).items()}},
                       sort_keys=True)
    return Path(cache_dir) / f"{name}-{hashlib.sha256(keyed.encode()).hexdigest()[:20]}"


def open_or_build(cache_dir: PathLike, name: str, params: Mapping[str, Any], length: int,
                  load_sample: Callable[[int], Sample],
                  forms: Optional[Mapping[str, StoredForm]] = None) -> SampleCache:
    """Open the cache for ``params`` under ``cache_dir``, building it first when absent or
    corrupt (a corrupt one is named in a warning). Concurrent callers build it once.

    Args:
        cache_dir: parent folder of all caches.
        name: readable prefix of the cache folder (e.g. ``v2-train``).
        params: every parameter that shapes the samples, and the data's fingerprint
            (JSON-serialisable).
        length: number of samples.
        load_sample: uncached sample reader, called once per sample while building (again from
            sample 0 if a tensor does not fit its compact form).
        forms: stored forms chosen by the caller for some keys (:func:`stored_form`); part of
            the cache's key.

    Returns:
        the opened cache.

    Raises:
        DataError: ``cache_dir`` cannot be written or lacks space; a freshly built cache fails
            its own check; anything ``load_sample`` raises.
    """
    if length < 1:
        raise ValueError(f"a cache holds at least one sample, got length {length}")
    folder = cache_folder(cache_dir, name, params, length, forms)
    cache = _open_if_sound(folder, params, length, discard_corrupt=False)
    if cache is not None:
        return cache
    with _build_lock(folder) as locked:
        # Re-checked under the lock: another process may have built or repaired it meanwhile.
        cache = _open_if_sound(folder, params, length, discard_corrupt=True)
        if cache is None:
            _remove_stale_builds(folder, locked)
            _build(folder, params, length, load_sample, forms)
            cache = SampleCache(folder, params, length)
            _warn_of_older_formats(folder, name)
    return cache


def _warn_of_older_formats(folder: Path, name: str) -> None:
    """Name the caches of ``name`` beside ``folder`` written by an older cache format: this
    version never reads them, and a float32 cache of BatVision V1 takes tens of GB. They are left
    to the user (an older checkout sharing the folder may still read them)."""
    older, size = [], 0
    for sibling in folder.parent.glob(glob.escape(name) + "-*"):
        if TMP_MARK in sibling.name or not sibling.is_dir():
            continue
        try:
            version = json.loads((sibling / MANIFEST).read_text()).get("version")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(version, int) and version < CACHE_FORMAT_VERSION:
            older.append(sibling.name)
            size += sum(f.stat().st_size for f in sibling.iterdir() if f.is_file())
    if older:
        warnings.warn(f"{folder.parent}: {len(older)} {name} cache(s) of an older format "
                      f"({size / 2 ** 20:,.1f} MiB: {', '.join(sorted(older))}) are no longer "
                      "read; delete them to free the space", stacklevel=3)


def _open_if_sound(folder: Path, params: Mapping[str, Any], length: int,
                   discard_corrupt: bool) -> Optional[SampleCache]:
    """The cache at ``folder``, or None when it is absent or fails its check (then, with
    ``discard_corrupt``, warn and move it out of the way)."""
    if not folder.exists():
        return None
    try:
        return SampleCache(folder, params, length)
    except DataError as exc:
        if discard_corrupt:
            warnings.warn(f"{exc}; rebuilding the cache {folder.name}", stacklevel=3)
            # Renamed first (atomic), so no reader sees a half-deleted folder; a kill before the
            # rmtree leaves a temporary folder that the next build removes.
            trash = _new_tmp_path(folder)
            try:
                os.rename(folder, trash)
            except FileNotFoundError:                     # another process moved it first
                pass
            except OSError as error:
                raise DataError(exc.path, f"{exc.problem}; the cache cannot be moved away to "
                                          f"rebuild it ({error.strerror})") from exc
            shutil.rmtree(trash, ignore_errors=True)
        return None


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[bool]:
    """Hold the exclusive build lock of ``folder``; yields whether the file system could lock."""
    lock_path = folder.with_name(folder.name + LOCK_SUFFIX)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a")
    except OSError as exc:
        raise DataError(folder.parent, f"cannot write the cache folder ({exc.strerror})") from exc
    with handle:
        locked = True
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process to build {folder}", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as exc:                            # e.g. Lustre mounted without flock
            locked = False
            warnings.warn(f"{lock_path}: cannot lock ({exc.strerror}); concurrent builds of this "
                          "cache are not coordinated", stacklevel=3)
        yield locked


def _new_tmp_path(folder: Path) -> Path:
    """A fresh name ``<folder>.tmp-<host>-<pid>-<random>`` (random: hex, no ``-``)."""
    return folder.with_name(f"{folder.name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}-"
                            f"{secrets.token_hex(4)}")


def _remove_stale_builds(folder: Path, locked: bool) -> None:
    """Delete leftover temporary folders of ``folder``: all of them when ``locked`` (each live
    builder holds the lock), else those of this host's dead processes."""
    host = socket.gethostname()
    for tmp in folder.parent.glob(glob.escape(folder.name + TMP_MARK) + "*"):
        builder = re.fullmatch(r"(.+)-(\d+)-[0-9a-f]+", tmp.name[len(folder.name + TMP_MARK):])
        dead = (builder is not None and builder[1] == host
                and not _process_alive(int(builder[2])))
        if locked or dead:
            shutil.rmtree(tmp, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists (a reused pid reads as alive: kept)."""
    if pid <= 0:                                          # 0 and negatives name process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                               # exists, another user's
        return True
    return True


def _build(folder: Path, params: Mapping[str, Any], length: int,
           load_sample: Callable[[int], Sample],
           forms: Optional[Mapping[str, StoredForm]]) -> None:
    """Write samples ``load_sample(0 .. length-1)`` into a new cache at ``folder``, atomically
    (``folder`` must not exist; if another process creates it first, its cache is kept)."""
    tmp = _new_tmp_path(folder)
    as_is: Set[str] = set()                               # keys that did not fit their form
    try:
        while True:
            tmp.mkdir()
            try:
                manifest, metas = _write_arrays(tmp, folder, params, length, load_sample, as_is,
                                               forms)
                break
            except _DoesNotFit as exc:
                warnings.warn(f"{folder.name}: sample {exc.index}'s {exc.key} is outside the "
                              f"range of {exc.form.name}; rebuilding with it stored as it is",
                              stacklevel=3)
                as_is.add(exc.key)
                shutil.rmtree(tmp)
        (tmp / META_FILE).write_text(json.dumps(metas))
        (tmp / MANIFEST).write_text(manifest.to_json())
        try:
            os.rename(tmp, folder)
        except OSError as exc:
            if not (folder / MANIFEST).is_file():         # not a concurrent build that finished
                raise DataError(folder, f"cannot move the built cache into place "
                                        f"({exc.strerror})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_arrays(tmp: Path, folder: Path, params: Mapping[str, Any], length: int,
                  load_sample: Callable[[int], Sample], as_is: Set[str],
                  forms: Optional[Mapping[str, StoredForm]]
                  ) -> Tuple[Manifest, List[Dict[str, Any]]]:
    """Fill the arrays in ``tmp``; returns the manifest and the metas. Raises _DoesNotFit."""
    specs: Dict[str, ArraySpec] = {}
    arrays: Dict[str, Tuple[np.ndarray, Optional[np.ndarray]]] = {}
    metas = []
    for i in tqdm(range(length), desc=f"caching {folder.name}", unit="sample"):
        sample = load_sample(i)
        tensors = {key: t.numpy() for key, t in sample.items() if key not in (META, VALID)}
        if not specs:
            for key, x in tensors.items():
                form = EXACT if key in as_is else stored_form(key, x, forms)
                specs[key] = ArraySpec(form, (length, *x.shape),
                                       np.dtype(form.dtype or x.dtype), x.dtype)
            arrays = _allocate(tmp, folder, specs)
        layout = {key: (x.dtype, x.shape) for key, x in tensors.items()}
        if layout != {key: (s.sample_dtype, s.shape[1:]) for key, s in specs.items()}:
            raise DataError(folder, f"cannot cache sample {i} ({sample[META]}): its tensors "
                                    f"{_describe(layout)} differ from sample 0's")
        for key, x in tensors.items():
            spec = specs[key]
            encoded = spec.form.encode(x)
            if encoded is None:
                raise _DoesNotFit(key, i, spec.form)
            stored, scales = arrays[key]
            stored[i] = encoded[0]
            if scales is not None:
                scales[i] = encoded[1]
        metas.append(sample[META])
    for stored, scales in arrays.values():
        stored.flush()
        if scales is not None:
            scales.flush()
    return Manifest(CACHE_FORMAT_VERSION, _as_json(params), length, specs), metas


def _describe(layout: Mapping[str, Tuple[np.dtype, Tuple[int, ...]]]) -> str:
    return ", ".join(f"{key} {dtype} {tuple(shape)}" for key, (dtype, shape) in layout.items())


def _allocate(tmp: Path, folder: Path,
              specs: Mapping[str, ArraySpec]) -> Dict[str, Tuple[np.ndarray, Optional[np.ndarray]]]:
    """Create the array files at full size, disk space reserved, and map them for writing."""
    arrays = {}
    for key, spec in specs.items():
        stored = _reserve(_array_path(tmp, key), spec.dtype, spec.shape, folder)
        scales = (_reserve(_scale_path(tmp, key), SCALE_DTYPE, spec.shape[:1], folder)
                  if spec.form.scaled else None)
        arrays[key] = (stored, scales)
    return arrays


def _reserve(path: Path, dtype: np.dtype, shape: Tuple[int, ...], folder: Path) -> np.ndarray:
    """A writable map of a new file at ``path``. Its blocks are allocated first where the OS
    can: a write into a sparse map on a full disk kills the process with SIGBUS."""
    size = math.prod(shape) * dtype.itemsize
    with open(path, "wb") as f:
        try:
            if hasattr(os, "posix_fallocate"):            # Linux; elsewhere a sparse file
                os.posix_fallocate(f.fileno(), 0, size)
            else:
                f.truncate(size)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise DataError(folder.parent, f"no space left for the cache {folder.name}: "
                                           f"{path.name} needs {size / 1e9:.2f} GB") from exc
    return np.memmap(path, dtype=dtype, mode="r+", shape=shape)
