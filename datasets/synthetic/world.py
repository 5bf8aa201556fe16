"""Generate a simulated world in the BatVision V1 or V2 on-disk format.

Each location folder holds one room family (cycling through ``scene.ROOM_SETS[config.rooms]``:
``SmallRoom_00``, ``Corridor_01``, ``Hall_02``, ``SmallRoom_03``, ... for the default classic
rooms; ``Office_00``, ``Corridor_01``, ``Classroom_02``, ... for the realistic ones); every sample
is a fresh room of that family seen from a random rig pose, with ~70/15/15 % of each location's
samples in train/val/test.
Every sample is a pure function of ``(seed, location, sample)``, so the output tree is
byte-identical for a given config whatever the number of workers.

``ensure_synthetic_world(root, config)`` keeps a world under ``root``::

    <root>/<format>/              the tree to hand to the V1/V2 reader (a V2 root holds only
                                  location folders)
    <root>/<format>.world.json    the manifest: version, config and, once complete, stats

``generate_world`` writes the same manifest beside any tree it writes (``<out_dir>.world.json``):
first without ``stats`` (the tree is ours but incomplete), then with them when the tree is done.
A manifest is the project's mark of ownership: ``ensure_synthetic_world`` writes only into a
folder that is absent, empty or holds one, and deletes only a tree whose manifest it finds, so it
never touches a user's own data.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import pyroomacoustics as pra
from tqdm import tqdm

from datasets.errors import DataError
from datasets.sample import SPLITS

from .acoustics import ACOUSTIC_MODELS, EAR_PATTERNS, EchoSimulator
from .camera import HOLE_MODELS, DepthCamera
from .scene import ROOM_SETS, LocationStyle, location_name, sample_location_style, sample_scene
from .writer import Recording, V1Writer, V2Writer

# Bump when a change to the generator changes its output, so stale worlds are regenerated.
WORLD_VERSION = 1
# Manifest key: the world holds every sample's complete depth (worlds generated before it existed
# get it added, see add_complete_depth, without a new version: their other files are unchanged).
COMPLETE_DEPTH = "complete_depth"
FORMATS = ("v1", "v2")
# Depth camera range (m): V1's stereo camera is read up to 12 m, V2's up to 30 m but the rooms
# here rarely exceed 15 m, so 15 m still leaves far corridor ends as holes.
DEFAULT_MAX_RANGE_M = {"v1": 12.0, "v2": 15.0}
SPLIT_SHARES = {"val": 0.15, "test": 0.15}  # the rest is train
# The realism fields, added after worlds were first cached, with the values that reproduce those
# worlds (the classic world): a config holding one leaves the field out of to_dict() (see there),
# so classic worlds keep their manifests and folder names.
CLASSIC_WORLD = {"acoustics": "ideal", "holes": "blobs", "rooms": "classic"}
# The default world: every realism on (calibrated on a real V2 recording, datasets/reference/).
DEFAULT_WORLD = {"acoustics": "realistic", "holes": "sensor", "rooms": "realistic"}
# Bump when a change to the realism changes its output: recorded only in the manifests of worlds
# that use it, so classic worlds' manifests and folders stay as they are.
REALISM_VERSION = 2
FIRST_TIME_S = 1_700_000_000.0  # capture time of the first location's index 0, UNIX seconds
SECONDS_PER_INDEX = 0.5


@dataclass(frozen=True)
class WorldConfig:
    """Everything that decides a world's content (the defaults make the standard demo world: every
    realism on; :data:`CLASSIC_WORLD` gives the world of earlier versions).

    Attributes:
        format: ``v1`` or ``v2`` on-disk layout.
        locations: number of location folders (room families cycle across them).
        samples: samples per location (all splits together).
        seed: master seed (>= 0).
        height, width: depth and RGB image size in pixels.
        ears: ``cardioid`` (directional, as real rigs with pinnae) or ``omni``.
        ear_angle_deg: each ear points this far left/right of the heading, degrees.
        ear_spacing_m: distance between the ears, metres.
        max_order: image-source reflection order (3 keeps halls with obstacles cheap).
        snr_db: white sensor noise, dB below the direct path's RMS level.
        acoustics: ``ideal`` (image sources, direct path at time 0) or ``realistic`` (latency,
            band-limited directional speaker, shaded direct path, reverberant tail, room noise;
            see ``acoustics.Realism``).
        hfov_deg: camera horizontal field of view, degrees.
        max_range_m: depth beyond this is a hole; None: 12 m for V1, 15 m for V2.
        holes: the depth camera's hole model, one of ``camera.HOLE_MODELS``: ``blobs`` (range and
            random blobs) or ``sensor`` (where a real depth camera fails).
        rooms: the room set, one of ``scene.ROOM_SETS``: ``classic`` (SmallRoom, Corridor, Hall)
            or ``realistic`` (furnished families, materials, a robot's poses).
    """

    format: str = "v2"
    locations: int = 3
    samples: int = 400
    seed: int = 0
    height: int = 128
    width: int = 128
    ears: str = "cardioid"
    ear_angle_deg: float = 35.0
    ear_spacing_m: float = 0.2
    max_order: int = 3
    snr_db: float = 50.0
    acoustics: str = DEFAULT_WORLD["acoustics"]
    hfov_deg: float = 90.0
    max_range_m: Optional[float] = None
    holes: str = DEFAULT_WORLD["holes"]
    rooms: str = DEFAULT_WORLD["rooms"]

    def __post_init__(self) -> None:
        if self.holes not in HOLE_MODELS:
            raise ValueError(f"holes must be one of {HOLE_MODELS}, got {self.holes!r}")
        if self.rooms not in ROOM_SETS:
            raise ValueError(f"rooms must be one of {tuple(ROOM_SETS)}, got {self.rooms!r}")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.ears not in EAR_PATTERNS:
            raise ValueError(f"ears must be one of {sorted(EAR_PATTERNS)}, got {self.ears!r}")
        if self.acoustics not in ACOUSTIC_MODELS:
            raise ValueError(f"acoustics must be one of {sorted(ACOUSTIC_MODELS)}, "
                             f"got {self.acoustics!r}")
        for name in ("locations", "samples", "height", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0 or self.max_order < 0:
            raise ValueError(f"seed and max_order must be >= 0, got {self.seed}, {self.max_order}")

    @property
    def camera_range_m(self) -> float:
        """Depth camera range in metres (``max_range_m`` or the format's default)."""
        return DEFAULT_MAX_RANGE_M[self.format] if self.max_range_m is None else self.max_range_m

    def to_dict(self) -> Dict[str, object]:
        """The config as a manifest stores it; a realism field holding the classic world's value
        is left out.

        Cached worlds are reused when their manifest's config equals this dict, and a cached
        world's folder is named by its digest: leaving out the fields that were added later, while
        they hold the value that reproduces the older worlds byte for byte, keeps those worlds and
        folder names matching. A world with any realism also records :data:`REALISM_VERSION`, so
        one made by an earlier realistic model is regenerated.
        """
        config = asdict(self)
        for name, classic in CLASSIC_WORLD.items():
            if config[name] == classic:
                del config[name]
        if CLASSIC_WORLD.keys() & config.keys():
            config["realism_version"] = REALISM_VERSION
        return config


@dataclass(frozen=True)
class _PlannedSample:
    location: int
    sample: int
    split: str
    index: int
    time: float


def generate_world(out_dir: "str | os.PathLike[str]", config: WorldConfig, workers: int = 2,
                   progress: bool = True) -> Dict[str, object]:
    """Simulate and write a world, then its manifest ``<out_dir>.world.json``.

    Args:
        out_dir: root of the tree to write (the V1/V2 reader's root); must be absent or empty.
        config: what to generate.
        workers: simulation processes (1: run in this process); output does not depend on it.
        progress: show a progress bar.

    Returns:
        Stats: ``samples``, ``seconds``, ``samples_per_s``, ``peak`` (largest |audio| sample,
        below 1 unless something clipped), ``clipped_recordings``, ``locations`` and ``splits``
        (samples per split).

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: output folder is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Claims the tree before any file of it exists, and (no stats) vouches for nothing yet.
    _write_manifest(out, {"version": WORLD_VERSION, "config": config.to_dict()})
    out.mkdir(exist_ok=True)
    plan = [s for loc in range(config.locations) for s in _plan_location(config, loc)]
    writer = V2Writer(out) if config.format == "v2" else V1Writer(out)
    peak, clipped = 0.0, 0
    start = time.perf_counter()
    recordings = tqdm(_simulate_all(config, plan, workers), total=len(plan), disable=not progress,
                      desc=f"simulating {config.format} world", unit="sample")
    for planned, rec in zip(plan, recordings):
        writer.add(location_name(planned.location, config.rooms), planned.split, planned.index, rec)
        rec_peak = float(np.abs(rec.audio).max())
        peak, clipped = max(peak, rec_peak), clipped + (rec_peak >= 1.0)
    writer.close()
    seconds = time.perf_counter() - start
    if clipped:
        warnings.warn(f"{out}: {clipped} recordings clipped (peak {peak:.2f}); lower the world gain")
    stats = {
        "samples": len(plan), "seconds": seconds, "samples_per_s": len(plan) / seconds,
        "peak": peak, "clipped_recordings": clipped,
        "locations": [location_name(loc, config.rooms) for loc in range(config.locations)],
        "splits": {split: sum(s.split == split for s in plan) for split in SPLITS},
    }
    _write_manifest(out, {"version": WORLD_VERSION, "config": config.to_dict(), "stats": stats,
                          COMPLETE_DEPTH: True})
    return stats


def ensure_synthetic_world(root: "str | os.PathLike[str]", config: WorldConfig = WorldConfig(),
                           workers: int = 2, progress: bool = True, replace: bool = True) -> Path:
    """Reuse the world under ``root`` if it was generated with ``config``, else (re)generate it.

    Generates only into a ``root`` that is absent, empty or holds a world manifest of this
    project (``*.world.json``), and replaces ``<root>/<format>/`` only when its own manifest is
    there: a folder of someone else's data is never written into or deleted.

    Args:
        root: folder that holds worlds (``<root>/<format>/`` and ``<root>/<format>.world.json``).
        config: the wanted world.
        workers, progress: as ``generate_world``.
        replace: whether a complete world of another config (or generator version) under
            ``root`` may be replaced. Evaluating a finished run passes False: a ``--data_root``
            naming another world must stop, not regenerate that world as the run's.

    Returns:
        ``<root>/<format>``: the root to hand to the V1/V2 reader.

    Raises:
        DataError: ``root`` holds something else than worlds of this project, or (``replace``
            False) a complete world of another config.
    """
    holder = Path(root)
    data = holder / config.format
    manifest = _read_manifest(manifest_path(data))
    if data.is_dir() and _manifest_matches(manifest, config):
        if not manifest.get(COMPLETE_DEPTH):
            add_complete_depth(data, config, progress=progress)
            _write_manifest(data, {**manifest, COMPLETE_DEPTH: True})
        return data
    if holder.exists():
        if not holder.is_dir():
            raise DataError(holder, "is a file, not a folder to keep a synthetic world in")
        if any(holder.iterdir()) and not any(map(_is_world_manifest, holder.glob("*.world.json"))):
            raise DataError(holder, "is not empty and holds no synthetic world manifest "
                                    "(*.world.json): refusing to generate a world into it; give "
                                    "an empty or new folder, or the dataset it holds")
    if data.exists() or data.is_symlink():
        if manifest is None or not data.is_dir() or data.is_symlink():
            raise DataError(data, f"was not made by this project (no manifest "
                                  f"{manifest_path(data).name} beside it): refusing to replace it")
        if not replace and "stats" in manifest:
            had, wanted = dict(manifest["config"]), config.to_dict()
            had["generator version"], wanted["generator version"] = (manifest["version"],
                                                                     WORLD_VERSION)
            differing = ", ".join(f"{key} {had.get(key)} (asked: {wanted.get(key)})"
                                  for key in sorted(set(had) | set(wanted))
                                  if had.get(key) != wanted.get(key))
            raise DataError(data, f"holds another synthetic world ({differing}): not replacing "
                                  f"it; read it as a plain tree with --dataset batvisionv2 "
                                  f"--data_root {data}")
        shutil.rmtree(data)  # stale or incomplete, and ours: its manifest says so
    generate_world(data, config, workers=workers, progress=progress)
    return data


def add_complete_depth(out_dir: "str | os.PathLike[str]", config: WorldConfig,
                       progress: bool = True) -> None:
    """Write the complete depth of every sample of a world generated before worlds carried it.

    Only the camera's ray cast of each sample's scene is redone (no acoustics, a few seconds):
    the scene is a pure function of ``(seed, location, sample)``, so it is the one the sensor
    saw. The sensor's files are not touched, so runs trained on them stay valid.
    """
    out = Path(out_dir)
    writer = V2Writer(out) if config.format == "v2" else V1Writer(out)
    camera = _camera(config)
    plan = [s for loc in range(config.locations) for s in _plan_location(config, loc)]
    for planned in tqdm(plan, disable=not progress, desc="complete depth", unit="sample"):
        scene = sample_scene(_location_style(config, planned.location),
                             _rng(config, planned.location, 1, planned.sample))
        writer.add_complete_depth(location_name(planned.location, config.rooms), planned.index,
                                  planned.time, camera.complete_depth_mm(scene))


def manifest_path(out_dir: "str | os.PathLike[str]") -> Path:
    """``<out_dir>.world.json``: beside the tree, since a V2 root may hold only location folders."""
    out = Path(out_dir)
    return out.with_name(out.name + ".world.json")


def _read_manifest(path: Path) -> Optional[Dict[str, object]]:
    """The manifest at ``path`` as written by ``generate_world``, or None (absent or foreign)."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or not {"version", "config"} <= manifest.keys():
        return None
    return manifest


def _is_world_manifest(path: Path) -> bool:
    """Whether ``path`` is a manifest of this project (complete or not): the mark of a tree it
    made and may therefore replace."""
    return _read_manifest(path) is not None


def _manifest_matches(manifest: Optional[Dict[str, object]], config: WorldConfig) -> bool:
    """Whether ``manifest`` (:func:`_read_manifest`) vouches for a complete world of ``config``
    (version, config and stats)."""
    return (manifest is not None and "stats" in manifest
            and manifest["version"] == WORLD_VERSION and manifest["config"] == config.to_dict())


def _write_manifest(out: Path, manifest: Dict[str, object]) -> None:
    """Write ``manifest`` beside ``out`` atomically (a kill leaves the old one or the new one)."""
    path = manifest_path(out)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, path)


def _rng(config: WorldConfig, location: int, stream: int, *more: int) -> np.random.Generator:
    """Generator of one independent stream: 0 location style, 1 samples, 2 the location's plan."""
    return np.random.default_rng([config.seed, location, stream, *more])


def _split_sizes(n: int) -> Dict[str, int]:
    """Samples per split for a location of ``n``; val and test get at least one each from n = 3."""
    held_out = {s: (max(1, round(share * n)) if n >= 3 else 0) for s, share in SPLIT_SHARES.items()}
    return {"train": n - sum(held_out.values()), **held_out}


def _plan_location(config: WorldConfig, location: int) -> List[_PlannedSample]:
    """Split, index and time of every sample of one location.

    Splits are shuffled across samples; V2 indices increase with random gaps, as in the real CSVs.
    """
    rng = _rng(config, location, 2)
    splits = [s for s, n in _split_sizes(config.samples).items() for _ in range(n)]
    splits = [splits[i] for i in rng.permutation(len(splits))]
    indices = int(rng.integers(0, 100)) + np.cumsum(rng.integers(1, 6, config.samples))
    start = FIRST_TIME_S + 86_400.0 * location
    return [_PlannedSample(location=location, sample=k, split=split, index=int(index),
                           time=start + SECONDS_PER_INDEX * int(index))
            for k, (split, index) in enumerate(zip(splits, indices))]


# --- simulation, in worker processes ----------------------------------------------------------

_SIMULATOR: Optional[EchoSimulator] = None
_CAMERA: Optional[DepthCamera] = None
_CONFIG: Optional[WorldConfig] = None


def _init_worker(config: WorldConfig) -> None:
    global _SIMULATOR, _CAMERA, _CONFIG
    # One thread inside pyroomacoustics: workers parallelise over samples, and its threaded
    # delay-and-sum would not promise the same summation order every time.
    pra.constants.set("num_threads", 1)
    _CONFIG = config
    _SIMULATOR = EchoSimulator(ears=config.ears, ear_spacing_m=config.ear_spacing_m,
                               ear_angle_deg=config.ear_angle_deg, max_order=config.max_order,
                               snr_db=config.snr_db, realism=ACOUSTIC_MODELS[config.acoustics])
    _CAMERA = _camera(config)


def _camera(config: WorldConfig) -> DepthCamera:
    """The world's depth camera (its size, field of view, range and hole model)."""
    return DepthCamera(config.height, config.width, hfov_deg=config.hfov_deg,
                       max_range_m=config.camera_range_m, holes=config.holes)


@lru_cache(maxsize=None)
def _location_style(config: WorldConfig, location: int) -> LocationStyle:
    return sample_location_style(location, _rng(config, location, 0), config.rooms)


def _simulate(planned: _PlannedSample) -> Recording:
    """One sample: a fresh room of the location's family, its depth, RGB and echoes."""
    assert _CONFIG is not None and _SIMULATOR is not None and _CAMERA is not None
    rng = _rng(_CONFIG, planned.location, 1, planned.sample)
    scene = sample_scene(_location_style(_CONFIG, planned.location), rng)
    depth_mm, complete_mm, rgb = _CAMERA.render(scene, rng)
    audio = _SIMULATOR.record(scene, rng)
    return Recording(audio=audio, depth_mm=depth_mm, rgb=rgb, time=planned.time,
                     complete_depth_mm=complete_mm)


def _simulate_all(config: WorldConfig, plan: Sequence[_PlannedSample],
                  workers: int) -> Iterator[Recording]:
    """Recordings of ``plan``, in plan order."""
    if workers <= 1:
        _init_worker(config)
        yield from map(_simulate, plan)
        return
    with multiprocessing.get_context().Pool(workers, initializer=_init_worker,
                                            initargs=(config,)) as pool:
        yield from pool.imap(_simulate, plan, chunksize=4)
