"""training.validation: loss means weighted by batch size, and a validation pass in eval mode,
without gradients, scoring every image."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytest
import torch
from torch import nn

from datasets.sample import DEPTH, RGB, VALID
from training.device import DistContext
from training.metrics import DepthMetrics
from training.tasks import DepthTask
from training.validation import LossMeans, validate


class ConstantDepth(nn.Module):
    """Predicts ``depth`` metres everywhere; records (training mode, gradients on) per call."""

    def __init__(self, depth: float) -> None:
        super().__init__()
        self.depth = depth
        self.scale = nn.Parameter(torch.ones(()))
        self.calls: List[Tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.scale * torch.full((x.shape[0], 1, *x.shape[-2:]), self.depth)


def _batch(size: int) -> Dict[str, Any]:
    """``size`` 4x4 images of ground truth 2 m with one hole each."""
    depth = torch.full((size, 1, 4, 4), 2.0)
    depth[:, :, 0, 0] = 0.0
    return {DEPTH: depth, VALID: depth > 0, RGB: torch.rand(size, 3, 4, 4)}


def test_loss_means_weight_each_batch_by_its_size() -> None:
    means = LossMeans(torch.device("cpu"))
    assert means.reduced(DistContext()) == {}  # a pass that saw no batch
    means.add({"l1": torch.tensor(1.0), "total": torch.tensor(2.0)}, size=3)
    means.add({"l1": torch.tensor(3.0), "total": torch.tensor(4.0)}, size=1)
    assert means.local() == pytest.approx({"l1": 1.5, "total": 2.5})
    assert means.reduced(DistContext()) == pytest.approx({"l1": 1.5, "total": 2.5})


def test_validate_scores_every_image_in_eval_mode_without_gradients() -> None:
    model = ConstantDepth(1.0)
    task = DepthTask(model, RGB, max_depth=10.0).train()
    metrics = DepthMetrics()
    sizes: List[int] = []
    means = validate(task, [_batch(2), _batch(1)], torch.device("cpu"), metrics,
                     on_batch=lambda batch, depth, scores, n_valid: sizes.append(len(depth)))
    assert model.calls == [(False, False)] * 2
    assert sizes == [2, 1]
    # 1 m predicted for 2 m on every valid pixel: L1 of the depths divided by max_depth.
    assert means == pytest.approx({"l1": 0.1, "total": 0.1})
    result = metrics.compute()
    assert (result["n_images"], result["n_skipped"]) == (3, 0)
    assert result["rmse"] == pytest.approx(1.0)
