"""The official metrics against values computed by hand (training/metrics.py)."""
from __future__ import annotations

import math

import pytest
import torch

from training.metrics import METRIC_NAMES, DepthMetrics, image_metrics


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three 2x2 images: one with a hole, one all holes, one where the prediction is 0."""
    gt = torch.tensor([[[2.0, 4.0], [0.0, 1.0]],
                       [[0.0, 0.0], [0.0, 0.0]],
                       [[1.0, 1.0], [1.0, 1.0]]])[:, None]
    pred = torch.tensor([[[1.0, 4.0], [3.0, 2.0]],
                         [[5.0, 5.0], [5.0, 5.0]],
                         [[0.0, 1.0], [1.0, 1.0]]])[:, None]
    return pred, gt


# Image 0, valid pixels gt/pred: 2/1, 4/4, 1/2 (the hole's prediction 3 is ignored).
IMAGE0 = {"abs_rel": (0.5 + 0 + 1) / 3, "rmse": math.sqrt(2 / 3), "log10": 2 * math.log10(2) / 3,
          "mae": 2 / 3, "delta1": 1 / 3, "delta2": 1 / 3, "delta3": 1 / 3}
# Image 2: one pixel predicted 0 against gt 1. It is NOT dropped: abs_rel/mae/rmse see 0, and
# log10/deltas see the 1 mm floor (|log10 1 - log10 0.001| = 3, ratio 1000).
IMAGE2 = {"abs_rel": 0.25, "rmse": 0.5, "log10": 0.75, "mae": 0.25,
          "delta1": 0.75, "delta2": 0.75, "delta3": 0.75}


def test_per_image_metrics_match_hand_computation() -> None:
    pred, gt = _batch()
    scores, n_valid = image_metrics(pred, gt)
    assert n_valid.tolist() == [3, 0, 4]
    for column, name in enumerate(METRIC_NAMES):
        assert scores[0, column].item() == pytest.approx(IMAGE0[name], abs=1e-12), name
        assert scores[2, column].item() == pytest.approx(IMAGE2[name], abs=1e-12), name
    assert torch.isnan(scores[1]).all()  # no valid pixel: no score (never 0)


def test_image_without_valid_pixel_is_skipped_and_counted() -> None:
    pred, gt = _batch()
    metrics = DepthMetrics()
    metrics.update(pred, gt)
    result = metrics.compute()
    assert result["n_images"] == 2 and result["n_skipped"] == 1
    for name in METRIC_NAMES:
        assert result[name] == pytest.approx((IMAGE0[name] + IMAGE2[name]) / 2, abs=1e-12), name


def test_all_images_empty_gives_no_score_rather_than_zero() -> None:
    metrics = DepthMetrics()
    metrics.update(torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2))
    result = metrics.compute()
    assert result["n_images"] == 0 and result["n_skipped"] == 2
    assert all(result[name] is None for name in METRIC_NAMES)


def test_valid_threshold_is_a_parameter_and_recorded() -> None:
    pred, gt = _batch()
    metrics = DepthMetrics(valid_threshold=1.5)  # image 0 keeps 2/1 and 4/4; image 2 has none
    metrics.update(pred, gt)
    result = metrics.compute()
    assert result["n_images"] == 1 and result["n_skipped"] == 2
    assert result["abs_rel"] == pytest.approx(0.25)
    assert result["rmse"] == pytest.approx(math.sqrt(0.5))
    assert metrics.protocol()["valid_threshold"] == 1.5


def test_nan_prediction_stays_nan() -> None:
    gt = torch.ones(1, 1, 2, 2)
    pred = torch.tensor([[[[float("nan"), 1.0], [1.0, 1.0]]]])
    metrics = DepthMetrics()
    metrics.update(pred, gt)
    assert math.isnan(metrics.compute()["rmse"])


def test_sums_split_over_shards_equal_the_whole() -> None:
    """What DDP relies on: summing per-rank totals gives exactly the one-process totals."""
    generator = torch.Generator().manual_seed(0)
    gt = torch.rand(6, 1, 8, 8, generator=generator) * 10
    gt[gt < 2] = 0
    gt[3] = 0
    pred = torch.rand(6, 1, 8, 8, generator=generator) * 10
    whole, shard0, shard1 = DepthMetrics(), DepthMetrics(), DepthMetrics()
    whole.update(pred, gt)
    shard0.update(pred[0::2], gt[0::2])
    shard1.update(pred[1::2], gt[1::2])
    shard0.totals += shard1.totals
    assert torch.allclose(shard0.totals, whole.totals, rtol=0, atol=1e-12)
    assert shard0.compute()["n_skipped"] == 1
