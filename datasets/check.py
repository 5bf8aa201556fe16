"""Check a dataset once, before training: read every sample of every split, list every bad file.

    python -m datasets.check --dataset batvisionv2 --data_root /data/BatvisionV2
    python -m datasets.check --data_root /data/BatvisionV1 --splits train,val --workers 8

Each sample is read in parallel through the reader and recipe that training uses (the WAV or the
two ear ``.npy`` files, the depth map and, with ``--use_rgb``, the camera JPEG), so a file that
would stop a run in its seventh epoch is listed now, with every other bad file. Each split's depth
labels get the check training makes before it starts (no valid pixel; metres stored where
millimetres are expected). Prints one line per problem (``file: problem``) and a summary.

Exit status: 0 when everything is readable, 1 when anything is bad (or the folder holds no
dataset), 2 for bad flags.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from tqdm import tqdm

from common.argtypes import ArgumentParser, positive_float, positive_int
from common.errors import user_errors
from datasets.batvision import _BatvisionDataset, check_labels
from datasets.errors import DataError
from datasets.recipes import RECIPES
from datasets.registry import READERS, resolve_dataset
from datasets.sample import SPLITS

# Tensors are made at this size: the point is reading every file, and a small S keeps the
# recipe's resizes cheap (its STFT and audio-length rule do not depend on S).
CHECK_IMAGE_SIZE = 64
Problem = Tuple[str, str]   # (file, problem)

_DATASET: Optional[_BatvisionDataset] = None


def build_parser() -> argparse.ArgumentParser:
    """The validator's flags (one-line argparse errors, exit 2, as every script of the project)."""
    parser = ArgumentParser(__doc__)
    parser.prog = "python -m datasets.check"
    parser.add_argument("--dataset", choices=("auto", "batvisionv1", "batvisionv2"),
                        default="auto",
                        help="format of --data_root; auto: detected from its layout (a V1 root, "
                             "a V2 root, or a folder holding a synthetic world)")
    parser.add_argument("--data_root", required=True, help="the dataset's root folder")
    parser.add_argument("--splits", default=",".join(SPLITS),
                        help="comma-separated splits to check")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                        help="reading processes (1: read in this process)")
    parser.add_argument("--use_rgb", action="store_true",
                        help="also read every camera image (the RGB teacher needs them)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                        help="preprocessing recipe whose audio-length rule applies "
                             "(datasets/recipes.py)")
    parser.add_argument("--max_depth", type=positive_float, default=None,
                        help="metres; sets the echo window the audio must cover "
                             "(None: the dataset's, V1 12, V2 30)")
    return parser


def _init_worker(dataset: _BatvisionDataset) -> None:
    global _DATASET
    _DATASET = dataset
    torch.set_num_threads(1)   # parallelism is across processes


def _check_sample(i: int) -> Optional[Problem]:
    """The problem of sample ``i`` of the worker's dataset, or None when it reads cleanly."""
    assert _DATASET is not None
    try:
        _DATASET.load_sample(i)
    except DataError as error:
        return error.path, error.problem
    # A reader bug on one file must not hide the files after it: report it as a problem of the
    # sample (exit status 1) instead of ending the whole check with a traceback.
    except Exception as error:
        record = _DATASET.records[i]
        files = [*map(str, record.audio_paths), str(record.depth_path)]
        return (f"sample {i} of split {_DATASET.split!r} ({', '.join(files)})",
                f"unexpected {type(error).__name__}: {error}")
    return None


def check_split(dataset: _BatvisionDataset, workers: int, progress: bool = True
                ) -> List[Problem]:
    """Read every sample of ``dataset`` once and check its labels; the problems found.

    Args:
        dataset: the split's reader (without a cache: every source file is read).
        workers: reading processes (1: this process).
        progress: show a progress bar; problems are printed above it as they are found.

    Returns:
        ``(file, problem)`` pairs, one per bad file (a file shared by samples counts once).
    """
    problems: Dict[str, str] = {}
    try:
        check_labels(dataset)
    except DataError as error:
        problems[error.path] = error.problem
    bar = tqdm(total=len(dataset), desc=f"check {dataset.split}", unit="sample",
               disable=not progress)
    if workers <= 1:
        _init_worker(dataset)
        results = map(_check_sample, range(len(dataset)))
        pool = None
    else:
        pool = multiprocessing.get_context().Pool(workers, initializer=_init_worker,
                                                  initargs=(dataset,))
        results = pool.imap_unordered(_check_sample, range(len(dataset)), chunksize=8)
    for path, problem in problems.items():
        tqdm.write(f"{path}: {problem}")
    try:
        for found in results:
            bar.update()
            if found is not None and found[0] not in problems:
                problems[found[0]] = found[1]
                tqdm.write(f"{found[0]}: {found[1]}")
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return sorted(problems.items())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv``, check every split, print the problems and a summary; the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    splits = [s for s in args.splits.split(",") if s]
    if not splits or set(splits) - set(SPLITS):
        parser.error(f"--splits must list some of {', '.join(SPLITS)}, got {args.splits!r}")
    with user_errors():
        name = resolve_dataset(args)
        root = Path(args.data_root) / ("v2" if name == "synthetic" else "")
        counts: Dict[str, int] = {}
        problems: List[Problem] = []
        for split in splits:
            try:
                dataset = READERS[name](root, split, max_depth=args.max_depth,
                                        image_size=CHECK_IMAGE_SIZE, use_rgb=args.use_rgb,
                                        recipe=args.recipe)
            except DataError as error:   # the split's CSVs: report, go on with the others
                print(error)
                problems.append((error.path, error.problem))
                continue
            except ValueError as error:   # a --max_depth too short for the recipe's STFT
                parser.error(str(error))
            counts[split] = len(dataset)
            problems += check_split(dataset, args.workers)
    read = ", ".join(f"{split} {n}" for split, n in counts.items()) or "none"
    verdict = f"{len(problems)} problem(s), listed above" if problems else "no problem found"
    print(f"{name} at {args.data_root}: checked {sum(counts.values())} samples ({read}); "
          f"{verdict}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
