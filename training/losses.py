"""Supervised depth losses, all on the pixels the ground truth vouches for (``valid``: gt > 0).

Every criterion takes ``(pred, target, valid)`` with ``pred`` and ``target`` of shape
(B, 1, H, W) in the same unit (the training task passes depth divided by ``max_depth``, so the
loss scale does not depend on the dataset's range) and ``valid`` a bool mask of that shape.
Pixels are pooled over the whole batch. A batch without a single valid pixel gives a loss of 0
that still belongs to the graph (no NaN, no gradient), rather than 0/0.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

SILOG_VARIANCE_FOCUS = 0.85  # λ of Eigen et al. (2014) as used by BTS/AdaBins
LOG_FLOOR = 1e-4  # floor of pred and target before a log, in the loss's unit


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    count = mask.sum()
    if count == 0:
        return (values * 0).sum()
    return torch.where(mask, values, torch.zeros_like(values)).sum() / count


def masked_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over valid pixels (the official training loss)."""
    return _masked_mean((pred - target).abs(), valid)


def masked_l2(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean squared error over valid pixels: the mean, not the median, of what the input leaves
    uncertain is the prediction it rewards, as the RMSE metric does."""
    return _masked_mean((pred - target).pow(2), valid)


def silog(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    variance_focus: float = SILOG_VARIANCE_FOCUS,
) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al. 2014): ``sqrt(mean(d^2) - λ mean(d)^2)``.

    ``d = log(pred) - log(target)`` over valid pixels, both floored at :data:`LOG_FLOOR`. With
    λ = 1 the loss ignores a global scale error entirely; λ = 0.85 keeps a little of it. Not
    multiplied by 10 (as BTS does): it is added to L1 as is.
    """
    d = torch.log(pred.clamp(min=LOG_FLOOR)) - torch.log(target.clamp(min=LOG_FLOOR))
    if valid.sum() == 0:
        return (d * 0).sum()
    d = d[valid]
    variance = (d.pow(2).mean() - variance_focus * d.mean().pow(2)).clamp(min=1e-12)
    return variance.sqrt()


def l1_silog(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """:func:`masked_l1` + :func:`silog`, unweighted."""
    return masked_l1(pred, target, valid) + silog(pred, target, valid)


def l1_l2(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """:func:`masked_l1` + :func:`masked_l2`, unweighted."""
    return masked_l1(pred, target, valid) + masked_l2(pred, target, valid)


CRITERIA: Dict[str, Criterion] = {"l1": masked_l1, "l2": masked_l2, "l1_l2": l1_l2,
                                  "silog": silog, "l1_silog": l1_silog}


def get_criterion(name: str) -> Criterion:
    """The criterion registered as ``name`` (``l1``, ``l2``, ``l1_l2``, ``silog``, ``l1_silog``)."""
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; choose from {', '.join(CRITERIA)}")
    return CRITERIA[name]


def edge_aware_smoothness(
    depth: torch.Tensor, valid: torch.Tensor, image: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Edge-aware smoothness of a predicted depth map (monodepth2's term, on depth).

    The depth is divided by its mean over each image's valid pixels, so the term cannot be lowered
    by shrinking the whole map. Horizontal and vertical differences are taken between neighbours
    that are both valid and weighted by ``exp(-mean_c |∇image|)`` so depth may jump where the
    image has an edge; the result is the mean over horizontal pairs plus the mean over vertical
    pairs.

    Args:
        depth: (B, 1, H, W) predicted depth, any unit.
        valid: (B, 1, H, W) bool ground-truth validity.
        image: optional (B, C, H, W) guide aligned with the depth (the RGB view); without it the
            weights are 1 (plain smoothness).

    Returns:
        Scalar loss, 0 for a constant map.
    """
    valid_f = valid.to(depth.dtype)
    mean_depth = (depth * valid_f).sum(dim=(1, 2, 3), keepdim=True) / valid_f.sum(
        dim=(1, 2, 3), keepdim=True).clamp(min=1)
    norm = depth / (mean_depth + 1e-7)
    total = depth.new_zeros(())
    for dim in (-1, -2):
        length = depth.shape[dim]

        def diff(x: torch.Tensor) -> torch.Tensor:
            return (x.narrow(dim, 1, length - 1) - x.narrow(dim, 0, length - 1)).abs()

        pair_valid = valid.narrow(dim, 1, length - 1) & valid.narrow(dim, 0, length - 1)
        gradient = diff(norm)
        if image is not None:
            gradient = gradient * torch.exp(-diff(image).mean(dim=1, keepdim=True))
        total = total + _masked_mean(gradient, pair_valid)
    return total
