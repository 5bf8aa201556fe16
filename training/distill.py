"""Knowledge distillation from the RGB teacher to the binaural student.

Three ingredients, each usable on its own:

* **Depth KD** (:func:`depth_kd_loss`): student depth vs teacher depth on *every* pixel, so the
  teacher fills the holes of the ground truth. Both depths are divided by ``max_depth`` first, so
  the loss is in normalised units and its weight does not depend on the dataset's depth range.
* **Feature KD** (:class:`FeatureAdapters`, :func:`feature_kd_loss`): student features at chosen
  levels pass through a learnable 1×1 convolution to the teacher's channel count and are matched
  to the teacher's features with one of :data:`MATCHINGS`.

  Why the decoder levels ``d1..d4`` are the default (:data:`models.blocks.DECODER_KEYS`): the
  student's encoder levels ``x1..x5`` are computed from a spectrogram, whose axes are
  frequency × time, while the teacher's are computed from an image, whose axes are height × width.
  The tensors have the same shape, but position (i, j) means unrelated things in the two, so
  matching them pixel by pixel asks the student to paint an image onto its spectrogram grid.
  The decoder of both models produces a depth map on the image grid, so its features are
  spatially comparable. The encoder levels stay available for the ablation.
* **Weight schedules** (:func:`schedule_factor`, :func:`teacher_confidence`): ``constant``,
  ``linear`` and ``cosine`` ramp the KD weights from 0 to their full value over a ramp length;
  ``confidence`` keeps the weight constant in time but weights each pixel of the depth KD by how
  well the teacher agrees with the ground truth there; ``gated`` (:func:`teacher_gate`) keeps
  the depth KD only on the pixels where the teacher is closer to the ground truth than the
  student is at that step.
* **Controls of the gate** (``--kd_schedule``), each the gated term with one part of the
  teacher's information taken out. On a valid pixel the gate passes, ``sign(s - t)`` equals
  ``sign(s - g)``, so the gated L1 gradient there is the ground truth's: the teacher only picks
  which pixels get it, and its depth values count only in the holes. ``hard_pixels``
  (:func:`hardest_pixels`) puts an L1 term towards the *ground truth* on as many valid pixels as
  the gate passes in the batch, chosen by the student's own error (the largest), and nothing in
  the holes; ``holes`` keeps only the gated term's hole part (the teacher's depth where there is
  no ground truth). ``--feature_teacher random`` matches the features of an untrained twin of the
  teacher instead of the teacher's: the feature terms' structure without its knowledge.

:class:`DistillationTask` combines them into the named loss terms the training engine
optimises, with the frozen teacher of :func:`load_teacher`.
"""
from __future__ import annotations

import math
import os
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from datasets.errors import DataError
from datasets.sample import AUDIO, DEPTH, RGB, VALID
from models import RGBDepthModel, build_model
from models.blocks import DECODER_KEYS, check_feature_levels
from training.checkpoint import load_checkpoint, load_model
from training.identity import checkpoint_fingerprint
from training.tasks import Batch, DepthTask, with_total

MATCHINGS = ("mse", "cosine", "attention")
DEPTH_KD_KINDS = ("l1", "l2")
SCHEDULES = ("constant", "linear", "cosine", "confidence", "gated", "hard_pixels", "holes")
FEATURE_TEACHERS = ("teacher", "random")
TEACHER_MODEL = RGBDepthModel.model_name


def depth_kd_loss(
    student_depth: torch.Tensor,
    teacher_depth: torch.Tensor,
    max_depth: float,
    pixel_weight: torch.Tensor | None = None,
    kind: str = "l1",
) -> torch.Tensor:
    """Distance between student and teacher depth on every pixel, in normalised units.

    Args:
        student_depth: (B, 1, H, W) student prediction in metres.
        teacher_depth: (B, 1, H, W) teacher prediction in metres (no gradient needed).
        max_depth: depth range in metres; both maps are divided by it.
        pixel_weight: optional (B, 1, H, W) non-negative weights (e.g. :func:`teacher_confidence`).
            The result is the plain mean of weight × error, so a distrusted teacher also pulls
            less overall, instead of the same total pull spread over fewer pixels.
        kind: ``"l1"`` (absolute error) or ``"l2"`` (squared error).

    Returns:
        Scalar loss; 0 when the two maps agree.
    """
    if kind not in DEPTH_KD_KINDS:
        raise ValueError(f"depth KD kind must be one of {DEPTH_KD_KINDS}, got {kind!r}")
    diff = (student_depth - teacher_depth) / max_depth
    error = diff.abs() if kind == "l1" else diff.pow(2)
    if pixel_weight is not None:
        error = error * pixel_weight
    return error.mean()


