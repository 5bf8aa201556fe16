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

import torch

from common.errors import UsageError
from models import build_model
from training import cli
from training.data import build_data
from training.distill import (
    DistillationTask, check_teacher_range, load_teacher, untrained_twin,
)
from training.engine import fit
from training.run import Run, median_depth_of, run_main


def build_parser() -> argparse.ArgumentParser:
    """Every flag of this script (the shared groups, the student's flags and the KD flags)."""
    return cli.build_parser("kd", __doc__)


def train(run: Run) -> None:
    """Load the teacher, build data and student, distil."""
    args = run.args
    if args.teacher_checkpoint is None:
        raise UsageError("--teacher_checkpoint is required for a new distillation run")
    # Checked before the data is built (which may generate a world or a cache), except for the
    # depth range, which the data resolves. Building the teacher must not draw from the seeded
    # generator: with the same --seed the student starts from exactly the weights of the
    # audio-only student, so a KD row differs from it by the KD alone.
    with torch.random.fork_rng(devices=[]):
        teacher = load_teacher(args.teacher_checkpoint, args.image_size)
        feature_teacher = (untrained_twin(teacher, args.seed)
                           if args.feature_teacher == "random" else None)
    data = build_data(args, run.context, use_rgb=True)
    check_teacher_range(teacher, data.max_depth, args.teacher_checkpoint)
    student = build_model(run.model_name, **run.model_config(median_depth_of(data)))
    task = DistillationTask(
        student, teacher, data.max_depth, args.image_size, criterion=args.criterion,
        smoothness_weight=args.smoothness_weight, depth_weight=args.lambda_depth,
        feature_weight=args.lambda_feat, feature_levels=args.feature_levels,
        matching=args.feature_matching, depth_kd=args.depth_kd, schedule=args.kd_schedule,
        ramp_steps=args.kd_ramp_epochs * len(data.train_loader),
        confidence_tau=args.confidence_tau, feature_teacher=feature_teacher)
    task.step = run.checkpoint["global_step"] if run.checkpoint else 0
    fit(task, data, run)


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv``, load the teacher, build data and student, distil."""
    run_main(build_parser(), argv, train)


if __name__ == "__main__":
    main()
