"""Depth losses on valid pixels against values computed by hand (training/losses.py)."""
from __future__ import annotations

import math

import pytest
import torch

from training.losses import (CRITERIA, edge_aware_smoothness, get_criterion, l1_silog, masked_l1,
                             masked_l2, silog)


def _pair() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)
    target = torch.tensor([[[[1.0, 0.0], [6.0, 2.0]]]])
    return pred, target, target > 0


def test_masked_l1_and_l2_ignore_holes() -> None:
    pred, target, valid = _pair()
    assert masked_l1(pred, target, valid).item() == pytest.approx((0 + 3 + 2) / 3)
    assert masked_l2(pred, target, valid).item() == pytest.approx((0 + 9 + 4) / 3)


def test_empty_mask_gives_zero_loss_and_zero_gradient() -> None:
    pred = torch.rand(1, 1, 2, 2, requires_grad=True)
    target = torch.zeros(1, 1, 2, 2)
    for name in CRITERIA:
        loss = get_criterion(name)(pred, target, target > 0)
        loss.backward()
        assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred)), name
        pred.grad = None


def test_silog_by_hand() -> None:
    pred, target, valid = _pair()
    d = torch.tensor([0.0, math.log(3 / 6), math.log(4 / 2)])
    expected = math.sqrt(d.pow(2).mean().item() - 0.85 * d.mean().item() ** 2)
    assert silog(pred, target, valid).item() == pytest.approx(expected, rel=1e-6)
    assert l1_silog(pred, target, valid).item() == pytest.approx(5 / 3 + expected, rel=1e-6)


def test_silog_ignores_global_scale_when_fully_scale_invariant() -> None:
    target = torch.tensor([[[[1.0, 2.0], [4.0, 0.0]]]])
    loss = silog(3 * target, target, target > 0, variance_focus=1.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_smoothness_by_hand() -> None:
    depth = torch.tensor([[[[1.0, 1.0, 3.0, 3.0]]]])  # mean 2 → normalised 0.5 0.5 1.5 1.5
    valid = torch.ones_like(depth, dtype=torch.bool)
    # Horizontal neighbour differences 0, 1, 0; a single row has no vertical pair.
    assert edge_aware_smoothness(depth, valid).item() == pytest.approx(1 / 3)
    image = torch.tensor([[[[0.0, 0.0, 1.0, 1.0]]]])  # an edge where the depth steps
    assert edge_aware_smoothness(depth, valid, image).item() == pytest.approx(math.exp(-1) / 3)
    holes = torch.tensor([[[[True, True, False, True]]]])  # only the pair (0, 1) is valid
    assert edge_aware_smoothness(depth, holes).item() == pytest.approx(0.0)
    flat = torch.full((1, 1, 3, 3), 5.0)
    assert edge_aware_smoothness(flat, torch.ones_like(flat, dtype=torch.bool)).item() == 0.0


def test_unknown_criterion() -> None:
    with pytest.raises(ValueError, match="unknown criterion"):
        get_criterion("l3")