def standardise(features: torch.Tensor) -> torch.Tensor:
    """Per sample, shift and scale a (B, C, H, W) map to zero mean and unit variance over (C, H, W).

    Layer-norm-like, without affine parameters. Unlike normalising each pixel's channel vector
    (which would make MSE a rescaled cosine distance), this keeps how feature energy varies across
    pixels and channels, and removes only the overall offset and scale that differ between two
    networks.
    """
    return F.layer_norm(features, features.shape[1:])


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Spatial attention map of Zagoruyko & Komodakis (2017), "Paying more attention to attention".

    Args:
        features: (B, C, H, W).

    Returns:
        (B, H*W): mean over channels of ``|f|^2`` per pixel, scaled to unit L2 norm per sample.
    """
    return F.normalize(features.pow(2).mean(dim=1).flatten(1), dim=1)


def feature_kd_loss(student: torch.Tensor, teacher: torch.Tensor, matching: str) -> torch.Tensor:
    """Distance between (adapted) student features and teacher features at one level.

    Args:
        student: (B, C, H, W) student features, already mapped to the teacher's channel count.
        teacher: (B, C, H, W) teacher features.
        matching: ``"mse"``: mean squared error between :func:`standardise`-d maps;
            ``"cosine"``: 1 − cosine similarity of the channel vectors, averaged over pixels;
            ``"attention"``: squared L2 distance between :func:`attention_map`-s, averaged over
            the batch (each term lies in [0, 2]).

    Returns:
        Scalar loss; 0 when the two maps agree (for ``mse`` and ``attention`` also when they agree
        up to a positive per-sample scale).
    """
    if student.shape != teacher.shape:
        raise ValueError(f"student features {tuple(student.shape)} and teacher features "
                         f"{tuple(teacher.shape)} differ")
    if matching == "mse":
        return F.mse_loss(standardise(student), standardise(teacher))
    if matching == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=1)).mean()
    if matching == "attention":
        return (attention_map(student) - attention_map(teacher)).pow(2).sum(dim=1).mean()
    raise ValueError(f"feature matching must be one of {MATCHINGS}, got {matching!r}")


class FeatureAdapters(nn.Module):
    """One learnable 1×1 convolution per level, mapping student channels to teacher channels.

    The adapters are trained with the student (their parameters go to the optimizer and the
    checkpoint) and are not used at inference.

    Args:
        student_channels: channel count of each student level, e.g. ``{"d1": 128, ...}``.
        teacher_channels: channel count of each teacher level.
        levels: the levels to distil, each a key of both mappings.
    """

    def __init__(
        self,
        student_channels: Mapping[str, int],
        teacher_channels: Mapping[str, int],
        levels: Sequence[str],
    ) -> None:
        super().__init__()
        check_feature_levels(levels)
        self.levels = tuple(levels)
        self.adapters = nn.ModuleDict(
            {level: nn.Conv2d(student_channels[level], teacher_channels[level], kernel_size=1)
             for level in self.levels}
        )

    @classmethod
    def from_features(
        cls,
        student_features: Mapping[str, torch.Tensor],
        teacher_features: Mapping[str, torch.Tensor],
        levels: Sequence[str],
    ) -> "FeatureAdapters":
        """Size the adapters from one forward pass of each model (feature dicts of (B, C, H, W))."""
        return cls(
            {name: f.shape[1] for name, f in student_features.items()},
            {name: f.shape[1] for name, f in teacher_features.items()},
            levels,
        )

    def forward(
        self,
        student_features: Mapping[str, torch.Tensor],
        teacher_features: Mapping[str, torch.Tensor],
        matching: str = "mse",
    ) -> Dict[str, torch.Tensor]:
        """Adapt the student's features and match them to the teacher's.

        Args:
            student_features: the student's ``return_features`` dict.
            teacher_features: the teacher's ``return_features`` dict.
            matching: one of :data:`MATCHINGS` (see :func:`feature_kd_loss`).

        Returns:
            ``{level: scalar loss}`` for every distilled level.
        """
        return {
            level: feature_kd_loss(self.adapters[level](student_features[level]),
                                   teacher_features[level], matching)
            for level in self.levels
        }


def schedule_factor(schedule: str, progress: float, ramp: float = 1.0) -> float:
    """Multiplier in [0, 1] applied to the KD weights at a point of training.

    Args:
        schedule: one of :data:`SCHEDULES`. Every schedule but ``linear`` and ``cosine`` gives 1
            throughout; ``linear`` rises as ``progress / ramp``; ``cosine`` as
            ``(1 - cos(pi * progress / ramp)) / 2`` (slow start, slow finish); both stay at 1 once
            ``progress >= ramp``.
        progress: how far training is, in the unit of ``ramp`` (epochs, steps, or a fraction).
        ramp: length of the ramp in the same unit; must be > 0.

    Returns:
        The factor.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"KD schedule must be one of {SCHEDULES}, got {schedule!r}")
    if ramp <= 0:
        raise ValueError(f"KD ramp length must be > 0, got {ramp}")
    fraction = min(max(progress / ramp, 0.0), 1.0)
    if schedule == "linear":
        return fraction
    if schedule == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * fraction))
    return 1.0


