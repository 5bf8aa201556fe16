"""Train the binaural cross-attention model: depth from the two ears' echoes alone.

``--model official_unet`` trains the official BatVision U-Net instead (the reference baseline,
with ``--base_channels`` as its ngf) on the same data, engine and metrics.

    python train_binaural_attention.py --image_size 64 --base_channels 16   # the simulated world
    python train_binaural_attention.py --config configs/synthetic/student.yaml --image_size 128
    python train_binaural_attention.py --dataset batvisionv2 --data_root /data/BatvisionV2 \\
        --attention_levels 3,4,5 --amp bf16
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from datasets.sample import AUDIO
from models import build_model
from training import cli
from training.data import build_data
from training.engine import fit
from training.run import Run, median_depth_of, run_main
from training.tasks import DepthTask


def build_parser() -> argparse.ArgumentParser:
    """Every flag of this script (the shared groups plus the audio models' flags)."""
    return cli.build_parser("student", __doc__)


def train(run: Run) -> None:
    """Build data and model (the student's head at the training median when asked), train."""
    data = build_data(run.args, run.context, use_rgb=False)
    model = build_model(run.model_name, **run.model_config(median_depth_of(data)))
    fit(DepthTask(model, AUDIO, data.max_depth, run.args.criterion, run.args.smoothness_weight),
        data, run)


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv``, build data and model, train."""
    run_main(build_parser(), argv, train)


if __name__ == "__main__":
    main()
