"""Shared fixtures and helpers.

Tiny BatVision V1/V2 trees written through ``datasets.synthetic.writer``: content is noise
(audio), random depth with holes and random RGB — enough to exercise readers, recipes, caches and
models, not a physical world (that is ``datasets.synthetic.world``). Use the ``v2_root`` /
``v1_root`` fixtures for a default tree, or ``write_v2_tree`` / ``write_v1_tree`` (exposed as
fixtures of the same name) for custom ones.

Training runs on a tiny tree (``test_engine``, ``test_run``, ``test_saver``, ``test_device``,
``test_tracking``): the ``data_root`` fixture, :func:`train_argv` and :func:`stop_message`; and
:func:`parse`, the command line as ``start_run`` parses it (``test_cli``, ``test_run``). Import
the functions with ``from tests.conftest import ...``.

Every test runs on one intra-op thread (see :func:`one_thread_and_restored_determinism`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Mapping, Sequence, Tuple

import numpy as np
import pytest
import torch

import train_rgb_depth
from datasets.synthetic.writer import V2_WAV_FRAMES, Recording, V1Writer, V2Writer
from training import cli

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


@pytest.fixture(autouse=True)
def one_thread_and_restored_determinism(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One intra-op thread for every test, and --deterministic's process-wide flag reset
    afterwards.

    The models under test are tiny and this machine's 2 cores are shared: with torch's default
    of one thread per core, a busy neighbour makes each thread wait on the other and tests run
    up to ten times slower. ``OMP_NUM_THREADS=1`` keeps the scripts run in-process (and the
    subprocesses) on one thread too: ``--threads auto`` would otherwise measure the load, which
    takes 0.25 s and changes from run to run, and two runs compared bit for bit (stopped and
    resumed against uninterrupted) must use the same thread count. The tests of the ``auto``
    rule delete it. The thread count is restored after each test, since ``--threads`` sets it.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        # Only when changed: the first call imports torch._inductor (seconds).
        torch.use_deterministic_algorithms(deterministic)


# --- training runs on a tiny tree -----------------------------------------------------------

RUN_COUNTS: Mapping[str, int] = {"train": 4, "val": 2, "test": 1}  # per location; 2 locations


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A tiny V2 tree of noise: 2 locations x (4 train, 2 val, 1 test), 32x32."""
    return write_v2_tree(tmp_path / "bv2", locations=("Loc_B", "Loc_A"), counts=RUN_COUNTS,
                         depth_shape=(32, 32))


def train_argv(root: Path, checkpoint_dir: Path, name: str, *extra: str) -> List[str]:
    """A training script's command line for a 2-epoch run of a width-4 model on ``root``
    (2 steps of batch 4 per epoch on ``data_root``), deterministic, no pictures."""
    return ["--dataset", "batvisionv2", "--data_root", str(root), "--image_size", "32",
            "--base_channels", "4", "--batch_size", "4", "--nb_epochs", "2", "--num_workers", "0",
            "--checkpoint_dir", str(checkpoint_dir), "--experiment_name", name,
            "--num_val_images", "0", "--deterministic", *extra]


def stop_message(argv: List[str]) -> str:
    """The one-line message that stops ``train_rgb_depth.py argv``."""
    with pytest.raises(SystemExit) as error:
        train_rgb_depth.main(argv)
    message = str(error.value.code)
    assert "\n" not in message
    return message


def parse(kind: str, argv: List[str]) -> argparse.Namespace:
    """What start_run parses: the command line after its --config file's flags."""
    parser = cli.build_parser(kind, None)
    return parser.parse_args(cli.with_config(parser, argv))
