"""training.optim: the learning-rate schedules of --scheduler and --warmup_epochs."""
from __future__ import annotations

import argparse
import math

import pytest

from training.optim import lr_factor


def test_learning_rate_schedules_by_hand() -> None:
    args = argparse.Namespace(nb_epochs=4, warmup_epochs=1.0, scheduler="cosine", step_size=2,
                              step_gamma=0.5)
    factor = lr_factor(args, steps_per_epoch=10)  # 40 steps, 10 of warm-up
    assert [factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert factor(10) == pytest.approx(1.0)
    assert factor(25) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert factor(39) == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))
    args.scheduler, args.warmup_epochs = "step", 0.0
    factor = lr_factor(args, steps_per_epoch=10)
    assert [factor(s) for s in (0, 19, 20, 39)] == pytest.approx([1.0, 1.0, 0.5, 0.5])
