"""Train the binaural cross-attention model: depth from the two ears' echoes alone.

    python train_binaural_attention.py --dataset synthetic --image_size 64 --base_channels 16
    python train_binaural_attention.py --dataset batvisionv2 --data_root /data/BatvisionV2 \\
        --attention_levels 3,4,5 --amp bf16
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Optional

from datasets.sample import AUDIO
from models import build_model
from models.binaural_attention_model import DEFAULT_ATTENTION_LEVELS
from training import cli
from training.data import build_data
from training.device import shutdown_distributed
from training.engine import DepthTask, fit

MODEL_NAME = "binaural_attention"


def add_model_args(groups: cli.ArgumentGroups) -> None:
    """The binaural model's flags (shared with ``train_distillation.py``, whose student it is)."""
    cli.add_audio_format(groups["data"])
    model = groups["model"]
    model.add_argument("--attention_levels", type=cli.comma_separated_ints,
                       default=",".join(map(str, DEFAULT_ATTENTION_LEVELS)),
                       help="encoder levels (1..5, comma-separated) with ear-to-ear "
                            "cross-attention")
    model.add_argument("--num_heads", type=int, default=4, help="attention heads per level")
    model.add_argument("--attention_mode", choices=("auto", "global", "time"), default="auto",
                       help="auto: global attention at small levels, along time per frequency "
                            "band at large ones")


def build_parser() -> argparse.ArgumentParser:
    """Every flag of this script: the shared groups plus :func:`add_model_args`."""
    parser, groups = cli.training_parser(__doc__)
    add_model_args(groups)
    return parser


def model_config(args: argparse.Namespace) -> Dict[str, Any]:
    """Constructor kwargs of the binaural model from the resolved arguments."""
    return {"base_channels": args.base_channels, "attention_levels": args.attention_levels,
            "num_heads": args.num_heads, "attention_mode": args.attention_mode,
            "max_depth": args.max_depth}


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv``, build data and model, train."""
    with cli.user_errors():
        run = cli.start_run(build_parser(), argv, MODEL_NAME)
        data = build_data(run.args, run.context, use_rgb=False)
        model = build_model(MODEL_NAME, **run.model_config(model_config(run.args)))
        task = DepthTask(model, AUDIO, data.max_depth, run.args.criterion,
                         run.args.smoothness_weight)
        fit(task, data, run)
    shutdown_distributed()


if __name__ == "__main__":
    main()
