"""Datasets and loaders built from the command line, the synthetic default, and mirror augmentation.

The dataset a run reads is resolved by :mod:`datasets.registry` (``--dataset auto``). Nothing is
ever generated into a folder that holds anything else than worlds of this project.

``--dataset synthetic`` trains on the simulated world of :mod:`datasets.synthetic.world`, written
in the BatVision V2 format and read by the same V2 reader as the real data. Its ``--data_root``
defaults to ``.cache/synthetic/<world>/`` in the repository, generated on first use and reused
afterwards.

Before training, :func:`build_data` checks a sample of each split's depth labels
(:func:`datasets.batvision.check_labels`): all holes, or metres stored as millimetres, stop the
run with one line.

Sampling is a pure function of ``(seed, epoch)``: the training sampler is a
``DistributedSampler`` in every case (a world of one when not under torchrun), whose permutation
is ``randperm(seed + epoch)`` split rank by rank. So the global batches of a torchrun run are the
batches of a one-process run with the same global ``--batch_size``, and a resumed run draws the
same order as an uninterrupted one without storing any sampler state. Validation shards the split
rank by rank without padding, so every image is scored exactly once.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sized, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from common.errors import UsageError
from datasets.batvision import cache_forms, check_labels, spread_indices
from datasets.cache import CACHE_FORMAT_VERSION
from datasets.recipes import get_recipe, swap_ears
from datasets.registry import READERS, resolve_dataset, synthetic_world_config
from datasets.sample import AUDIO, DEPTH, RGB, VALID
from training.device import DistContext, main_process_first, uses_cuda
from training.labels import WithoutDepth, labelled_indices, subset_fingerprint

REPO_ROOT = Path(__file__).resolve().parent.parent
SYNTHETIC_CACHE = REPO_ROOT / ".cache" / "synthetic"
# Which key of the sample dict each model reads.
MODEL_INPUTS = {"rgb_depth": RGB, "binaural_attention": AUDIO, "official_unet": AUDIO}


def resolve_data_root(args: argparse.Namespace, context: DistContext,
                      replace_world: bool = True) -> Path:
    """The folder to hand to the reader; for ``synthetic``, the world, generated when absent.

    Resolves ``--dataset auto`` first (:func:`resolve_dataset`). For ``synthetic``,
    ``--data_root`` is the folder that holds the world (default ``.cache/synthetic/<world>/``,
    which this function writes into ``args.data_root`` so the run records it) and the reader root
    is the world's ``v2/`` folder inside it. ``replace_world`` False (evaluating a finished
    run) stops where the folder holds another world of ours instead of regenerating it.

    Raises:
        UsageError: ``--data_root`` missing for a real dataset, or not recognised for ``auto``.
        DataError: a synthetic world asked for in a folder that holds other things (or, with
            ``replace_world`` False, another world).
    """
    if resolve_dataset(args) != "synthetic":
        if args.data_root is None:
            raise UsageError(f"--data_root is required for --dataset {args.dataset}")
        return Path(args.data_root)
    from datasets.synthetic.world import ensure_synthetic_world

    config = synthetic_world_config(args)
    if args.data_root is None:
        digest = sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()
        args.data_root = str(SYNTHETIC_CACHE / f"{config.locations}x{config.samples}_{digest[:10]}")
    with main_process_first(context):
        return Path(ensure_synthetic_world(args.data_root, config, progress=context.is_main,
                                           replace=replace_world))


def build_dataset(args: argparse.Namespace, root: Path, split: str, use_rgb: bool,
                  ground_truth: Optional[str] = None, truth: str = "sensor") -> Dataset:
    """The reader for ``--dataset`` on ``split`` with the data flags of ``args``.

    Args:
        args: parsed arguments (``dataset``, ``max_depth``, ``image_size``, ``recipe``,
            ``locations``, ``cache_dir`` and, for audio models, ``audio_format``).
        root: from :func:`resolve_data_root`.
        split: ``train``, ``val`` or ``test``.
        use_rgb: load the camera image (the RGB model; DataError where a V1 CSV has no camera).
        ground_truth: recipe whose depth rule makes the ground truth (``None``: ``args.recipe``).
        truth: ``sensor`` depth maps or a simulated world's ``dense`` (complete) depth.
    """
    return READERS[args.dataset](
        root=root, split=split, max_depth=args.max_depth, image_size=args.image_size,
        audio=getattr(args, "audio_format", "spectrogram"), use_rgb=use_rgb, recipe=args.recipe,
        locations=args.locations.split(",") if args.locations else None,
        cache_dir=args.cache_dir or None, ground_truth=ground_truth, truth=truth,
    )


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: each item on exactly one rank, no padding, in order."""

    def __init__(self, data: Sized, rank: int, world_size: int) -> None:
        self.indices = range(rank, len(data), world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class Data:
    """What the engine needs from the data side.

    Attributes:
        train_loader: this rank's training batches (per-rank batch = global batch / world size).
        train_sampler: its sampler; ``set_epoch(epoch)`` before each epoch fixes the order.
        val_loader: this rank's shard of the validation split.
        val_dataset: the whole validation split (rank 0 draws the pictures from its first items).
        max_depth: metres, the depth range of the data (the model's output range).
        data_fingerprint: sha256 hex of the train and val splits' fingerprints and, under
            ``--labelled_fraction``, of the labelled subset (:func:`combine_fingerprints`);
            :func:`resolve_data` gives the same without loaders.
        storage: :func:`input_storage` of the run's arguments.
    """

    train_loader: DataLoader
    train_sampler: DistributedSampler
    val_loader: DataLoader
    val_dataset: Dataset
    max_depth: float
    data_fingerprint: str
    storage: Optional[Dict[str, Any]]


def combine_fingerprints(train: str, val: str, labelled: Optional[str] = None) -> str:
    """sha256 hex of a run's data: its train and val splits' ``data_fingerprint`` and, when
    only part of the train split is labelled, :func:`training.labels.subset_fingerprint`."""
    subset = "" if labelled is None else f"labelled {labelled}\n"
    return sha256(f"train {train}\nval {val}\n{subset}".encode()).hexdigest()


def labelled_subset(args: argparse.Namespace,
                    train_set: Dataset) -> Optional[Tuple[List[int], str]]:
    """The train split's labelled indices and their fingerprint under ``--labelled_fraction``
    (:mod:`training.labels`), or ``None`` when every sample is labelled."""
    fraction = getattr(args, "labelled_fraction", 1.0)
    if fraction >= 1.0:
        return None
    records = train_set.records
    labelled = labelled_indices([r.location for r in records], fraction, args.labelled_seed)
    names = [f"{r.location}/{r.index}" for r in records]
    return labelled, subset_fingerprint(names, labelled)


def input_storage(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """How a run's samples reach the model when that is not straight from the files: ``None``
    without ``--cache_dir``, else the cache's format version and the forms the readers ask it for
    (:func:`datasets.batvision.cache_forms`). An 8-bit spectrogram is not the file's float32, so
    this belongs to the run's identity: a run never resumes on, or stands in for, other inputs.

    Args:
        args: parsed data flags (``cache_dir``, ``recipe``, ``audio_format`` for audio models).
    """
    if not args.cache_dir:
        return None
    forms = cache_forms(getattr(args, "audio_format", "spectrogram"), get_recipe(args.recipe))
    return {"cache_format": CACHE_FORMAT_VERSION,
            "forms": {key: form.name for key, form in sorted(forms.items())}}


def split_fingerprint(args: argparse.Namespace, root: Path, split: str,
                      truth: str = "sensor") -> str:
    """The ``data_fingerprint`` of one split as ``args`` would read it, without any cache.

    Args:
        args: parsed data flags with a resolved ``dataset`` (see :func:`resolve_data_root`).
        root: from :func:`resolve_data_root`.
        split: ``train``, ``val`` or ``test``.
        truth: ``sensor`` depth maps or a simulated world's ``dense`` depth.

    Raises:
        DataError: the split's CSVs cannot be read.
    """
    reader_args = argparse.Namespace(**{**vars(args), "cache_dir": None})
    return build_dataset(reader_args, root, split, use_rgb=False, truth=truth).data_fingerprint


def resolve_data(args: argparse.Namespace, context: DistContext) -> tuple[Path, str]:
    """Resolve the data flags of ``args`` in place as :func:`build_data` does (``dataset``,
    ``data_root``, ``max_depth``) and return the reader root and the ``Data.data_fingerprint``
    a run would record, from the CSVs and file stats alone (no loader, no cache, no sample read):
    what a run's identity needs before the run is trained.

    Raises:
        DataError: the split CSVs cannot be read.
        UsageError: as :func:`resolve_data_root`.
    """
    root = _resolve_root_and_depth(args, context)
    train_set = build_dataset(argparse.Namespace(**{**vars(args), "cache_dir": None}), root,
                              "train", use_rgb=False)
    args.max_depth = float(train_set.max_depth)
    subset = labelled_subset(args, train_set)
    return root, combine_fingerprints(train_set.data_fingerprint,
                                      split_fingerprint(args, root, "val"),
                                      None if subset is None else subset[1])


def _resolve_root_and_depth(args: argparse.Namespace, context: DistContext) -> Path:
    """:func:`resolve_data_root`, then the synthetic world's own depth range as the default
    ``max_depth`` (farther is a hole anyway); real datasets get their reader's default."""
    root = resolve_data_root(args, context)
    if args.max_depth is None and args.dataset == "synthetic":
        args.max_depth = synthetic_world_config(args).camera_range_m
    return root


def train_sampler(dataset: Dataset, context: DistContext, seed: int) -> DistributedSampler:
    """This rank's share of a ``randperm`` drawn from ``seed + epoch`` (call ``set_epoch``)."""
    return DistributedSampler(dataset, num_replicas=context.world_size, rank=context.rank,
                              shuffle=True, seed=seed, drop_last=False)


def per_rank_batch_size(batch_size: int, context: DistContext) -> int:
    """Split the global ``--batch_size`` evenly over the ranks (error when it does not divide)."""
    if batch_size % context.world_size:
        raise UsageError(f"--batch_size {batch_size} is the global batch and must divide by the "
                         f"{context.world_size} processes")
    return batch_size // context.world_size


def build_data(args: argparse.Namespace, context: DistContext, use_rgb: bool) -> Data:
    """Training and validation loaders for a training script; fills in ``args.dataset`` (for
    ``auto``), ``args.max_depth`` and, for the synthetic default, ``args.data_root``, so
    ``config.json`` records the values used.

    Args:
        args: parsed arguments (data flags, ``batch_size``, ``num_workers``, ``seed``).
        context: this process's place in the torchrun world.
        use_rgb: load camera images (the RGB model).
    """
    root = _resolve_root_and_depth(args, context)
    batch = per_rank_batch_size(args.batch_size, context)
    # A preprocessing cache is built by one process while the others wait on its file lock and
    # then read it (datasets.cache): no collective, so a long build cannot hit a barrier timeout.
    train_set = build_dataset(args, root, "train", use_rgb)
    val_set = build_dataset(args, root, "val", use_rgb)
    check_labels(train_set)
    check_labels(val_set)
    args.max_depth = max_depth = float(train_set.max_depth)
    fingerprint = train_set.data_fingerprint
    subset = labelled_subset(args, train_set)
    if subset is not None:
        train_set = _partially_labelled(args, train_set, subset[0])
    if len(val_set) < context.world_size:
        raise UsageError(f"the val split has {len(val_set)} samples, fewer than the "
                         f"{context.world_size} processes")
    sampler = train_sampler(train_set, context, args.seed)
    loader_kwargs: Dict[str, Any] = dict(num_workers=args.num_workers,
                                         pin_memory=uses_cuda(args.device),
                                         persistent_workers=args.num_workers > 0)
    return Data(
        train_loader=DataLoader(train_set, batch_size=batch, sampler=sampler, **loader_kwargs),
        train_sampler=sampler,
        val_loader=DataLoader(val_set, batch_size=batch, **loader_kwargs,
                              sampler=ShardSampler(val_set, context.rank, context.world_size)),
        val_dataset=val_set, max_depth=max_depth,
        data_fingerprint=combine_fingerprints(fingerprint, val_set.data_fingerprint,
                                              None if subset is None else subset[1]),
        storage=input_storage(args),
    )


def _partially_labelled(args: argparse.Namespace, train_set: Dataset,
                        labelled: List[int]) -> Dataset:
    """The distillation script keeps every sample, the unlabelled ones without depth; the
    others train on the labelled ones alone.

    Raises:
        UsageError: no labelled sample for a script that learns from labels only.
    """
    if args.kind == "kd":
        return WithoutDepth(train_set, labelled)
    if not labelled:
        raise UsageError(f"--labelled_fraction {args.labelled_fraction} leaves no labelled "
                         "training sample: only train_distillation.py learns without labels")
    return Subset(train_set, labelled)


def mirror_batch(batch: Dict[str, Any], flip: torch.Tensor) -> Dict[str, Any]:
    """Mirror the chosen samples of a batch left–right, consistently across modalities.

    Depth, validity and RGB are flipped along their width; the audio's two ears are swapped
    (:func:`datasets.recipes.swap_ears`). A spectrogram's axes are frequency × time, so its time
    axis is *not* flipped: swapping the ears is the whole mirror of a binaural recording.

    Args:
        batch: a collated sample dict on any device.
        flip: (B,) bool, which samples to mirror.

    Returns:
        A new dict; the input batch is not modified.
    """
    mirrored = dict(batch)
    for key in (DEPTH, VALID, RGB, AUDIO):
        if key in batch:
            x = batch[key]
            mask = flip.to(x.device).view(-1, *([1] * (x.ndim - 1)))
            mirrored[key] = torch.where(mask, mirror(x, key), x)
    return mirrored


def mirror(x: torch.Tensor, key: str) -> torch.Tensor:
    """The left–right mirror of one batched tensor of a sample: the ears swapped for ``audio``
    (:func:`datasets.recipes.swap_ears`), the width flipped for image-grid tensors (depth, valid,
    rgb, predictions)."""
    return swap_ears(x) if key == AUDIO else x.flip(-1)


def mirror_flags(batch_size: int, seed: int, global_step: int, rank: int) -> torch.Tensor:
    """(B,) bool coin flips drawn from ``(seed, global_step, rank)`` alone, so they repeat exactly
    after a resume and never touch the global random state."""
    entropy = np.random.SeedSequence([seed, global_step, rank]).generate_state(1)[0]
    generator = torch.Generator().manual_seed(int(entropy))
    return torch.rand(batch_size, generator=generator) < 0.5


def median_valid_depth(dataset: Dataset, max_samples: int = 64) -> float:
    """Median ground-truth depth in metres over the valid pixels of up to ``max_samples`` samples
    spread evenly over ``dataset`` (the student's ``--head_init_depth median``); of a partially
    labelled split, over its labelled samples alone.

    Raises:
        UsageError: no valid pixel in the samples read.
    """
    if isinstance(dataset, WithoutDepth):
        # Picks spread over every sample would hit about F x max_samples labelled ones: the
        # distillation script's head would start elsewhere than its audio-only control's.
        dataset = dataset.labelled_only()
    picks = spread_indices(len(dataset), max_samples)
    depths = [dataset[int(i)][DEPTH] for i in picks]
    valid = torch.cat([d[d > 0] for d in depths]) if depths else torch.empty(0)
    if valid.numel() == 0:
        raise UsageError(f"no valid depth pixel in {len(picks)} labelled training samples: "
                         "cannot initialise the depth head at their median (--head_init_depth "
                         "none, or a depth in metres)")
    return float(valid.median())


def to_device(batch: Dict[str, Any], device: torch.device,
              memory_format: torch.memory_format = torch.preserve_format) -> Dict[str, Any]:
    """Move every tensor of a collated batch to ``device`` (``meta`` strings stay as they are).

    The copies do not block the host (asynchronous from pinned memory on CUDA). With
    ``memory_format=torch.channels_last`` the 4-D (image-like) tensors are stored channels-last.
    """
    return {k: v.to(device, non_blocking=True,
                    memory_format=memory_format if v.dim() == 4 else torch.preserve_format)
            if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
