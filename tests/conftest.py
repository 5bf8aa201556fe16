"""Shared fixtures: tiny BatVision V1/V2 trees written through ``datasets.synthetic.writer``.

Content is noise (audio), random depth with holes and random RGB — enough to exercise readers,
recipes, caches and models, not a physical world (that is ``datasets.synthetic.world``).
Use the ``v2_root`` / ``v1_root`` fixtures for a default tree, or ``write_v2_tree`` /
``write_v1_tree`` (exposed as fixtures of the same name) for custom ones.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Mapping, Sequence, Tuple

import numpy as np
import pytest

from datasets.synthetic.writer import V2_WAV_FRAMES, Recording, V1Writer, V2Writer

DEFAULT_COUNTS: Mapping[str, int] = {"train": 3, "val": 2, "test": 1}
# Not in sorted order on purpose: readers must sort, never trust creation/listdir order.
V2_LOCATIONS = ("Salle_B", "Attic_A", "Corridor_C")
V1_LOCATIONS = ("2019.08.26", "2019.08.20")


def noise_recording(rng: np.random.Generator, frames: int, depth_shape: Tuple[int, int],
                    max_depth_mm: float, hole_fraction: float = 0.2,
                    time: float = 1_700_000_000.0) -> Recording:
    """One recording of noise audio, random depth (mm, 0 = hole) and random RGB.

    Args:
        rng: random generator (seeded by the caller for repeatability).
        frames: audio length in samples per ear.
        depth_shape: (H, W) of depth and camera.
        max_depth_mm: depths are drawn in [200, 1.2 * max_depth_mm] mm (some beyond the clip).
        hole_fraction: share of depth pixels set to 0 (invalid).
        time: capture time in UNIX seconds.
    """
    audio = np.clip(rng.normal(0.0, 0.1, size=(2, frames)), -1.0, 1.0)
    depth = rng.uniform(200.0, 1.2 * max_depth_mm, size=depth_shape)
    depth[rng.random(depth_shape) < hole_fraction] = 0.0
    rgb = rng.integers(0, 256, size=(*depth_shape, 3), dtype=np.uint8)
    return Recording(audio=audio, depth_mm=depth, rgb=rgb, time=time)


def _write_tree(writer, locations: Sequence[str], counts: Mapping[str, int], frames: int,
                depth_shape: Tuple[int, int], max_depth_mm: float, seed: int) -> Dict[str, int]:
    rng = np.random.default_rng(seed)
    total = 0
    for loc_number, location in enumerate(locations):
        for split, count in counts.items():
            for _ in range(count):
                # Non-contiguous indices, as in the real V2 CSVs.
                index = 1000 * loc_number + 7 * total + 3
                writer.add(location, split, index, noise_recording(
                    rng, frames, depth_shape, max_depth_mm, time=1.7e9 + total * 0.5))
                total += 1
    writer.close()
    return {split: count * len(locations) for split, count in counts.items()}


def write_v2_tree(root: Path, locations: Sequence[str] = V2_LOCATIONS,
                  counts: Mapping[str, int] = DEFAULT_COUNTS,
                  depth_shape: Tuple[int, int] = (24, 40), seed: int = 0) -> Path:
    """Write a tiny V2 tree (20,000-frame WAVs, uint16 mm depth, JPEG) at ``root``; returns it.

    Args:
        root: folder to create.
        locations: location folders, written in this order.
        counts: samples per split per location.
        depth_shape: (H, W) of depth and camera images.
        seed: randomness of the content.
    """
    _write_tree(V2Writer(root), locations, counts, V2_WAV_FRAMES, depth_shape, 30_000.0, seed)
    return Path(root)


def write_v1_tree(root: Path, locations: Sequence[str] = V1_LOCATIONS,
                  counts: Mapping[str, int] = DEFAULT_COUNTS, frames: int = 5_000,
                  depth_shape: Tuple[int, int] = (24, 40), seed: int = 0) -> Path:
    """Write a tiny V1 tree (float32 ear ``.npy``, float32 mm depth with NaN holes, JPEG).

    Args: as ``write_v2_tree``, plus ``frames``: audio samples per ear.
    """
    _write_tree(V1Writer(root), locations, counts, frames, depth_shape, 12_000.0, seed)
    return Path(root)


@pytest.fixture(name="write_v2_tree")
def write_v2_tree_fixture() -> Callable[..., Path]:
    """The ``write_v2_tree`` function, for tests that need a custom V2 tree."""
    return write_v2_tree


@pytest.fixture(name="write_v1_tree")
def write_v1_tree_fixture() -> Callable[..., Path]:
    """The ``write_v1_tree`` function, for tests that need a custom V1 tree."""
    return write_v1_tree


@pytest.fixture
def v2_root(tmp_path: Path) -> Path:
    """A fresh tiny V2 tree: 3 locations × (3 train, 2 val, 1 test), 24×40 depth."""
    return write_v2_tree(tmp_path / "bv2")


@pytest.fixture
def v1_root(tmp_path: Path) -> Path:
    """A fresh tiny V1 tree: 2 locations × (3 train, 2 val, 1 test), 5,000-sample ears."""
    return write_v1_tree(tmp_path / "bv1")
