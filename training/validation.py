"""One pass of a task over a split without training: loss means and metrics, reduced over ranks.

:func:`validate` serves the training loop's validation and ``evaluate.py``; :class:`LossMeans`
is the one accumulator of loss terms, for a training epoch as for validation.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
from torch.utils.data import DataLoader

from datasets.sample import DEPTH
from training.data import to_device
from training.device import DistContext, autocast, sum_over_ranks
from training.metrics import DepthMetrics
from training.tasks import Batch, Task
from training.tracking import progress


class LossMeans:
    """Sample-weighted means of a task's loss terms over one pass, reduced over the ranks: the
    one accumulator of the training epoch and of validation.

    Args:
        device: where the sums live (the batches' device, so adding never synchronises).
    """

    def __init__(self, device: torch.device) -> None:
        self.names: List[str] = []
        self.sums: Optional[torch.Tensor] = None
        self.count = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, losses: Dict[str, torch.Tensor], size: int) -> torch.Tensor:
        """Add one batch of ``size`` samples; returns its terms as one float64 vector (in the
        order of ``names``)."""
        self.names = list(losses)
        values = torch.stack([losses[k].detach().double() for k in self.names])
        self.sums = values * size if self.sums is None else self.sums + values * size
        self.count += size
        return values

    def local(self) -> Dict[str, float]:
        """This rank's means so far (a progress bar's postfix)."""
        assert self.sums is not None
        return dict(zip(self.names, (self.sums / self.count).tolist()))

    def reduced(self, context: DistContext) -> Dict[str, float]:
        """The means over every rank's samples (a collective under torchrun); ``{}`` for a pass
        that saw no batch."""
        if self.sums is None:
            return {}
        means = sum_over_ranks(self.sums, context) / sum_over_ranks(self.count, context)
        return dict(zip(self.names, means.tolist()))


@torch.no_grad()
def validate(
    task: Task,
    loader: DataLoader,
    device: torch.device,
    metrics: DepthMetrics,
    context: DistContext = DistContext(),
    autocast_dtype: Optional[torch.dtype] = None,
    on_batch: Optional[Callable[[Batch, torch.Tensor, torch.Tensor, torch.Tensor], None]] = None,
    desc: str = "validate",
    memory_format: torch.memory_format = torch.preserve_format,
) -> Dict[str, float]:
    """Score ``task`` on a loader; ``metrics`` ends up reduced over every rank.

    Args:
        task: evaluated in eval mode.
        loader: this rank's shard of the split.
        device: where the task lives.
        metrics: accumulator to fill (then all-reduced).
        context: torchrun world.
        autocast_dtype: AMP dtype, or ``None``.
        on_batch: called with ``(batch, depth, scores, n_valid)`` for per-image reports.
        desc: progress bar label.
        memory_format: of the batches' 4-D tensors (``torch.channels_last`` with
            ``--channels_last``).

    Returns:
        Mean of each loss term over the split's samples (reduced over ranks).
    """
    task.eval()
    means = LossMeans(device)
    for batch in progress(loader, context.is_main, desc):
        batch = to_device(batch, device, memory_format)
        with autocast(device, autocast_dtype):
            depth, losses = task(batch)
        depth = depth.float()
        scores, n_valid = metrics.update(depth, batch[DEPTH])
        if on_batch is not None:
            on_batch(batch, depth, scores, n_valid)
        means.add(losses, len(depth))
    metrics.all_reduce()
    return means.reduced(context)
