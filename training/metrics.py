"""The official BatVision depth metrics, accumulated so that DDP ranks can be reduced exactly.

The metrics are those of the official BatVision evaluation (UNetSoundOnly), the numbers papers
report: for each image, on its valid pixels, in metres, with no median scaling::

    abs_rel = mean(|gt - pred| / gt)           rmse  = sqrt(mean((gt - pred)^2))
    log10   = mean(|log10 gt - log10 pred|)     mae   = mean(|gt - pred|)
    deltaK  = mean(max(gt / pred, pred / gt) < 1.25^K),  K = 1, 2, 3

then each metric is averaged over images.

Which pixels are valid is the *protocol* (:class:`Protocol`), and published tables differ on it,
so a table must say which one it used. Two are named in :data:`PROTOCOLS`:

* ``"official"``: ``gt > 0`` (the official code; 0 marks a missing depth);
* ``"bv2_min0.5"``: ``gt >= 0.5`` m, the mask recent BatVision V2 papers use.

:class:`MultiProtocolMetrics` scores the same predictions under several protocols in one pass.
Two choices that earlier code got wrong:

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

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist

METRIC_NAMES: Tuple[str, ...] = ("abs_rel", "rmse", "log10", "mae", "delta1", "delta2", "delta3")
DEFAULT_VALID_THRESHOLD = 0.0  # metres: a pixel counts when gt > this
MIN_PREDICTION = 1e-3  # metres: floor of the prediction inside log10 and the delta ratios only


@dataclass(frozen=True)
class Protocol:
    """Which ground-truth pixels are scored.

    Args:
        name: how tables and ``metrics.json`` refer to it.
        valid_threshold: metres.
        inclusive: valid pixels are ``gt >= valid_threshold`` if True, ``gt > valid_threshold``
            if False.
    """

    name: str
    valid_threshold: float
    inclusive: bool = False

    def describe(self) -> str:
        """The valid-pixel rule, e.g. ``"gt >= 0.5 m"``."""
        return f"gt {'>=' if self.inclusive else '>'} {self.valid_threshold} m"


OFFICIAL = "official"
BV2_MIN_05 = "bv2_min0.5"
PROTOCOLS: Dict[str, Protocol] = {
    OFFICIAL: Protocol(OFFICIAL, DEFAULT_VALID_THRESHOLD),
    BV2_MIN_05: Protocol(BV2_MIN_05, 0.5, inclusive=True),
}
ProtocolSpec = Union[str, float, Protocol]


def protocol_for(valid_threshold: float, inclusive: bool = False) -> Protocol:
    """The protocol with this valid-pixel rule: the one of :data:`PROTOCOLS` that has it, else
    one named after the rule (``"gt>0.1"``, ``"gt>=0.3"``).

    Args:
        valid_threshold: metres.
        inclusive: ``gt >= valid_threshold`` rather than ``gt > valid_threshold``.
    """
    threshold, inclusive = float(valid_threshold), bool(inclusive)
    for protocol in PROTOCOLS.values():
        if (protocol.valid_threshold, protocol.inclusive) == (threshold, inclusive):
            return protocol
    return Protocol(f"gt{'>=' if inclusive else '>'}{threshold:g}", threshold, inclusive)


def resolve_protocol(spec: ProtocolSpec) -> Protocol:
    """A :class:`Protocol` from a name of :data:`PROTOCOLS`, a threshold, or a protocol.

    Args:
        spec: ``"official"`` / ``"bv2_min0.5"``; a threshold in metres, valid when ``gt > spec``
            (see :func:`protocol_for`; 0 is ``"official"``); or a :class:`Protocol` (as is).

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(spec, Protocol):
        return spec
    if isinstance(spec, str):
        if spec not in PROTOCOLS:
            raise ValueError(
                f"unknown metric protocol {spec!r}; choose from {', '.join(PROTOCOLS)}")
        return PROTOCOLS[spec]
    return protocol_for(spec)


