"""The official metrics against values computed by hand (training/metrics.py)."""
from __future__ import annotations

import math

import pytest
import torch

from training.metrics import (BV2_MIN_05, METRIC_NAMES, OFFICIAL, PROTOCOLS, DepthMetrics,
                              DepthRangeErrors, MultiProtocolMetrics, format_protocol_table, image_metrics,
                              resolve_protocol)


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


# One 2x2 image whose valid pixels depend on the protocol. gt/pred:
#   0.3/0.6  (valid only for "official": below 0.5 m)
#   0.5/0.5  (exactly 0.5 m: valid for "bv2_min0.5", which is gt >= 0.5, not for gt > 0.5)
#   2.0/1.0
#   0.0/5.0  (a hole: valid for none)
PROTOCOL_GT = torch.tensor([[[[0.3, 0.5], [2.0, 0.0]]]])
PROTOCOL_PRED = torch.tensor([[[[0.6, 0.5], [1.0, 5.0]]]])
LOG2 = math.log10(2)
EXPECTED = {
    # errors -0.3, 0, 1; ratios 2, 1, 2 (2 > 1.25^3 = 1.95, so every delta is 1/3)
    OFFICIAL: {"abs_rel": (1 + 0 + 0.5) / 3, "rmse": math.sqrt((0.09 + 0 + 1) / 3),
               "log10": 2 * LOG2 / 3, "mae": 1.3 / 3,
               "delta1": 1 / 3, "delta2": 1 / 3, "delta3": 1 / 3},
    # errors 0, 1; ratios 1, 2
    BV2_MIN_05: {"abs_rel": 0.25, "rmse": math.sqrt(0.5), "log10": LOG2 / 2, "mae": 0.5,
                 "delta1": 0.5, "delta2": 0.5, "delta3": 0.5},
    # gt > 0.5 (exclusive): only 2.0/1.0 remains
    "gt>0.5": {"abs_rel": 0.5, "rmse": 1.0, "log10": LOG2, "mae": 1.0,
               "delta1": 0.0, "delta2": 0.0, "delta3": 0.0},
}
N_VALID = {OFFICIAL: 3, BV2_MIN_05: 2, "gt>0.5": 1}


@pytest.mark.parametrize("spec, name", [(OFFICIAL, OFFICIAL), (BV2_MIN_05, BV2_MIN_05),
                                        (0.5, "gt>0.5")])
def test_protocols_on_hand_computed_values(spec: object, name: str) -> None:
    metrics = DepthMetrics.for_protocol(spec)
    scores, n_valid = metrics.update(PROTOCOL_PRED, PROTOCOL_GT)
    assert n_valid.tolist() == [N_VALID[name]]
    result = metrics.compute()
    for metric in METRIC_NAMES:
        assert result[metric] == pytest.approx(EXPECTED[name][metric], abs=1e-7), metric
    assert metrics.protocol()["name"] == name


def test_protocol_descriptions_say_which_pixels_count() -> None:
    assert DepthMetrics().protocol()["valid_pixels"] == "gt > 0.0 m"
    bv2 = DepthMetrics.for_protocol(BV2_MIN_05).protocol()
    assert (bv2["valid_pixels"], bv2["valid_threshold"], bv2["valid_inclusive"]) == \
        ("gt >= 0.5 m", 0.5, True)
    # A threshold given as a number is named after its rule, or after the protocol it matches.
    assert DepthMetrics(0.1).protocol()["name"] == "gt>0.1"
    assert DepthMetrics(0.5, inclusive=True).protocol()["name"] == BV2_MIN_05
    assert resolve_protocol(0.0) is PROTOCOLS[OFFICIAL]


def test_unknown_protocol_name_raises() -> None:
    with pytest.raises(ValueError, match="unknown metric protocol 'bv2'"):
        DepthMetrics.for_protocol("bv2")


def test_multi_protocol_one_pass_matches_each_protocol_alone() -> None:
    generator = torch.Generator().manual_seed(0)
    gt = torch.rand(4, 1, 8, 8, generator=generator) * 3
    gt[gt < 0.2] = 0
    pred = torch.rand(4, 1, 8, 8, generator=generator) * 3
    both = MultiProtocolMetrics((BV2_MIN_05, OFFICIAL))
    scores, n_valid = both.update(pred, gt)
    alone = {name: DepthMetrics.for_protocol(name) for name in (OFFICIAL, BV2_MIN_05)}
    for metrics in alone.values():
        metrics.update(pred, gt)
    results = both.compute_all()
    assert list(results) == [BV2_MIN_05, OFFICIAL]  # primary first
    assert results == {name: metrics.compute() for name, metrics in alone.items()}
    # As a DepthMetrics it is the primary protocol's, per-image scores included.
    assert both.compute() == results[BV2_MIN_05]
    assert both.protocol()["name"] == BV2_MIN_05
    assert list(both.protocols()) == [BV2_MIN_05, OFFICIAL]
    assert torch.equal(n_valid, image_metrics(pred, gt, 0.5, inclusive=True)[1])
    assert results[OFFICIAL]["rmse"] != results[BV2_MIN_05]["rmse"]


def test_multi_protocol_names_must_differ() -> None:
    with pytest.raises(ValueError, match="must differ"):
        MultiProtocolMetrics((OFFICIAL, 0.0))


def test_protocol_table_has_a_column_per_protocol() -> None:
    metrics = MultiProtocolMetrics()
    metrics.update(PROTOCOL_PRED, PROTOCOL_GT)
    metrics.update(torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.3))  # valid for official only
    lines = format_protocol_table(metrics.compute_all()).splitlines()
    assert lines[0].split() == ["metric", OFFICIAL, BV2_MIN_05]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    # official: mean of the example image (0.5) and the 0.3 m image (|0.3 - 1| / 0.3)
    assert rows["abs_rel"] == [f"{(0.5 + 0.7 / 0.3) / 2:.4f}", "0.2500"]
    assert rows["n_images"] == ["2", "1"] and rows["n_skipped"] == ["0", "1"]


def test_depth_range_errors_on_hand_computed_values() -> None:
    ranges = DepthRangeErrors((1.0, 2.0))
    gt = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0, 0.0]).view(1, 1, 2, 3)
    error = torch.tensor([0.1, -0.2, 0.3, 0.0, -1.0, 5.0]).view(1, 1, 2, 3)   # hole ignored
    ranges.update(gt + error, gt)
    near, middle, far = ranges.compute()
    assert (near["min_m"], near["max_m"], far["min_m"], far["max_m"]) == (0.0, 1.0, 2.0, None)
    assert [r["share"] for r in (near, middle, far)] == pytest.approx([0.2, 0.4, 0.4])
    assert middle["bias"] == pytest.approx(0.05) and middle["mae"] == pytest.approx(0.25)
    assert middle["abs_rel"] == pytest.approx((0.2 / 1.0 + 0.3 / 1.5) / 2)
    assert far["rmse"] == pytest.approx(math.sqrt(0.5))
    assert DepthRangeErrors((1.0, 9.0)).compute()[0]["mae"] is None   # no pixel: no number


@pytest.mark.parametrize("edges", [(0.0, 1.0), (2.0, 1.0), (1.0, 1.0)])
def test_depth_range_edges_must_be_positive_and_increasing(edges) -> None:
    with pytest.raises(ValueError, match="positive and increasing"):
        DepthRangeErrors(edges)
