"""Supervised depth losses, all on the pixels the ground truth vouches for (``valid``: gt > 0).

Every criterion takes ``(pred, target, valid, count)`` with ``pred`` and ``target`` of shape
(B, 1, H, W) in the same unit (the training task passes depth divided by ``max_depth``, so the
loss scale does not depend on the dataset's range) and ``valid`` a bool mask of that shape.
Pixels are pooled over the whole batch. A batch without a single valid pixel gives a loss of 0
that still belongs to the graph (no NaN, no gradient), rather than 0/0.

``count`` maps a mask to the number a masked mean divides by: the mask's own pixel count by
default (:func:`local_count`). Under torchrun the training task passes :func:`shared_count`, the
count over every rank's batch divided by the number of ranks, so that DDP's average of the ranks'
gradients is the gradient of one mean over every valid pixel of the global batch: a pixel weighs
the same whichever rank holds it and however many holes the other images of its rank have. The
scale-invariant log loss (:func:`silog`) is a square root of means and does not decompose over
ranks: it always takes each rank's own valid pixels (under torchrun, the mean of the ranks'
values is what is optimised).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
import torch.distributed as dist

Count = Callable[[torch.Tensor], torch.Tensor]
Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Count], torch.Tensor]

SILOG_VARIANCE_FOCUS = 0.85  # λ of Eigen et al. (2014) as used by BTS/AdaBins
LOG_FLOOR = 1e-4  # floor of pred and target before a log, in the loss's unit


def local_count(mask: torch.Tensor) -> torch.Tensor:
    """The pixels of ``mask``: what a masked mean divides by in one process."""
    return mask.sum()


def shared_count(mask: torch.Tensor) -> torch.Tensor:
    """The pixels of ``mask`` summed over every torchrun rank, divided by the number of ranks
    (one all-reduce; every rank must call it at the same step). Without a process group, the
    local count.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return local_count(mask)
    total = mask.sum().double()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def masked_mean(values: torch.Tensor, mask: torch.Tensor,
                count: Count = local_count) -> torch.Tensor:
    """The sum of ``values`` over ``mask`` divided by ``count(mask)``; 0, in the graph, when
    that is 0."""
    total = count(mask)
    if total == 0:
        return (values * 0).sum()
    return torch.where(mask, values, torch.zeros_like(values)).sum() / total


def masked_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
              count: Count = local_count) -> torch.Tensor:
    """Mean absolute error over valid pixels (the official training loss)."""
    return masked_mean((pred - target).abs(), valid, count)


def masked_l2(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
              count: Count = local_count) -> torch.Tensor:
    """Mean squared error over valid pixels: the mean, not the median, of what the input leaves
    uncertain is the prediction it rewards, as the RMSE metric does."""
    return masked_mean((pred - target).pow(2), valid, count)


def silog(
    pred: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    count: Count = local_count,
    variance_focus: float = SILOG_VARIANCE_FOCUS,
) -> torch.Tensor:
    """Scale-invariant log loss (Eigen et al. 2014): ``sqrt(mean(d^2) - λ mean(d)^2)``.

    ``d = log(pred) - log(target)`` over valid pixels, both floored at :data:`LOG_FLOOR`. With
    λ = 1 the loss ignores a global scale error entirely; λ = 0.85 keeps a little of it. Not
    multiplied by 10 (as BTS does): it is added to L1 as is. ``count`` is not used: the means
    are over this process's valid pixels (see the module docstring).
    """
    d = torch.log(pred.clamp(min=LOG_FLOOR)) - torch.log(target.clamp(min=LOG_FLOOR))
    if valid.sum() == 0:
        return (d * 0).sum()
    d = d[valid]
    variance = (d.pow(2).mean() - variance_focus * d.mean().pow(2)).clamp(min=1e-12)
    return variance.sqrt()


def l1_silog(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
             count: Count = local_count) -> torch.Tensor:
    """:func:`masked_l1` + :func:`silog`, unweighted."""
    return masked_l1(pred, target, valid, count) + silog(pred, target, valid)


def l1_l2(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
          count: Count = local_count) -> torch.Tensor:
    """:func:`masked_l1` + :func:`masked_l2`, unweighted."""
    return masked_l1(pred, target, valid, count) + masked_l2(pred, target, valid, count)


CRITERIA: Dict[str, Criterion] = {"l1": masked_l1, "l2": masked_l2, "l1_l2": l1_l2,
                                  "silog": silog, "l1_silog": l1_silog}


def get_criterion(name: str) -> Criterion:
    """The criterion registered as ``name`` (``l1``, ``l2``, ``l1_l2``, ``silog``, ``l1_silog``)."""
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; choose from {', '.join(CRITERIA)}")
    return CRITERIA[name]


def edge_aware_smoothness(
    depth: torch.Tensor, valid: torch.Tensor, image: Optional[torch.Tensor] = None,
    count: Count = local_count,
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
        count: what each mean over neighbour pairs divides by (see the module docstring).

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
        total = total + masked_mean(gradient, pair_valid, count)
    return total