def image_metrics(
    pred: torch.Tensor,
    gt: torch.Tensor,
    valid_threshold: float = DEFAULT_VALID_THRESHOLD,
    min_prediction: float = MIN_PREDICTION,
    inclusive: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Score each image of a batch.

    Args:
        pred: (B, 1, H, W) or (B, H, W) predicted depth in metres.
        gt: ground-truth depth in metres, same shape; only pixels with ``gt > valid_threshold``
            (``gt >= valid_threshold`` if ``inclusive``) are scored.
        valid_threshold: metres.
        min_prediction: metres; floor of the prediction inside ``log10`` and the delta ratios.
        inclusive: whether a pixel exactly at ``valid_threshold`` is scored.

    Returns:
        ``(scores, n_valid)``: float64 (B, 7) per-image metrics in :data:`METRIC_NAMES` order
        (a row of NaN for an image with no valid pixel), and int64 (B,) valid pixel counts.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} "
                         "differ in shape")
    pred = pred.detach().flatten(1).double()
    gt = gt.detach().flatten(1).double()
    mask = gt >= valid_threshold if inclusive else gt > valid_threshold
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
        inclusive: score ``gt >= valid_threshold`` instead (see :class:`Protocol`).
    """

    def __init__(
        self,
        valid_threshold: float = DEFAULT_VALID_THRESHOLD,
        min_prediction: float = MIN_PREDICTION,
        device: "torch.device | str" = "cpu",
        inclusive: bool = False,
    ) -> None:
        self.valid = protocol_for(valid_threshold, inclusive)
        self.valid_threshold, self.inclusive = self.valid.valid_threshold, self.valid.inclusive
        self.min_prediction = float(min_prediction)
        # [sum of each metric over scored images..., n_images, n_skipped]
        self.totals = torch.zeros(len(METRIC_NAMES) + 2, dtype=torch.float64, device=device)

    @classmethod
    def for_protocol(cls, protocol: ProtocolSpec, min_prediction: float = MIN_PREDICTION,
                     device: "torch.device | str" = "cpu") -> "DepthMetrics":
        """Metrics under ``protocol`` (anything :func:`resolve_protocol` takes; the name stored
        is the one :func:`protocol_for` gives its rule)."""
        resolved = resolve_protocol(protocol)
        return cls(resolved.valid_threshold, min_prediction, device, inclusive=resolved.inclusive)

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Add a batch; returns :func:`image_metrics`' ``(scores, n_valid)`` (per-image reports)."""
        scores, n_valid = image_metrics(pred, gt, self.valid_threshold, self.min_prediction,
                                        self.inclusive)
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
        """How the numbers were computed (``name`` first), to store beside them."""
        return {
            "name": self.valid.name,
            "valid_pixels": self.valid.describe(),
            "valid_threshold": self.valid_threshold,
            "valid_inclusive": self.inclusive,
            "min_prediction": self.min_prediction,
            "min_prediction_used_in": ["log10", "delta1", "delta2", "delta3"],
            "averaging": "per image, then mean over images; images without a valid pixel skipped",
            "units": "metres",
        }


def depth_range_edges(edges: Sequence[float]) -> Tuple[float, ...]:
    """``edges`` as floats, checked positive and strictly increasing.

    Raises:
        ValueError: otherwise.
    """
    checked = tuple(float(e) for e in edges)
    if any(e <= 0 for e in checked) or list(checked) != sorted(set(checked)):
        raise ValueError(f"depth range edges must be positive and increasing, got {edges}")
    return checked


class DepthRangeErrors:
    """Errors by ground-truth depth range, pooled over the valid pixels (gt > 0) of a split: where
    a model is accurate, near or far. Pixels, not images, are averaged (not a protocol of the
    tables); sums in float64, so the millions of pixels of a split add without float32
    round-off. One process fills it (``evaluate.py``), so it has no DDP reduction.

    Args:
        edges: increasing metres, e.g. ``(1, 2)``: ranges ``[0, 1)``, ``[1, 2)``, ``[2, inf)``.
        device: where the sums live.
    """

    def __init__(self, edges: Sequence[float], device: "torch.device | str" = "cpu") -> None:
        self.edges = depth_range_edges(edges)
        self.boundaries = torch.tensor(self.edges, dtype=torch.float64, device=device)
        # per range: pixels, sum(pred - gt), sum |pred - gt|, sum |pred - gt| / gt,
        # sum (pred - gt)^2
        self.sums = torch.zeros(len(self.edges) + 1, 5, dtype=torch.float64, device=device)

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """Add a batch of (B, 1, H, W) predictions and ground truth in metres."""
        valid = gt > 0
        truth = gt[valid].double()
        error = pred[valid].double() - truth
        ranges = torch.bucketize(truth, self.boundaries, right=True)
        values = torch.stack([torch.ones_like(error), error, error.abs(), error.abs() / truth,
                              error.square()], dim=1)
        self.sums.index_add_(0, ranges, values)

    def compute(self) -> List[Dict[str, Any]]:
        """One dict per range: ``min_m``, ``max_m`` (``None``: unbounded), ``share`` of the valid
        pixels, and over its pixels the mean ``bias`` (pred − gt) and ``mae`` in metres,
        ``abs_rel`` and ``rmse`` (``None`` where the range has no pixel)."""
        total = float(self.sums[:, 0].sum())
        bounds = (0.0, *self.edges, None)
        rows = []
        for i, (pixels, *sums) in enumerate(self.sums.tolist()):
            bias, mae, abs_rel, mse = (x / pixels if pixels else None for x in sums)
            rows.append({"min_m": bounds[i], "max_m": bounds[i + 1],
                         "share": pixels / total if total else None, "bias": bias, "mae": mae,
                         "abs_rel": abs_rel, "rmse": None if mse is None else mse ** 0.5})
        return rows


