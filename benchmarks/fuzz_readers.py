"""Fuzz the BatVision readers: corrupt one file's bytes, read the sample, classify the outcome.

Every case starts from a pristine one-sample tree, corrupts one file with a seeded mutation (bit
flips, truncation, header damage, a spliced byte range, or for ``.npy`` an adversarial array:
empty, wrong rank, complex, NaN/inf...), reads the sample through the real reader and the default
recipe, and records one outcome:

* ``ok``: a correct sample (documented shapes and dtypes, finite audio, depth in [0, max_depth]);
* ``DataError``: one line naming the corrupted file (for a CSV: any file of the tree);
* anything else is an escape: another exception type, a DataError naming another file or
  spanning lines, or a sample with wrong shapes or non-finite values.

Targets: ``wav`` (V2 audio), ``npy_audio`` (V1 ear), ``npy_depth_v1`` (float mm with NaN holes),
``npy_depth_v2`` (uint16 mm), ``jpeg`` (camera), ``csv_v1``, ``csv_v2`` (split CSVs). Prints the
counts per target and outcome; exit 1 on any escape. ``tests/test_fuzz.py`` runs a few hundred
cases per target with the same code.

    python benchmarks/fuzz_readers.py --cases 10000
    python benchmarks/fuzz_readers.py --cases 2000 --targets wav,jpeg --show 5
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets import BatvisionV1Dataset, BatvisionV2Dataset, DataError  # noqa: E402
from datasets.batvision import _BatvisionDataset  # noqa: E402
from datasets.synthetic.writer import (  # noqa: E402
    V2_WAV_FRAMES, Recording, V1Writer, V2Writer, write_wav_int32,
)

OK = "ok"
DATA_ERROR = "DataError"
IMAGE_SIZE = 16
# A short echo window keeps files small, so a case costs milliseconds: 2 m needs 518 samples.
MAX_DEPTH_M = 2.0
FRAMES = 1_000
DEPTH_SHAPE = (12, 20)
HEADER_BYTES = 128   # WAV, .npy and JPEG headers (and a CSV's header row) start within these
TARGETS = ("wav", "npy_audio", "npy_depth_v1", "npy_depth_v2", "jpeg", "csv_v1", "csv_v2")


@dataclass(frozen=True)
class Case:
    """One fuzz case and what came of it.

    Attributes:
        target: which file kind was corrupted (one of ``TARGETS``).
        seed: the case's seed (the mutation is a pure function of it and the pristine file).
        mutation: the mutation's name.
        outcome: ``ok``, ``DataError`` or the name of the escape.
        detail: the exception's message or what was wrong with the sample.
    """

    target: str
    seed: int
    mutation: str
    outcome: str
    detail: str = ""

    @property
    def escaped(self) -> bool:
        """Whether the outcome breaks the promise (neither a correct sample nor a DataError)."""
        return self.outcome not in (OK, DATA_ERROR)


# --- mutations: pristine bytes -> corrupted bytes ------------------------------------------

def flip_bits(data: bytes, rng: np.random.Generator) -> bytes:
    """Flip 1–8 bits, half of the time all within the header bytes."""
    out = bytearray(data)
    span = min(len(out), HEADER_BYTES) if rng.random() < 0.5 else len(out)
    for _ in range(int(rng.integers(1, 9))):
        out[int(rng.integers(span))] ^= 1 << int(rng.integers(8))
    return bytes(out)


def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    """Keep a prefix: anywhere, or (half of the time) inside the header."""
    limit = min(len(data), HEADER_BYTES) if rng.random() < 0.5 else len(data)
    return data[:int(rng.integers(limit))]


def damage_header(data: bytes, rng: np.random.Generator) -> bytes:
    """Overwrite 1–4 header bytes with 0x00, 0xFF or random values."""
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        out[int(rng.integers(min(len(out), HEADER_BYTES)))] = int(
            rng.choice([0x00, 0xFF, int(rng.integers(256))]))
    return bytes(out)


def splice(data: bytes, rng: np.random.Generator) -> bytes:
    """Delete a byte range or insert random bytes (shifts everything after it)."""
    at = int(rng.integers(len(data)))
    if rng.random() < 0.5:
        return data[:at] + data[at + int(rng.integers(1, 64)):]
    return data[:at] + rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes() \
        + data[at:]


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def adversarial_audio(data: bytes, rng: np.random.Generator) -> bytes:
    """A V1 ear that is well-formed ``.npy`` but not a usable recording (or a legal odd one)."""
    ear = np.load(io.BytesIO(data))
    choices: List[Callable[[], np.ndarray]] = [
        lambda: _poison(ear, rng, np.nan), lambda: _poison(ear, rng, np.inf),
        lambda: _poison(ear, rng, -np.inf), lambda: ear[:0], lambda: ear[None],
        lambda: np.stack([ear, ear], axis=1), lambda: ear.astype(np.complex64),
        lambda: ear.astype(np.float16), lambda: (ear * 32767).astype(np.int16),
        lambda: ear > 0, lambda: np.array(3.0), lambda: ear.astype("U8"),
        lambda: ear[: int(rng.integers(1, len(ear)))],
    ]
    return _npy_bytes(choices[int(rng.integers(len(choices)))]())


def adversarial_depth(data: bytes, rng: np.random.Generator) -> bytes:
    """A depth map that is well-formed ``.npy`` but odd: empty, wrong rank, complex, NaN/inf
    (legal holes), negative or huge values, tiny images."""
    depth = np.load(io.BytesIO(data))
    height, width = depth.shape
    choices: List[Callable[[], np.ndarray]] = [
        lambda: depth[:0], lambda: depth[:, :0], lambda: depth[0], lambda: depth[None],
        lambda: depth.astype(np.complex64), lambda: depth > 0, lambda: depth[:1, :1],
        lambda: _poison(depth.astype(np.float32), rng, np.nan),
        lambda: _poison(depth.astype(np.float32), rng, np.inf),
        lambda: -depth.astype(np.float32), lambda: depth.astype(np.float64) * 1e30,
        lambda: np.zeros((height, width), np.uint16), lambda: depth.astype("U8"),
        lambda: depth.T, lambda: np.repeat(depth, 3, axis=0),
    ]
    return _npy_bytes(choices[int(rng.integers(len(choices)))]())


def _poison(array: np.ndarray, rng: np.random.Generator, value: float) -> np.ndarray:
    out = array.astype(np.float32).copy()
    flat = out.reshape(-1)
    flat[rng.integers(flat.size, size=int(rng.integers(1, 5)))] = value
    return out


Mutation = Callable[[bytes, np.random.Generator], bytes]
BYTE_MUTATIONS: Dict[str, Mutation] = {
    "flip": flip_bits, "truncate": truncate, "header": damage_header, "splice": splice}
MUTATIONS: Dict[str, Dict[str, Mutation]] = {
    "wav": BYTE_MUTATIONS, "jpeg": BYTE_MUTATIONS, "csv_v1": BYTE_MUTATIONS,
    "csv_v2": BYTE_MUTATIONS,
    "npy_audio": {**BYTE_MUTATIONS, "array": adversarial_audio},
    "npy_depth_v1": {**BYTE_MUTATIONS, "array": adversarial_depth},
    "npy_depth_v2": {**BYTE_MUTATIONS, "array": adversarial_depth},
}


# --- the pristine trees and one case -------------------------------------------------------

def _recording(rng: np.random.Generator, frames: int) -> Recording:
    depth = rng.uniform(300.0, 3_000.0, DEPTH_SHAPE)
    depth[rng.random(DEPTH_SHAPE) < 0.2] = 0.0
    return Recording(audio=np.clip(rng.normal(0.0, 0.1, (2, frames)), -1.0, 1.0), depth_mm=depth,
                     rgb=rng.integers(0, 256, (*DEPTH_SHAPE, 3), dtype=np.uint8), time=1.7e9)


class Fuzzer:
    """Pristine one-sample V1 and V2 trees under ``work_dir``, and the case runner.

    Args:
        work_dir: an empty folder to write the trees into.
    """

    def __init__(self, work_dir: Path) -> None:
        rng = np.random.default_rng(0)
        self.roots = {"v1": Path(work_dir) / "v1", "v2": Path(work_dir) / "v2"}
        for fmt, writer, frames in (("v1", V1Writer, FRAMES), ("v2", V2Writer, V2_WAV_FRAMES)):
            tree = writer(self.roots[fmt])
            tree.add("Room", "train", 7, _recording(rng, frames))
            tree.close()
        v1, v2 = self.dataset("v1"), self.dataset("v2")
        # The V2 writer insists on real-length recordings; a shorter WAV is as valid a file.
        wav = v2.records[0].audio_paths[0]
        write_wav_int32(wav, np.clip(rng.normal(0.0, 0.1, (2, FRAMES)), -1.0, 1.0))
        self.targets: Dict[str, Tuple[str, Path]] = {
            "wav": ("v2", v2.records[0].audio_paths[0]),
            "npy_audio": ("v1", v1.records[0].audio_paths[0]),
            "npy_depth_v1": ("v1", v1.records[0].depth_path),
            "npy_depth_v2": ("v2", v2.records[0].depth_path),
            "jpeg": ("v2", v2.records[0].camera_path),
            "csv_v1": ("v1", self.roots["v1"] / "train.csv"),
            "csv_v2": ("v2", self.roots["v2"] / "Room" / "train.csv"),
        }
        self.pristine = {target: path.read_bytes() for target, (_, path) in self.targets.items()}

    def dataset(self, fmt: str) -> _BatvisionDataset:
        """A fresh reader of the ``v1`` or ``v2`` tree (its CSV is parsed again)."""
        reader = BatvisionV1Dataset if fmt == "v1" else BatvisionV2Dataset
        return reader(self.roots[fmt], "train", max_depth=MAX_DEPTH_M, image_size=IMAGE_SIZE,
                      use_rgb=True)

    def run(self, target: str, seed: int) -> Case:
        """Corrupt ``target`` with the mutation drawn from ``seed``, read, classify.

        The corrupted file stays in place until :meth:`restore` (each case rewrites it whole).
        """
        fmt, path = self.targets[target]
        rng = np.random.default_rng([TARGETS.index(target), seed])
        mutations = MUTATIONS[target]
        name = list(mutations)[int(rng.integers(len(mutations)))]
        path.write_bytes(mutations[name](self.pristine[target], rng))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # scipy and PIL warn about some damage
                dataset = self.dataset(fmt)
                sample = dataset[0]
            problem = sample_problem(sample, dataset.max_depth)
            return Case(target, seed, name, "bad sample" if problem else OK, problem)
        except DataError as error:
            expected = (str(path) if not target.startswith("csv")
                        else str(self.roots[fmt]))
            named = error.path == expected or (target.startswith("csv")
                                               and error.path.startswith(expected))
            if named and "\n" not in str(error):
                return Case(target, seed, name, DATA_ERROR, str(error))
            return Case(target, seed, name, "DataError naming another file", str(error))
        except Exception as error:   # the point of a fuzzer: every other exception is an escape
            return Case(target, seed, name, type(error).__name__, str(error)[:200])

    def restore(self, target: str) -> None:
        """Put ``target``'s pristine bytes back."""
        self.targets[target][1].write_bytes(self.pristine[target])

    def cases(self, targets: Sequence[str], seeds: Sequence[int]) -> Iterator[Case]:
        """Every seed on every target, in order (each target restored after its cases)."""
        for target in targets:
            for seed in seeds:
                yield self.run(target, seed)
            self.restore(target)


