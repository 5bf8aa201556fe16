"""Train the RGB U-Net depth model (the teacher for distillation).

Reads the camera image: BatVision V2 and the synthetic world always have one; BatVision V1 only
where its CSVs have a ``camera path left`` column (otherwise a one-line error names the CSV).

    python train_rgb_depth.py --dataset synthetic --image_size 64 --base_channels 16
    python train_rgb_depth.py --dataset batvisionv2 --data_root /data/BatvisionV2 --amp bf16
    torchrun --nproc_per_node 4 train_rgb_depth.py --dataset batvisionv2 --data_root ...
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional

from datasets.sample import RGB
from models import build_model
from training import cli
from training.data import build_data
from training.device import shutdown_distributed
from training.engine import DepthTask, fit

MODEL_NAME = "rgb_depth"


def build_parser() -> argparse.ArgumentParser:
    """Every flag of this script (the shared groups; this model needs no flag of its own)."""
    parser, _ = cli.training_parser(__doc__)
    return parser


def model_config(args: argparse.Namespace) -> Dict[str, Any]:
    """Constructor kwargs of the RGB model from the resolved arguments."""
    return {"base_channels": args.base_channels, "max_depth": args.max_depth}


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv``, build data and model, train."""
    with cli.user_errors():
        run = cli.start_run(build_parser(), argv, MODEL_NAME)
        data = build_data(run.args, run.context, use_rgb=True)
        model = build_model(MODEL_NAME, **run.model_config(model_config(run.args)))
        task = DepthTask(model, RGB, data.max_depth, run.args.criterion,
                         run.args.smoothness_weight)
        fit(task, data, run)
    shutdown_distributed()


if __name__ == "__main__":
    main()