class MultiProtocolMetrics(DepthMetrics):
    """Scores the same predictions under several protocols in one pass.

    It *is* the :class:`DepthMetrics` of the first (primary) protocol — ``update`` returns its
    per-image scores, ``compute`` and ``protocol`` describe it — so it can stand in for one
    (e.g. in ``training.validation.validate``); :meth:`compute_all` and :meth:`protocols` cover every
    protocol, keyed by protocol name, primary first.

    Args:
        protocols: anything :func:`resolve_protocol` takes, primary first; distinct names.
        min_prediction: metres; see :func:`image_metrics`.
        device: where the sums live.

    Raises:
        ValueError: no protocol, an unknown name, or two protocols with the same name.
    """

    def __init__(
        self,
        protocols: Sequence[ProtocolSpec] = tuple(PROTOCOLS),
        min_prediction: float = MIN_PREDICTION,
        device: "torch.device | str" = "cpu",
    ) -> None:
        resolved = [resolve_protocol(spec) for spec in protocols]
        if not resolved:
            raise ValueError("MultiProtocolMetrics needs at least one protocol")
        names = [protocol_for(p.valid_threshold, p.inclusive).name for p in resolved]
        if len(set(names)) != len(names):
            raise ValueError(f"metric protocols must differ, got {names}")
        primary, *others = resolved
        super().__init__(primary.valid_threshold, min_prediction, device, primary.inclusive)
        self.others = [DepthMetrics.for_protocol(p, min_prediction, device) for p in others]

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Add a batch under every protocol; returns the primary's ``(scores, n_valid)``."""
        for metrics in self.others:
            metrics.update(pred, gt)
        return super().update(pred, gt)

    def all_reduce(self) -> None:
        """Sum every protocol's totals over the DDP ranks (no-op without a process group)."""
        super().all_reduce()
        for metrics in self.others:
            metrics.all_reduce()

    def compute_all(self) -> Dict[str, Dict[str, Optional[float]]]:
        """Protocol name → :meth:`DepthMetrics.compute` under it (primary first)."""
        return {self.valid.name: self.compute(),
                **{metrics.valid.name: metrics.compute() for metrics in self.others}}

    def protocols(self) -> Dict[str, Dict[str, object]]:
        """Protocol name → :meth:`DepthMetrics.protocol` under it (primary first)."""
        return {self.valid.name: self.protocol(),
                **{metrics.valid.name: metrics.protocol() for metrics in self.others}}


def format_metrics(metrics: Dict[str, Optional[float]],
                   names: Tuple[str, ...] = METRIC_NAMES) -> str:
    """``rmse=1.2345 abs_rel=...`` (``n/a`` where no image was scored)."""
    return " ".join(f"{name}={'n/a' if metrics[name] is None else format(metrics[name], '.4f')}"
                    for name in names)


def format_protocol_table(results: Mapping[str, Mapping[str, Optional[float]]],
                          names: Tuple[str, ...] = METRIC_NAMES) -> str:
    """A text table, one row per metric and one column per protocol.

    Args:
        results: protocol name → metrics, e.g. :meth:`MultiProtocolMetrics.compute_all`.
        names: metric rows, in order; ``n_images`` and ``n_skipped`` rows follow them.

    Returns:
        Lines such as ``rmse      0.6550    0.6012`` under a header of protocol names
        (``n/a`` where no image was scored).
    """
    width = max([10, *(len(name) + 2 for name in results)])

    def cell(value: Optional[float], digits: str) -> str:
        return format("n/a" if value is None else format(value, digits), f">{width}")

    lines = [f"{'metric':<9}" + "".join(format(name, f">{width}") for name in results)]
    lines += [f"{name:<9}" + "".join(cell(metrics[name], ".4f") for metrics in results.values())
              for name in names]
    lines += [f"{name:<9}" + "".join(cell(metrics[name], "d") for metrics in results.values())
              for name in ("n_images", "n_skipped")]
    return "\n".join(lines)