def sample_problem(sample: Dict[str, object], max_depth: float) -> str:
    """What is wrong with a sample read from a corrupted file ('' when it is a correct one)."""
    size = IMAGE_SIZE
    expected = {"audio": (2, size, size), "depth": (1, size, size), "valid": (1, size, size),
                "rgb": (3, size, size)}
    for key, shape in expected.items():
        tensor = sample[key]
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            return f"{key} is not a tensor of shape {shape}"
    audio, depth, rgb = sample["audio"], sample["depth"], sample["rgb"]
    if audio.dtype != torch.float32 or not torch.isfinite(audio).all():
        return "audio is not finite float32"
    if not torch.isfinite(depth).all() or depth.min() < 0 or depth.max() > max_depth:
        return "depth outside [0, max_depth]"
    if not torch.equal(sample["valid"], depth > 0):
        return "valid is not depth > 0"
    if not torch.isfinite(rgb).all() or rgb.min() < 0 or rgb.max() > 1:
        return "rgb outside [0, 1]"
    return ""


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the cases, print counts per target and outcome; 1 if anything escaped."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--cases", type=int, default=10_000,
                        help="total cases, spread evenly over the targets")
    parser.add_argument("--targets", default=",".join(TARGETS),
                        help=f"comma-separated subset of {', '.join(TARGETS)}")
    parser.add_argument("--first_seed", type=int, default=0,
                        help="seed of each target's first case")
    parser.add_argument("--show", type=int, default=3,
                        help="escapes to print in full per target and outcome")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or args.cases < len(targets):
        parser.error(f"unknown target(s) {unknown}" if unknown
                     else f"--cases must be at least the number of targets ({len(targets)})")
    torch.set_num_threads(1)
    per_target = args.cases // len(targets)
    seeds = range(args.first_seed, args.first_seed + per_target)
    counts: Counter = Counter()
    shown: Counter = Counter()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz_readers-") as work:
        fuzzer = Fuzzer(Path(work))
        for case in fuzzer.cases(targets, seeds):
            counts[case.target, case.outcome] += 1
            if case.escaped and shown[case.target, case.outcome] < args.show:
                shown[case.target, case.outcome] += 1
                print(f"ESCAPE {case.target} seed {case.seed} ({case.mutation}): "
                      f"{case.outcome}: {case.detail}")
    seconds = time.perf_counter() - started
    outcomes = sorted({outcome for _, outcome in counts},
                      key=lambda o: (o != OK, o != DATA_ERROR, o))
    print(f"\n{per_target * len(targets)} cases in {seconds:.1f} s")
    print(f"{'target':<14}" + "".join(f"{o:>16}" for o in outcomes))
    for target in targets:
        print(f"{target:<14}" + "".join(f"{counts[target, o]:>16}" for o in outcomes))
    escapes = sum(n for (_, outcome), n in counts.items() if outcome not in (OK, DATA_ERROR))
    print(f"escapes: {escapes}")
    return 1 if escapes else 0


if __name__ == "__main__":
    sys.exit(main())