def teacher_confidence(
    teacher_depth: torch.Tensor,
    gt_depth: torch.Tensor,
    valid: torch.Tensor,
    tau: float = 0.2,
) -> torch.Tensor:
    """Per-pixel trust in the teacher, from how well it agrees with the ground truth.

    On valid pixels ``w = exp(-|t - gt| / (tau * gt))``: 1 where the teacher is exact, 1/e where
    its relative error equals ``tau``. The holes are filled by :func:`fill_holes_with_image_mean`.

    Args:
        teacher_depth: (B, 1, H, W) in metres.
        gt_depth: (B, 1, H, W) in metres, 0 where invalid.
        valid: (B, 1, H, W) bool mask of valid ground truth.
        tau: relative-error scale, > 0.

    Returns:
        (B, 1, H, W) weights in (0, 1], detached.
    """
    if tau <= 0:
        raise ValueError(f"confidence tau must be > 0, got {tau}")
    with torch.no_grad():
        valid = valid.bool()
        safe_gt = torch.where(valid, gt_depth, torch.ones_like(gt_depth))
        weight = torch.exp(-(teacher_depth - gt_depth).abs() / (tau * safe_gt))
        return fill_holes_with_image_mean(weight, valid)


def teacher_gate(
    teacher_depth: torch.Tensor,
    student_depth: torch.Tensor,
    gt_depth: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """1 on the valid pixels where the teacher is closer to the ground truth than the student.

    Where the student is already as close or closer, the teacher's depth is the worse answer of
    the two, so those pixels get 0. The gate has no threshold to tune: it follows the student as
    it learns. The holes are filled by :func:`fill_holes_with_image_mean`.

    Args:
        teacher_depth, student_depth: (B, 1, H, W) in metres (the student's is not differentiated
            through).
        gt_depth: (B, 1, H, W) in metres, 0 where invalid.
        valid: (B, 1, H, W) bool mask of valid ground truth.

    Returns:
        (B, 1, H, W) weights in [0, 1], detached.
    """
    with torch.no_grad():
        closer = (teacher_depth - gt_depth).abs() < (student_depth - gt_depth).abs()
        return fill_holes_with_image_mean(closer.to(teacher_depth.dtype), valid.bool())


def hardest_pixels(student_depth: torch.Tensor, gt_depth: torch.Tensor, valid: torch.Tensor,
                   count: int) -> torch.Tensor:
    """1 on the ``count`` valid pixels of the batch where the student is furthest from the
    ground truth, 0 elsewhere (holes included).

    Args:
        student_depth: (B, 1, H, W) in metres (not differentiated through).
        gt_depth: (B, 1, H, W) in metres; read on valid pixels only.
        valid: (B, 1, H, W) bool mask of valid ground truth.
        count: how many pixels to keep; more than the batch's valid pixels keeps them all.

    Returns:
        (B, 1, H, W) 0/1 weights, detached.
    """
    with torch.no_grad():
        valid = valid.bool()
        error = torch.where(valid, (student_depth - gt_depth).abs(),
                            torch.full_like(student_depth, -math.inf))
        chosen = torch.zeros(error.numel(), dtype=student_depth.dtype, device=error.device)
        count = min(int(count), int(valid.sum()))
        if count > 0:
            chosen[torch.topk(error.flatten(), count).indices] = 1.0
        return chosen.view_as(student_depth)


def fill_holes_with_image_mean(weight: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``weight`` on valid pixels; elsewhere the mean weight of the same image's valid pixels.

    Where the ground truth is missing the teacher cannot be checked, so a teacher trusted on the
    rest of the image is trusted as much in its holes; an image without any valid pixel gets
    weight 1 (pure distillation, as with the schedules that do not weight pixels).

    Args:
        weight: (B, 1, H, W) per-pixel weights, meaningful on valid pixels.
        valid: (B, 1, H, W) bool mask of valid ground truth.

    Returns:
        (B, 1, H, W) weights.
    """
    weight = torch.where(valid, weight, torch.zeros_like(weight))
    counts = valid.flatten(1).sum(dim=1)
    image_mean = torch.where(
        counts > 0,
        weight.flatten(1).sum(dim=1) / counts.clamp(min=1),
        torch.ones_like(counts, dtype=weight.dtype),
    )
    return torch.where(valid, weight, image_mean.view(-1, 1, 1, 1).expand_as(weight))


def feature_channels(model: nn.Module, input_channels: int, image_size: int) -> Dict[str, int]:
    """Channel count of each feature level of ``model`` for square inputs of side ``image_size``.

    A twin is rebuilt from ``model.model_name`` / ``model.config`` on PyTorch's ``meta`` device
    and run once: shapes only, no arithmetic, and ``model`` itself (its BatchNorm statistics
    included) is not touched.
    """
    with torch.device("meta"):
        twin = build_model(model.model_name, **model.config).eval()
        _, features = twin(torch.empty(1, input_channels, image_size, image_size),
                           return_features=True)
    return {level: f.shape[1] for level, f in features.items()}


def load_teacher(
    path: "str | os.PathLike[str]",
    image_size: int,
    max_depth: Optional[float] = None,
    device: "str | torch.device" = "cpu",
) -> nn.Module:
    """The RGB teacher of a checkpoint, rebuilt from its saved config, frozen, in eval mode.

    Args:
        path: ``last_model.pth`` / ``best_model.pth`` of a ``train_rgb_depth.py`` run.
        image_size: side of this run's inputs; must be the one the teacher was trained at (the
            network would run at another size, but its predictions would not be trustworthy).
        max_depth: this run's depth range in metres, checked with :func:`check_teacher_range`;
            ``None`` defers that check (e.g. until the data has resolved its default range).
        device: where to put it.

    Raises:
        DataError: unreadable file, a checkpoint of another model, or an incompatible image size
            or depth range (one line naming the file).
    """
    checkpoint = load_checkpoint(path, map_location="cpu")
    teacher = load_model(checkpoint, device, expected_name=TEACHER_MODEL, path=path)
    trained_size = checkpoint["args"].get("image_size")
    if trained_size is not None and trained_size != image_size:
        raise DataError(path, f"teacher was trained on {trained_size}x{trained_size} inputs, "
                              f"this run uses --image_size {image_size}")
    if max_depth is not None:
        check_teacher_range(teacher, max_depth, path)
    return teacher.requires_grad_(False)


def untrained_twin(model: nn.Module, seed: int) -> nn.Module:
    """A frozen copy of ``model``'s architecture with fresh weights drawn from ``seed`` (the
    ``--feature_teacher random`` control), in eval mode. Draws from its own generator state: the
    caller's random stream is untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        twin = build_model(model.model_name, **model.config)
    return twin.to(next(model.parameters()).device).requires_grad_(False).eval()


