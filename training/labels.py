"""Partially labelled training (``--labelled_fraction``): which training samples keep their depth.

A robot records echoes and camera images wherever it goes; depth ground truth exists only where
someone carried a depth sensor. A run with ``--labelled_fraction F`` keeps the depth of a seeded
subset of the train split, drawn per location (``round(F · n)`` of a location's ``n`` samples,
at least one when ``F > 0``, so every room stays represented). The teacher and student scripts
train on the labelled samples only; the distillation script also reads the others, with their
depth taken away before any loss could see it (:class:`WithoutDepth`: depth 0, no valid pixel),
so they teach the student only through the teacher. Validation and test stay fully labelled.

The subset is a pure function of the split's records, ``F`` and ``--labelled_seed``; its
fingerprint (:func:`subset_fingerprint`) enters the run's data fingerprint, so a run of another
subset is never reused or resumed for this one.
"""
from __future__ import annotations

from collections import defaultdict
from hashlib import sha256
from typing import Dict, List, Sequence, Set

import torch
from torch.utils.data import Dataset, Subset

from datasets.sample import DEPTH, VALID, Sample


def labelled_indices(locations: Sequence[str], fraction: float, seed: int) -> List[int]:
    """The indices of a split that keep their depth label.

    Args:
        locations: the location of each sample of the split, in the split's order.
        fraction: in [0, 1]; the share of each location's samples kept.
        seed: draws the subset (independent of the training ``--seed``).

    Returns:
        Sorted indices: per location ``round(fraction · n)`` of its ``n`` samples (at least one
        when ``fraction > 0``), drawn without replacement.

    Raises:
        ValueError: ``fraction`` outside [0, 1].
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"labelled fraction must lie in [0, 1], got {fraction}")
    by_location: Dict[str, List[int]] = defaultdict(list)
    for i, location in enumerate(locations):
        by_location[location].append(i)
    generator = torch.Generator().manual_seed(seed)
    kept: List[int] = []
    for location in sorted(by_location):
        members = by_location[location]
        count = round(fraction * len(members))
        if fraction > 0:
            count = max(count, 1)
        order = torch.randperm(len(members), generator=generator)[:count]
        kept += [members[int(j)] for j in order]
    return sorted(kept)


def subset_fingerprint(names: Sequence[str], labelled: Sequence[int]) -> str:
    """sha256 hex of which samples are labelled, by name (e.g. ``location/index``), so the same
    subset of the same split gives the same fingerprint wherever the tree lies."""
    text = "\n".join(sorted(names[i] for i in labelled))
    return sha256(f"labelled {len(labelled)} of {len(names)}\n{text}".encode()).hexdigest()


class WithoutDepth(Dataset):
    """A split whose samples outside ``labelled`` have no depth label: depth 0 and no valid
    pixel, whatever the files hold (so no value of theirs can reach a loss).

    Args:
        dataset: the split.
        labelled: indices that keep their depth.
    """

    def __init__(self, dataset: Dataset, labelled: Sequence[int]) -> None:
        self.dataset = dataset
        self.labelled: Set[int] = set(labelled)

    def labelled_only(self) -> Dataset:
        """The labelled samples alone, in the split's order: what the scripts that learn from
        labels only train on (so statistics of the labels, e.g. the head's initial depth, are
        drawn from the same samples in every script)."""
        return Subset(self.dataset, sorted(self.labelled))

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Sample:
        sample = self.dataset[i]
        if i in self.labelled:
            return sample
        return {**sample, DEPTH: torch.zeros_like(sample[DEPTH]),
                VALID: torch.zeros_like(sample[VALID])}
