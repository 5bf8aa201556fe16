"""Which datasets exist, which reader reads each, and which one a folder holds.

``--dataset auto`` picks the dataset from ``--data_root`` (:func:`detect_dataset`: a V1 root, a
V2 root or a synthetic world) and, without ``--data_root``, the synthetic default; the name it
picks replaces ``auto`` in the arguments (:func:`resolve_dataset`), so a run records it.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any, List

from common.errors import UsageError
from datasets.batvision import BatvisionV1Dataset, BatvisionV2Dataset
from datasets.sample import SPLITS

# The concrete datasets; "auto" (a flag value, not a dataset) resolves to one of them
# (resolve_dataset) before any data is read.
DATASETS = ("batvisionv1", "batvisionv2", "synthetic")
# The simulated world is written in the BatVision V2 format and read by the V2 reader.
READERS = {"batvisionv1": BatvisionV1Dataset, "batvisionv2": BatvisionV2Dataset,
           "synthetic": BatvisionV2Dataset}


# The simulated world's realism (WorldConfig fields, each set by --synthetic_<field>) and its
# values, the classic world's first: what every world was before the field existed (an argument
# list saved before then reads it). Named here, not read from the generator, so parsing a command
# line does not import pyroomacoustics; a test holds them equal to the generator's own.
WORLD_OPTIONS = {"acoustics": ("ideal", "realistic"), "holes": ("blobs", "sensor"),
                 "rooms": ("classic", "realistic")}
# The default world (the generator's WorldConfig defaults): every realism on.
DEFAULT_WORLD = {"acoustics": "realistic", "holes": "sensor", "rooms": "realistic"}


def synthetic_world_config(args: argparse.Namespace) -> Any:
    """The ``WorldConfig`` that ``--synthetic_*`` flags describe (V2 format); arguments saved
    before an option existed get the classic world's value, the world they were made with."""
    from datasets.synthetic.world import WorldConfig  # pyroomacoustics only when a world is used

    options = {name: getattr(args, f"synthetic_{name}", values[0])
               for name, values in WORLD_OPTIONS.items()}
    return WorldConfig(format="v2", locations=args.synthetic_locations,
                       samples=args.synthetic_samples, seed=args.synthetic_seed,
                       height=args.synthetic_size, width=args.synthetic_size, **options)


def _csv_header(path: Path) -> List[str]:
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        return next(csv.reader(f), [])


def detect_dataset(root: Path) -> str:
    """Which dataset the folder ``root`` holds, from its layout (one CSV header is read).

    Returns:
        ``synthetic`` for a folder holding a world (``v2/`` and ``v2.world.json``, as
        :func:`datasets.synthetic.world.ensure_synthetic_world` keeps it), ``batvisionv1`` for a
        root with ``train.csv``, ``val.csv``, ``test.csv`` in the V1 columns, ``batvisionv2`` for
        a root of location folders holding a ``train.csv`` in the V2 columns.

    Raises:
        UsageError: ``root`` is missing or holds none of these (the message says what was looked
            for), or is a single V2 location folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"--data_root {root}: no such folder")
    if (root / "v2").is_dir() and (root / "v2.world.json").is_file():
        return "synthetic"
    if all((root / f"{split}.csv").is_file() for split in SPLITS):
        header = set(_csv_header(root / "train.csv"))
        if set(BatvisionV1Dataset.AUDIO_COLUMNS) <= header:
            return "batvisionv1"
        if set(BatvisionV2Dataset.AUDIO_COLUMNS) <= header:
            raise UsageError(f"--data_root {root} is a single BatVision V2 location folder: pass "
                             f"its parent folder, with --locations {root.name} to keep only it")
    v2_columns = set(BatvisionV2Dataset.AUDIO_COLUMNS)
    if any(entry.is_dir() and not entry.name.startswith(".") and (entry / "train.csv").is_file()
           and v2_columns <= set(_csv_header(entry / "train.csv")) for entry in root.iterdir()):
        return "batvisionv2"
    raise UsageError(f"--data_root {root}: no dataset recognised; looked for a BatVision V1 root "
                     "(train.csv, val.csv, test.csv with V1 columns), a V2 root (location folders "
                     "with a V2 train.csv) or a synthetic world (v2/ and v2.world.json); pass "
                     "--dataset (--dataset synthetic generates a world into an empty folder)")


def resolve_dataset(args: argparse.Namespace) -> str:
    """Replace ``args.dataset == "auto"`` by the dataset it stands for, and return the name.

    ``auto`` is ``synthetic`` without ``--data_root`` (the default world), else
    :func:`detect_dataset` of ``--data_root``. Other names are returned as they are.

    Raises:
        UsageError: as :func:`detect_dataset`.
    """
    if args.dataset == "auto":
        args.dataset = ("synthetic" if args.data_root is None
                        else detect_dataset(Path(args.data_root)))
    return args.dataset

