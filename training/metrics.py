"""The official BatVision depth metrics, accumulated so that DDP ranks can be reduced exactly.

Protocol (``/work/shared/docs/batvision-format.md``, the numbers papers report): for each image,
on its pixels with ground truth ``gt > valid_threshold`` (default 0), in metres, with no median
scaling::

    abs_rel = mean(|gt - pred| / gt)           rmse  = sqrt(mean((gt - pred)^2))
    log10   = mean(|log10 gt - log10 pred|)     mae   = mean(|gt - pred|)
    deltaK  = mean(max(gt / pred, pred / gt) < 1.25^K),  K = 1, 2, 3

then each metric is averaged over images. Two choices that earlier code got wrong:

* No pixel is dropped because of its *prediction*. A prediction at or below zero would make
  ``log10`` and the ratios undefined, so inside those two terms only the prediction is clamped
  to ``min_prediction`` (1 mm by default); ``abs_rel``, ``rmse`` and ``mae`` see it unchanged.
  A model that predicts 0 is therefore punished, not hidden.
* An image without any valid pixel has no score: it is excluded from the means and counted in
  ``n_skipped``. It is never scored 0, and a NaN is never turned into 0.

The accumulator holds per-metric *sums* over images plus the two counts in one float64 tensor,
so summing that tensor over DDP ranks gives exactly the single-process result.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist

METRIC_NAMES: Tuple[str, ...] = ("abs_rel", "rmse", "log10", "mae", "delta1", "delta2", "delta3")
DEFAULT_VALID_THRESHOLD = 0.0  # metres: a pixel counts when gt > this
MIN_PREDICTION = 1e-3  # metres: floor of the prediction inside log10 and the delta ratios only


def image_metrics(
    pred: torch.Tensor,
    gt: torch.Tensor,
    valid_threshold: float = DEFAULT_VALID_THRESHOLD,
    min_prediction: float = MIN_PREDICTION,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Score each image of a batch.

    Args:
        pred: (B, 1, H, W) or (B, H, W) predicted depth in metres.
        gt: ground-truth depth in metres, same shape; pixels with ``gt <= valid_threshold`` are
            ignored.
        valid_threshold: metres.
        min_prediction: metres; floor of the prediction inside ``log10`` and the delta ratios.

    Returns:
        ``(scores, n_valid)``: float64 (B, 7) per-image metrics in :data:`METRIC_NAMES` order
        (a row of NaN for an image with no valid pixel), and int64 (B,) valid pixel counts.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} "
                         "differ in shape")
    pred = pred.detach().flatten(1).double()
    gt = gt.detach().flatten(1).double()
    mask = gt > valid_threshold
    n_valid = mask.sum(dim=1)
    # Invalid pixels get a harmless stand-in (1 m) so no inf/NaN is formed; the mask drops them.
    gt_safe = torch.where(mask, gt, torch.ones_like(gt))
    floored = torch.where(mask, pred.clamp(min=min_prediction), torch.ones_like(pred))
    error = torch.where(mask, gt - pred, torch.zeros_like(pred))
    ratio = torch.maximum(gt_safe / floored, floored / gt_safe)

    def mean(values: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, values, torch.zeros_like(values)).sum(dim=1) / n_valid

    scores = torch.stack([
        mean(error.abs() / gt_safe),
        mean(error.pow(2)).sqrt(),
        mean((torch.log10(gt_safe) - torch.log10(floored)).abs()),
        mean(error.abs()),
        *(mean((ratio < 1.25 ** k).double()) for k in (1, 2, 3)),
    ], dim=1)
    # n_valid == 0 gave 0/0 = NaN rows already; they are what the accumulator skips.
    return scores, n_valid


class DepthMetrics:
    """Running sums of the per-image metrics over a split (see the module docstring).

    Args:
        valid_threshold: metres; pixels with ``gt > valid_threshold`` are scored.
        min_prediction: metres; see :func:`image_metrics`.
        device: where the sums live (the device of the predictions, so updates need no copy).
    """

    def __init__(
        self,
        valid_threshold: float = DEFAULT_VALID_THRESHOLD,
        min_prediction: float = MIN_PREDICTION,
        device: "torch.device | str" = "cpu",
    ) -> None:
        self.valid_threshold = float(valid_threshold)
        self.min_prediction = float(min_prediction)
        # [sum of each metric over scored images..., n_images, n_skipped]
        self.totals = torch.zeros(len(METRIC_NAMES) + 2, dtype=torch.float64, device=device)

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Add a batch; returns :func:`image_metrics`' ``(scores, n_valid)`` (per-image reports)."""
        scores, n_valid = image_metrics(pred, gt, self.valid_threshold, self.min_prediction)
        scored = n_valid > 0
        self.totals[: len(METRIC_NAMES)] += scores[scored].sum(dim=0)
        self.totals[-2] += scored.sum()
        self.totals[-1] += (~scored).sum()
        return scores, n_valid

    def all_reduce(self) -> None:
        """Sum the totals over every DDP rank (no-op without an initialised process group)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.totals, op=dist.ReduceOp.SUM)

    def compute(self) -> Dict[str, Optional[float]]:
        """Mean of each metric over scored images, plus ``n_images`` and ``n_skipped``.

        A metric is ``None`` when no image had a valid pixel (there is nothing to average).
        """
        totals = self.totals.tolist()
        n_images, n_skipped = int(totals[-2]), int(totals[-1])
        result: Dict[str, Optional[float]] = {
            name: (total / n_images if n_images else None)
            for name, total in zip(METRIC_NAMES, totals)
        }
        result["n_images"] = n_images
        result["n_skipped"] = n_skipped
        return result

    def protocol(self) -> Dict[str, object]:
        """How the numbers were computed, to store beside them."""
        return {
            "valid_pixels": f"gt > {self.valid_threshold} m",
            "valid_threshold": self.valid_threshold,
            "min_prediction": self.min_prediction,
            "min_prediction_used_in": ["log10", "delta1", "delta2", "delta3"],
            "averaging": "per image, then mean over images; images without a valid pixel skipped",
            "units": "metres",
        }


def format_metrics(metrics: Dict[str, Optional[float]],
                   names: Tuple[str, ...] = METRIC_NAMES) -> str:
    """``rmse=1.2345 abs_rel=...`` (``n/a`` where no image was scored)."""
    return " ".join(f"{name}={'n/a' if metrics[name] is None else format(metrics[name], '.4f')}"
                    for name in names)
