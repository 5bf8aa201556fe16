"""Samples/s of the BatVision V2 reader, uncached per-sample path vs the preprocessing cache, and
the cache's bytes per sample.

Writes a synthetic V2 tree of real-sized files (noise audio, 720×1280 uint16 depth with holes and
a JPEG camera image by default) unless ``--data_root`` points at one, then times ``__getitem__``
over every sample without a cache, the cache build, and ``__getitem__`` served from the cache.
Prints the bytes one sample takes in the cache, per tensor (beside its float32 size) and in all,
and the cache size this projects for all of BatVision V1 (52,000 samples) and V2 (3,100 samples)
with the same tensors. Goals: cached ≥ 50× uncached; ≤ 0.5 MB per 256² sample with rgb.

    python benchmarks/data_throughput.py
    python benchmarks/data_throughput.py --data_root /data/BatvisionV2 --split val
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import BatvisionV2Dataset  # noqa: E402
from datasets.cache import read_manifest  # noqa: E402
from datasets.synthetic.writer import V2_WAV_FRAMES, Recording, V2Writer  # noqa: E402

GOAL_RATIO = 50.0
GOAL_BYTES_PER_SAMPLE = 0.5e6
DATASET_SAMPLES = {"BatVision V1": 52_000, "BatVision V2": 3_100}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data_root", type=Path, default=None,
                        help="existing V2 root to read (None: write a synthetic tree)")
    parser.add_argument("--work_dir", type=Path, default=None,
                        help="where the synthetic tree and the cache go (None: a temporary "
                             "folder deleted at the end)")
    parser.add_argument("--split", default="train", help="split to read")
    parser.add_argument("--locations", type=int, default=2, help="synthetic locations")
    parser.add_argument("--samples", type=int, default=100,
                        help="synthetic samples per location (all in --split)")
    parser.add_argument("--depth_size", type=int, nargs=2, default=(720, 1280),
                        metavar=("H", "W"), help="synthetic depth and camera size in pixels")
    parser.add_argument("--image_size", type=int, default=256, help="S of the S×S tensors")
    parser.add_argument("--audio", default="spectrogram",
                        choices=("spectrogram", "mel", "waveform"), help="audio mode")
    parser.add_argument("--recipe", default="default", choices=("default", "official"),
                        help="preprocessing recipe")
    parser.add_argument("--use_rgb", action=argparse.BooleanOptionalAction, default=True,
                        help="also read the camera image")
    parser.add_argument("--cached_epochs", type=int, default=3,
                        help="passes over the cached split (the first one may read from disk)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic content")
    return parser.parse_args()


def synthetic_recording(rng: np.random.Generator, depth_size: Tuple[int, int],
                        time_s: float) -> Recording:
    """Noise audio, a smooth random depth surface in mm with ~20 % holes, a blocky RGB image."""
    height, width = depth_size
    audio = np.clip(rng.normal(0.0, 0.05, size=(2, V2_WAV_FRAMES)), -1.0, 1.0)
    rows, cols = np.mgrid[0:height, 0:width]
    tilt = rng.uniform(-2.0, 2.0, size=2)
    depth = 3000 + 1500 * (tilt[0] * rows / height + tilt[1] * cols / width)
    depth = np.clip(depth + rng.normal(0, 20, size=depth_size), 300, 29_000)
    depth[rng.random(depth_size) < 0.2] = 0.0
    blocks = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    rgb = np.repeat(np.repeat(blocks, 16, axis=0), 16, axis=1)[:height, :width]
    return Recording(audio=audio, depth_mm=depth, rgb=rgb, time=time_s)


def write_tree(root: Path, split: str, locations: int, samples: int,
               depth_size: Tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    writer = V2Writer(root)
    for i in tqdm(range(locations * samples), desc="writing synthetic V2", unit="sample"):
        writer.add(f"Location_{i // samples}", split, i, synthetic_recording(
            rng, depth_size, 1.7e9 + 0.5 * i))
    writer.close()


def time_reads(get: Callable[[int], object], length: int, epochs: int, desc: str) -> float:
    """Seconds per sample of ``get(i)`` over ``epochs`` passes of ``range(length)``."""
    start = time.perf_counter()
    for _ in range(epochs):
        for i in tqdm(range(length), desc=desc, unit="sample", leave=False):
            get(i)
    return (time.perf_counter() - start) / (epochs * length)


def cache_bytes(cache_dir: Path) -> Tuple[List[Tuple[str, int, int, str]], float]:
    """Bytes per sample of the one cache under ``cache_dir``.

    Returns:
        per tensor (name, stored bytes, float32 bytes, stored form), and the folder's total size
        on disk divided by its sample count (arrays, scales, meta and manifest).
    """
    (folder,) = [p for p in cache_dir.iterdir() if p.is_dir()]
    manifest = read_manifest(folder)
    rows = [(key, spec.stored_bytes, spec.sample_bytes, spec.form.name)
            for key, spec in manifest.arrays.items()]
    on_disk = sum(p.stat().st_size for p in folder.iterdir()) / manifest.length
    return rows, on_disk


def main() -> None:
    args = parse_args()
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="data_throughput-"))
    try:
        root = args.data_root
        if root is None:
            root = work_dir / "synthetic_v2"
            write_tree(root, args.split, args.locations, args.samples, tuple(args.depth_size),
                       args.seed)
        cache_dir = work_dir / "cache"
        shutil.rmtree(cache_dir, ignore_errors=True)        # time a fresh build
        options = dict(split=args.split, image_size=args.image_size, audio=args.audio,
                       use_rgb=args.use_rgb, recipe=args.recipe)

        uncached = BatvisionV2Dataset(root, **options)
        n = len(uncached)
        uncached_s = time_reads(uncached.__getitem__, n, 1, "uncached")
        start = time.perf_counter()
        cached = BatvisionV2Dataset(root, cache_dir=cache_dir, **options)
        build_s = time.perf_counter() - start
        cached_s = time_reads(cached.__getitem__, n, args.cached_epochs, "cached")
        tensor_bytes, disk_bytes = cache_bytes(cache_dir)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)

    rows: List[Tuple[str, str, str]] = [
        ("uncached __getitem__", f"{uncached_s * 1e3:.2f}", f"{1 / uncached_s:.1f}"),
        ("cache build (whole split)", f"{build_s / n * 1e3:.2f}", f"{n / build_s:.1f}"),
        ("cached __getitem__", f"{cached_s * 1e3:.3f}", f"{1 / cached_s:.1f}"),
    ]
    source = (f"synthetic, depth {args.depth_size[0]}x{args.depth_size[1]}"
              if args.data_root is None else str(args.data_root))
    print(f"\nV2 {args.split} ({source}): {n} samples, S={args.image_size}, audio={args.audio}, "
          f"rgb={args.use_rgb}, recipe={args.recipe}")
    print(f"{'path':<28}{'ms/sample':>12}{'samples/s':>12}")
    for name, ms, rate in rows:
        print(f"{name:<28}{ms:>12}{rate:>12}")
    ratio = uncached_s / cached_s
    print(f"cached / uncached: {ratio:.1f}x (goal >= {GOAL_RATIO:.0f}x: "
          f"{'met' if ratio >= GOAL_RATIO else 'NOT met'})")

    print(f"\n{'bytes per sample':<28}{'cached':>12}{'float32':>12}  stored as")
    for key, stored, float32, form in tensor_bytes:
        print(f"{key:<28}{stored:>12,}{float32:>12,}  {form}")
    print(f"{'total on disk (with meta)':<28}{disk_bytes:>12,.0f}"
          f"{sum(row[2] for row in tensor_bytes):>12,}")
    goal = "met" if disk_bytes <= GOAL_BYTES_PER_SAMPLE else "NOT met"
    print(f"{disk_bytes / 1e6:.3f} MB ({disk_bytes / 2**20:.3f} MiB) per sample (goal <= "
          f"{GOAL_BYTES_PER_SAMPLE / 1e6:.1f} MB at S=256 with rgb: {goal})")
    for dataset, samples in DATASET_SAMPLES.items():
        print(f"projected cache of {dataset} ({samples:,} samples, these tensors): "
              f"{disk_bytes * samples / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