def check_teacher_range(teacher: nn.Module, max_depth: float,
                        path: "str | os.PathLike[str]") -> None:
    """Raise :class:`DataError` naming ``path`` unless the teacher's range is ``max_depth`` m."""
    if teacher.config["max_depth"] != max_depth:
        raise DataError(path, f"teacher predicts depth up to {teacher.config['max_depth']} m, "
                              f"this run's max_depth is {max_depth} m")


class DistillationTask(DepthTask):
    """The binaural student trained on the ground truth and on a frozen RGB teacher.

    Loss terms (each logged on its own, already weighted; ``total`` is their sum):

    * the supervised terms of :class:`training.tasks.DepthTask` (masked, vs the ground truth);
    * ``kd_depth`` = λ_depth · s · :func:`depth_kd_loss` on every pixel, with the per-pixel
      :func:`teacher_confidence` weights under the ``confidence`` schedule and the
      :func:`teacher_gate` under ``gated``; under the controls ``hard_pixels`` (towards the
      ground truth on :func:`hardest_pixels`, as many as the gate passes) and ``holes`` (the
      gate's weights in the holes only), see the module docstring;
    * ``kd_<level>`` = λ_feat / L · s · :func:`feature_kd_loss` for each of the L distilled
      levels, so λ_feat weighs their mean and does not grow with the number of levels;

    where s = :func:`schedule_factor` at the current training step. The task counts its own
    training steps (forward passes in train mode); a resumed run sets :attr:`step` from the
    checkpoint's ``global_step``.

    :attr:`teacher_fingerprint` is :func:`training.identity.checkpoint_fingerprint` of the
    teacher's checkpoint, computed from the teacher's own name, config and weights (equal to the
    fingerprint of the file it was loaded from); the engine records it in the run identity, so a
    student trained with another teacher is never taken for this one.

    Args:
        student: the binaural model (reads ``audio``).
        teacher: the frozen RGB model (reads ``rgb``), e.g. from :func:`load_teacher`.
        max_depth: metres; every depth term is computed on depth / max_depth.
        image_size: input side in pixels, to size the adapters.
        criterion, smoothness_weight: the supervised terms, as in :class:`DepthTask`.
        depth_weight: λ_depth; 0 leaves ``kd_depth`` out.
        feature_weight: λ_feat; 0 leaves the feature terms (and the adapters) out.
        feature_levels: levels to distil (default the decoder levels, see the module docstring).
        matching: one of :data:`MATCHINGS`.
        depth_kd: one of :data:`DEPTH_KD_KINDS`.
        schedule: one of :data:`SCHEDULES`.
        ramp_steps: length of the ``linear`` / ``cosine`` ramp in optimizer steps.
        confidence_tau: ``tau`` of :func:`teacher_confidence`.
        feature_teacher: whose features the feature terms match, when not the teacher's (an
            untrained twin for the ``--feature_teacher random`` control); frozen, eval mode.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        max_depth: float,
        image_size: int,
        criterion: str = "l1",
        smoothness_weight: float = 0.0,
        depth_weight: float = 1.0,
        feature_weight: float = 0.0,
        feature_levels: Sequence[str] = DECODER_KEYS,
        matching: str = "mse",
        depth_kd: str = "l1",
        schedule: str = "constant",
        ramp_steps: float = 1.0,
        confidence_tau: float = 0.2,
        feature_teacher: Optional[nn.Module] = None,
    ) -> None:
        super().__init__(student, AUDIO, max_depth, criterion, smoothness_weight)
        if matching not in MATCHINGS:
            raise ValueError(f"feature matching must be one of {MATCHINGS}, got {matching!r}")
        schedule_factor(schedule, 0.0, ramp_steps)  # validates both before any training
        self.teacher = teacher.requires_grad_(False).eval()
        self.feature_teacher = (None if feature_teacher is None
                                else feature_teacher.requires_grad_(False).eval())
        self.teacher_fingerprint = checkpoint_fingerprint({
            "model_name": teacher.model_name, "model_config": teacher.config,
            "model_state": teacher.state_dict()})
        self.depth_weight = depth_weight
        self.feature_weight = feature_weight
        levels = tuple(feature_levels) if feature_weight > 0 else ()
        self.adapters = (FeatureAdapters(feature_channels(student, 2, image_size),
                                         feature_channels(teacher, 3, image_size), levels)
                         if levels else None)
        self.matching = matching
        self.depth_kd = depth_kd
        self.schedule = schedule
        self.ramp_steps = ramp_steps
        self.confidence_tau = confidence_tau
        self.step = 0

    def train(self, mode: bool = True) -> "DistillationTask":
        """Set train/eval mode of the student and adapters; the teacher always stays in eval mode
        (its BatchNorm statistics must never move)."""
        super().train(mode)
        self.teacher.eval()
        if self.feature_teacher is not None:
            self.feature_teacher.eval()
        return self

    def kd_terms(self, student_depth: torch.Tensor, student_features: Mapping[str, torch.Tensor],
                 batch: Batch) -> Dict[str, torch.Tensor]:
        """The weighted KD terms of a batch, given the student's depth (metres) and features."""
        with torch.no_grad():
            teacher_depth, teacher_features = self.teacher(batch[RGB], return_features=True)
            if self.feature_teacher is not None:
                _, teacher_features = self.feature_teacher(batch[RGB], return_features=True)
        teacher_depth = teacher_depth.float()
        factor = schedule_factor(self.schedule, self.step, self.ramp_steps)
        terms: Dict[str, torch.Tensor] = {}
        if self.depth_weight > 0:
            target, weight = self.depth_kd_target(teacher_depth, student_depth.float(), batch)
            terms["kd_depth"] = self.depth_weight * factor * depth_kd_loss(
                student_depth.float(), target, self.max_depth, weight, self.depth_kd)
        if self.adapters is not None:
            level_weight = self.feature_weight * factor / len(self.adapters.levels)
            matched = self.adapters(student_features, teacher_features, self.matching)
            for level, loss in matched.items():
                terms[f"kd_{level}"] = level_weight * loss.float()
        return terms

    def depth_kd_target(self, teacher_depth: torch.Tensor, student_depth: torch.Tensor,
                        batch: Batch) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """What the depth KD pulls the student towards (metres) and its per-pixel weights
        (``None``: every pixel alike), under this task's schedule."""
        if self.schedule == "confidence":
            return teacher_depth, teacher_confidence(teacher_depth, batch[DEPTH], batch[VALID],
                                                     self.confidence_tau)
        if self.schedule not in ("gated", "hard_pixels", "holes"):
            return teacher_depth, None
        valid = batch[VALID].bool()
        gate = teacher_gate(teacher_depth, student_depth, batch[DEPTH], valid)
        if self.schedule == "gated":
            return teacher_depth, gate
        if self.schedule == "holes":
            return teacher_depth, torch.where(valid, torch.zeros_like(gate), gate)
        chosen = hardest_pixels(student_depth, batch[DEPTH], valid, int(gate[valid].sum()))
        # Unchosen pixels (holes included) get the student's own depth: zero error, and no
        # ground-truth value outside the chosen pixels enters the loss.
        return torch.where(chosen > 0, batch[DEPTH], student_depth.detach()), chosen

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Student depth (B, 1, H, W) in metres and every weighted term plus ``total``."""
        depth, features = self.model(batch[self.input_key], return_features=True)
        kd = self.kd_terms(depth, features, batch)
        if self.training:
            self.step += 1
        return depth, with_total({**self.supervised_losses(depth, batch), **kd})
