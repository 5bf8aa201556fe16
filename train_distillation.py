"""Distil a trained RGB teacher into the binaural student (see ``training/distill.py``).

loss = task loss (masked, vs the ground truth)
     + lambda_depth * depth KD (student vs teacher depth on every pixel; the teacher fills GT holes)
     + lambda_feat * feature KD (mean over --feature_levels, through learnable 1x1 adapters)

Both KD weights follow --kd_schedule. The teacher is rebuilt from its checkpoint's saved config,
frozen and kept in eval mode; it must have been trained at this run's --image_size and depth
range. The checkpoint written is the student's (``evaluate.py`` and ``predict.py`` read it like
one from ``train_binaural_attention.py``); the adapters are saved beside it for resuming.

    python train_rgb_depth.py --image_size 64 --base_channels 16 --experiment_name teacher
    python train_distillation.py --teacher_checkpoint checkpoints/teacher/best_model.pth \\
        --image_size 64 --base_channels 16 --lambda_depth 1 --lambda_feat 0.05 \\
        --feature_levels d1,d2,d3,d4 --feature_matching mse --kd_schedule confidence
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from models import build_model
from models.blocks import DECODER_KEYS
from train_binaural_attention import MODEL_NAME as STUDENT_MODEL
from train_binaural_attention import add_model_args, model_config
from training import cli
from training.data import build_data
from training.device import shutdown_distributed
from training.distill import (
    DEPTH_KD_KINDS, MATCHINGS, SCHEDULES, DistillationTask, check_levels, check_teacher_range,
    load_teacher,
)
from training.engine import fit
from training.errors import UsageError


def feature_levels(text: str) -> List[str]:
    """argparse type for ``--feature_levels d1,d2`` (any of x1..x5, d1..d4)."""
    levels = [part.strip() for part in text.split(",") if part.strip()]
    try:
        check_levels(levels)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return levels


def add_distillation_args(parser: argparse.ArgumentParser) -> None:
    """The ``distillation`` flag group."""
    group = parser.add_argument_group("distillation")
    group.add_argument("--teacher_checkpoint", default=None,
                       help="checkpoint of a train_rgb_depth.py run (required for a new run; a "
                            "resumed run reuses its own)")
    group.add_argument("--lambda_depth", type=float, default=1.0,
                       help="weight of the depth KD term (on depth / max_depth; 0: off)")
    group.add_argument("--depth_kd", choices=DEPTH_KD_KINDS, default="l1",
                       help="depth KD distance: absolute or squared error")
    group.add_argument("--lambda_feat", type=float, default=0.0,
                       help="weight of the feature KD term, the mean over --feature_levels "
                            "(0: off)")
    group.add_argument("--feature_levels", type=feature_levels, default=",".join(DECODER_KEYS),
                       help="comma-separated levels for feature KD, any of x1..x5 (encoder, on the "
                            "spectrogram grid) and d1..d4 (decoder, on the image grid)")
    group.add_argument("--feature_matching", choices=MATCHINGS, default="mse",
                       help="mse: MSE of per-sample standardised features; cosine: 1 - cosine "
                            "over channels; attention: attention transfer of spatial maps")
    group.add_argument("--kd_schedule", choices=SCHEDULES, default="constant",
                       help="KD weights: constant; ramped from 0 (linear, cosine) over "
                            "--kd_ramp_epochs; or confidence (constant, depth KD weighted per "
                            "pixel by the teacher's agreement with the ground truth)")
    group.add_argument("--kd_ramp_epochs", type=float, default=5.0,
                       help="linear/cosine schedules: epochs until the KD weights reach full value")
    group.add_argument("--confidence_tau", type=float, default=0.2,
                       help="confidence schedule: relative teacher error that gets weight 1/e")


def build_parser() -> argparse.ArgumentParser:
    """Every flag of this script: the shared groups, the student's flags and the KD flags."""
    parser, groups = cli.training_parser(__doc__)
    add_model_args(groups)
    add_distillation_args(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv``, load the teacher, build data and student, distil."""
    with cli.user_errors():
        run = cli.start_run(build_parser(), argv, STUDENT_MODEL)
        args = run.args
        if args.teacher_checkpoint is None:
            raise UsageError("--teacher_checkpoint is required for a new distillation run")
        if args.kd_ramp_epochs <= 0 or args.confidence_tau <= 0:
            raise UsageError("--kd_ramp_epochs and --confidence_tau must be > 0")
        # Checked before the data is built (which may generate a world or a cache), except for
        # the depth range, which the data resolves.
        teacher = load_teacher(args.teacher_checkpoint, args.image_size)
        data = build_data(args, run.context, use_rgb=True)
        check_teacher_range(teacher, data.max_depth, args.teacher_checkpoint)
        student = build_model(STUDENT_MODEL, **run.model_config(model_config(args)))
        task = DistillationTask(
            student, teacher, data.max_depth, args.image_size, criterion=args.criterion,
            smoothness_weight=args.smoothness_weight, depth_weight=args.lambda_depth,
            feature_weight=args.lambda_feat, feature_levels=args.feature_levels,
            matching=args.feature_matching, depth_kd=args.depth_kd, schedule=args.kd_schedule,
            ramp_steps=args.kd_ramp_epochs * len(data.train_loader),
            confidence_tau=args.confidence_tau)
        task.step = run.checkpoint["global_step"] if run.checkpoint else 0
        fit(task, data, run)
    shutdown_distributed()


if __name__ == "__main__":
    main()
