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
from training.device import shutdown_distributed
from training.engine import DepthTask, fit


def build_parser() -> argparse.ArgumentParser:
    """Every flag of this script (the shared groups; this model needs no flag of its own)."""
    return cli.build_parser("teacher", __doc__)


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv``, build data and model, train."""
    try:
        with cli.user_errors():
            run = cli.start_run(build_parser(), argv)
            data = build_data(run.args, run.context, use_rgb=True)
            model = build_model(run.model_name, **run.model_config())
            task = DepthTask(model, RGB, data.max_depth, run.args.criterion,
                             run.args.smoothness_weight)
            fit(task, data, run)
    finally:
        # Every exit leaves the process group: gloo can abort at exit when it was never left.
        shutdown_distributed()


if __name__ == "__main__":
    main()
