"""What one training step computes: a :class:`Task` turns a batch into depth and named losses.

The engine (:mod:`training.engine`) knows nothing about models: it trains a :class:`Task`, an
``nn.Module`` that turns a batch (the sample dict of ``datasets.sample``, collated, on the
device) into a depth map and a dict of named loss terms. To plug in a new task, subclass
:class:`Task` (or :class:`DepthTask`, to reuse the supervised terms):

* set ``self.model``: the network being trained. It must have ``model_name`` and ``config``;
  its weights (or their moving average, see :mod:`training.engine`), name and config become the
  checkpoint's model (what ``evaluate.py``, ``predict.py`` and a distillation teacher rebuild);
* set ``self.input_key``: the batch key the model reads (``"rgb"`` or ``"audio"``), drawn in the
  validation pictures;
* implement ``forward(batch) -> (depth, losses)``: ``depth`` (B, 1, H, W) in metres is what the
  metrics score; ``losses`` maps names to scalar tensors, already weighted, and ``"total"`` is the
  one optimised (:func:`with_total` adds it as the sum of the others). Each term is logged on its
  own: tqdm postfix, ``metrics.json`` history, W&B;
* a task that learns from a teacher sets ``teacher_fingerprint``
  (:func:`training.identity.checkpoint_fingerprint` of the teacher), part of the run identity;
* any other child module with trainable parameters (e.g. distillation adapters) joins the
  optimizer and is checkpointed under its attribute name; a child whose parameters are all frozen
  (``requires_grad_(False)``, e.g. a teacher) stays out of both and is kept in eval mode.
  Under torchrun every trainable parameter must take part in every forward (a DDP rule): keep a
  term whose weight is 0 at some step in the graph rather than skipping it.

Then ``training.engine.fit(task, data, run)`` with ``data`` from
:func:`training.data.build_data` and ``run`` from :func:`training.run.start_run`;
``training/distill.py`` is a worked example.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from datasets.sample import DEPTH, RGB, VALID
from training.data import mirror
from training.losses import edge_aware_smoothness, get_criterion, local_count, shared_count

Batch = Dict[str, Any]
TOTAL = "total"


class Task(nn.Module):
    """What the engine trains (see the module docstring). Subclasses set ``model`` and
    ``input_key`` and implement ``forward(batch) -> (depth, losses)``; a task with a teacher sets
    ``teacher_fingerprint``."""

    model: nn.Module
    input_key: str
    teacher_fingerprint: Optional[str] = None

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        raise NotImplementedError


def with_total(terms: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``terms`` plus ``"total"``, their sum (the terms are already weighted)."""
    return {**terms, TOTAL: sum(terms.values())}


class DepthTask(Task):
    """Supervised depth: ``model(batch[input_key])`` against the ground truth.

    Args:
        model: a model of ``models`` (depth in metres).
        input_key: ``"rgb"`` for the RGB model, ``"audio"`` for the binaural one.
        max_depth: metres; depths are divided by it inside the losses, so loss values and
            learning rates do not depend on the dataset's range.
        criterion: a name of :data:`training.losses.CRITERIA`; logged under that name.
        smoothness_weight: weight of :func:`training.losses.edge_aware_smoothness` (guided by the
            batch's RGB when it has one), logged as ``smoothness``; 0 leaves the term out.
    """

    def __init__(self, model: nn.Module, input_key: str, max_depth: float, criterion: str = "l1",
                 smoothness_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.input_key = input_key
        self.max_depth = float(max_depth)
        self.criterion_name = criterion
        self.criterion = get_criterion(criterion)
        self.smoothness_weight = smoothness_weight

    def supervised_losses(self, depth: torch.Tensor, batch: Batch) -> Dict[str, torch.Tensor]:
        """Weighted supervised terms (no ``total``) for predicted depth (B, 1, H, W) in metres.

        In training the masked means divide by :func:`training.losses.shared_count` (under
        torchrun: every rank's valid pixels, so the ranks together optimise the one-process loss
        of the global batch); in evaluation, where the ranks' shards differ in length, by each
        batch's own count.
        """
        depth = depth.float()  # losses in float32 also under autocast
        valid = batch[VALID]
        count = shared_count if self.training else local_count
        terms = {self.criterion_name: self.criterion(
            depth / self.max_depth, batch[DEPTH] / self.max_depth, valid, count)}
        if self.smoothness_weight > 0:
            terms["smoothness"] = self.smoothness_weight * edge_aware_smoothness(
                depth, valid, batch.get(RGB), count)
        return terms

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        depth = self.model(batch[self.input_key])
        return depth, with_total(self.supervised_losses(depth, batch))


class MirrorAveraged(nn.Module):
    """Test-time mirror averaging: the mean of ``model(x)`` and the mirrored prediction of the
    mirrored input (:func:`training.data.mirror`), the left–right symmetry that
    ``--mirror_augment`` trains. Two forward passes per batch.

    Args:
        model: a depth model of ``models``.
        input_key: ``"rgb"`` or ``"audio"``: what ``x`` is.
    """

    def __init__(self, model: nn.Module, input_key: str) -> None:
        super().__init__()
        self.model = model
        self.input_key = input_key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) depth in metres, the model's output averaged with its mirror image's."""
        return 0.5 * (self.model(x) + mirror(self.model(mirror(x, self.input_key)), DEPTH))


def trainable_children(task: Task) -> Dict[str, nn.Module]:
    """Children of ``task`` other than ``model`` with trainable parameters (checkpointed extras)."""
    return {name: child for name, child in task.named_children()
            if name != "model" and any(p.requires_grad for p in child.parameters())}


def set_train_mode(task: Task) -> None:
    """Train mode, except children whose parameters are all frozen (they stay in eval mode)."""
    task.train()
    for child in task.children():
        parameters = list(child.parameters())
        if parameters and not any(p.requires_grad for p in parameters):
            child.eval()
