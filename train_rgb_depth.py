"""Train the RGB U-Net depth model (the teacher for distillation).

Reads the camera image: BatVision V2 and the synthetic world always have one; BatVision V1 only
where its CSVs have a ``camera path left`` column (otherwise a one-line error names the CSV).

    python train_rgb_depth.py --image_size 64 --base_channels 16          # the simulated world
    python train_rgb_depth.py --config configs/synthetic/teacher.yaml --image_size 128
    python train_rgb_depth.py --dataset batvisionv2 --data_root /data/BatvisionV2 --amp bf16
    torchrun --nproc_per_node 4 train_rgb_depth.py --dataset batvisionv2 --data_root ...
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from datasets.sample import RGB
from models import build_model
from training import cli
from training.data import build_data
from training.engine import fit
from training.run import Run, run_main
from training.tasks import DepthTask


def build_parser() -> argparse.ArgumentParser:
    """Every flag of this script (the shared groups; this model needs no flag of its own)."""
    return cli.build_parser("teacher", __doc__)


def train(run: Run) -> None:
    """Build data and model for the started run, train."""
    data = build_data(run.args, run.context, use_rgb=True)
    model = build_model(run.model_name, **run.model_config())
    fit(DepthTask(model, RGB, data.max_depth, run.args.criterion, run.args.smoothness_weight),
        data, run)


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv``, build data and model, train."""
    run_main(build_parser(), argv, train)


if __name__ == "__main__":
    main()
