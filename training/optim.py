"""The optimiser of ``--optimizer`` and the learning-rate schedule of ``--scheduler``."""
from __future__ import annotations

import argparse
import math
from typing import Callable, List

import torch
from torch import nn


def build_optimizer(args: argparse.Namespace,
                    parameters: List[nn.Parameter]) -> torch.optim.Optimizer:
    """``--optimizer`` over ``parameters`` with ``--learning_rate`` and ``--weight_decay``."""
    if args.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=args.weight_decay)
    if args.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=args.learning_rate, weight_decay=args.weight_decay)
    return torch.optim.SGD(parameters, lr=args.learning_rate, momentum=0.9,
                           weight_decay=args.weight_decay)


def lr_factor(args: argparse.Namespace, steps_per_epoch: int) -> Callable[[int], float]:
    """Learning-rate multiplier as a function of the optimizer step, over all ``--nb_epochs``.

    Linear warm-up over ``--warmup_epochs``, then ``none`` (1), ``cosine`` (to 0 at the last
    step) or ``step`` (× ``--step_gamma`` every ``--step_size`` epochs).
    """
    total = max(1, args.nb_epochs * steps_per_epoch)
    warmup = min(total, round(args.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if args.scheduler == "cosine":
            fraction = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, fraction)))
        if args.scheduler == "step":
            return args.step_gamma ** ((step // steps_per_epoch) // args.step_size)
        return 1.0

    return factor
