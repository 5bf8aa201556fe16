"""The one argparse home of the training scripts, and the start of a run.

:func:`training_parser` builds the flag groups every training script shares (data, model,
optimisation, run/checkpoint, logging); a script adds its model-specific flags to
``groups["model"]``. :func:`start_run` parses, resolves ``--resume``, joins the torchrun world,
picks the device, seeds, and settles the run folder.

Resuming (``--resume RUN_DIR | CHECKPOINT | latest``) restores the run's saved arguments; flags
given on the command line override them (e.g. a larger ``--nb_epochs``, a new ``--learning_rate``
from the next step on). The model is rebuilt from the checkpoint's config: a model flag that
contradicts it, a checkpoint of another model, or another ``--optimizer`` is an error, raised
before anything is written.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, NoReturn, Optional, Sequence, Set, Tuple

import torch
import torch.distributed as dist

from datasets.errors import DataError
from training.checkpoint import (
    LAST_CHECKPOINT, Checkpoint, check_model_name, load_checkpoint, resolve_checkpoint_path,
)
from training.data import DATASETS
from training.device import DistContext, init_distributed, resolve_device, seed_everything
from training.errors import TrainingError, UsageError
from training.losses import CRITERIA

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("none", "cosine", "step")
AMP_MODES = ("none", "bf16", "fp16")
# Machine- or invocation-specific: never taken over from the run being resumed.
NOT_RESUMED = {"resume", "stop_after_epochs", "device", "num_workers", "overwrite"}
FIXED_ON_RESUME = ("optimizer",)

ArgumentGroups = Dict[str, "argparse._ArgumentGroup"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every flag's default and keeps the script docstring's line breaks."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with :class:`HelpFormatter`, whose errors are one line (no usage dump); exit 2."""

    def __init__(self, description: Optional[str]) -> None:
        super().__init__(description=description, formatter_class=HelpFormatter)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def training_parser(description: Optional[str]) -> Tuple[argparse.ArgumentParser, ArgumentGroups]:
    """The parser with every shared flag; returns it and its groups by name.

    Groups: ``data``, ``model``, ``optimisation``, ``run``, ``logging``.
    """
    parser = ArgumentParser(description)
    groups: ArgumentGroups = {
        name: parser.add_argument_group(name)
        for name in ("data", "model", "optimisation", "run", "logging")
    }
    data = groups["data"]
    data.add_argument("--dataset", choices=DATASETS, default="synthetic",
                      help="which data: real BatVision V1/V2, or the simulated world (V2 format)")
    data.add_argument("--data_root", default=None,
                      help="dataset root; required for batvisionv1/v2. For synthetic: default "
                           ".cache/synthetic/<world>/ in the repository, generated on first use")
    data.add_argument("--image_size", type=int, default=256,
                      help="side S of the square inputs and depth maps (divisible by 16)")
    data.add_argument("--max_depth", type=float, default=None,
                      help="depth range in metres (clip, audio echo window, model output range); "
                           "None: the dataset's (V1 12, V2 30, synthetic: the world's camera "
                           "range, 15)")
    data.add_argument("--recipe", choices=("default", "official"), default="default",
                      help="preprocessing recipe (datasets/recipes.py)")
    data.add_argument("--locations", default=None,
                      help="comma-separated location names to keep; None: all")
    data.add_argument("--cache_dir", default=None,
                      help="preprocess each split once into this folder and train from it "
                           "(None: no cache, decode every epoch)")
    data.add_argument("--num_workers", type=int, default=2, help="DataLoader worker processes")
    data.add_argument("--mirror_augment", action="store_true",
                      help="mirror half the training samples left-right: flip depth and RGB, "
                           "swap the two ears")
    data.add_argument("--synthetic_locations", type=int, default=3,
                      help="synthetic world: locations (one room family each)")
    data.add_argument("--synthetic_samples", type=int, default=400,
                      help="synthetic world: samples per location (~70/15/15 train/val/test)")
    data.add_argument("--synthetic_size", type=int, default=128,
                      help="synthetic world: side of the rendered depth/RGB images in pixels")
    data.add_argument("--synthetic_seed", type=int, default=0,
                      help="synthetic world: seed of the world (independent of --seed)")

    groups["model"].add_argument("--base_channels", type=int, default=64,
                                 help="U-Net width of the first level (levels: 1,2,4,8,8 x this)")

    opt = groups["optimisation"]
    opt.add_argument("--batch_size", type=int, default=32,
                     help="GLOBAL batch size, split evenly over torchrun processes")
    opt.add_argument("--nb_epochs", type=int, default=80, help="epochs to train in total")
    opt.add_argument("--learning_rate", type=float, default=1e-3, help="peak learning rate")
    opt.add_argument("--weight_decay", type=float, default=1e-2, help="weight decay")
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                     help="optimizer (sgd uses momentum 0.9)")
    opt.add_argument("--scheduler", choices=SCHEDULERS, default="none",
                     help="learning-rate schedule over all --nb_epochs, stepped every batch")
    opt.add_argument("--warmup_epochs", type=float, default=0.0,
                     help="linear warm-up from 0 over this many epochs (any scheduler)")
    opt.add_argument("--step_size", type=int, default=30,
                     help="step scheduler: epochs between learning-rate drops")
    opt.add_argument("--step_gamma", type=float, default=0.1,
                     help="step scheduler: factor of each drop")
    opt.add_argument("--criterion", choices=tuple(CRITERIA), default="l1",
                     help="depth loss on valid pixels, on depth / max_depth")
    opt.add_argument("--smoothness_weight", type=float, default=0.0,
                     help="weight of the smoothness term on the prediction (edge-aware on the "
                          "RGB view when the batch has one; 0: off)")
    opt.add_argument("--grad_clip", type=float, default=0.0,
                     help="clip the global gradient norm to this (0: off)")
    opt.add_argument("--amp", choices=AMP_MODES, default="none",
                     help="mixed precision on CUDA (fp16 adds a gradient scaler); ignored on CPU")
    opt.add_argument("--sync_bn", action="store_true",
                     help="under torchrun on CUDA, synchronise BatchNorm statistics across GPUs")

    run = groups["run"]
    run.add_argument("--experiment_name", default=None,
                     help="run folder name under --checkpoint_dir (None: "
                          "<model>_<dataset>_<date-time>; when resuming: the resumed run's)")
    run.add_argument("--checkpoint_dir", default="checkpoints", help="where run folders go")
    run.add_argument("--resume", default=None,
                     help="continue a run: its folder, a checkpoint file, or 'latest' (the run "
                          "most recently written under --checkpoint_dir). Its saved arguments "
                          "are restored; flags given now override them")
    run.add_argument("--overwrite", action="store_true",
                     help="start afresh in a run folder that already holds a run")
    run.add_argument("--seed", type=int, default=0, help="seed of initialisation and data order")
    run.add_argument("--deterministic", action="store_true",
                     help="deterministic kernels: bit-exact reruns and resumes on CPU")
    run.add_argument("--device", default="auto",
                     help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    run.add_argument("--stop_after_epochs", type=int, default=None,
                     help="stop after this many epochs of this invocation, as if killed "
                          "(the schedule still spans --nb_epochs); continue with --resume")

    log = groups["logging"]
    log.add_argument("--use_wandb", action="store_true",
                     help="log to Weights & Biases (offline when no API key is configured)")
    log.add_argument("--wandb_project", default="batdepth", help="W&B project")
    log.add_argument("--log_every", type=int, default=50, help="W&B: log the loss every N steps")
    log.add_argument("--num_val_images", type=int, default=4,
                     help="validation samples drawn in val_last.png / val_best.png "
                          "(0: no pictures)")
    log.add_argument("--valid_threshold", type=float, default=0.0,
                     help="metrics score pixels with ground truth > this (metres)")
    return parser, groups


def add_audio_format(group: "argparse._ArgumentGroup") -> None:
    """``--audio_format``, for the scripts whose model reads the audio."""
    group.add_argument("--audio_format", choices=("spectrogram", "mel"), default="spectrogram",
                       help="audio input: STFT magnitude or mel bands, both (2, S, S)")


def comma_separated_ints(text: str) -> List[int]:
    """argparse type for flags like ``--attention_levels 2,3,4,5``."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from error


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can fix (bad file, bad flags, a run that had to stop) into one line
    on stderr and exit status 1. Anything else is a bug and keeps its traceback."""
    try:
        yield
    except (DataError, UsageError, TrainingError) as error:
        raise SystemExit(f"error: {error}") from None


def _explicit_dests(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> Set[str]:
    """The destinations the command line set explicitly (argparse only fills in a default for
    attributes the namespace does not have yet)."""
    unset = object()
    probe = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != "help"})
    parser.parse_args(argv, namespace=probe)
    return {dest for dest, value in vars(probe).items() if value is not unset}


@dataclass
class Run:
    """A started run: everything a training script hands to the engine.

    Attributes:
        args: resolved arguments (after merging a resumed run's).
        model_name: the model this script trains.
        context: place in the torchrun world.
        device: this process's device.
        run_dir: the run folder (``--checkpoint_dir/--experiment_name``).
        checkpoint: the checkpoint being resumed, or ``None``.
        checkpoint_path: its file.
    """

    args: argparse.Namespace
    model_name: str
    context: DistContext
    device: torch.device
    run_dir: Path
    checkpoint: Optional[Checkpoint] = None
    checkpoint_path: Optional[Path] = None

    def model_config(self, from_args: Dict[str, Any]) -> Dict[str, Any]:
        """The model's constructor kwargs: ``from_args`` for a new run, the checkpoint's when
        resuming (then any value of ``from_args`` that differs is an error)."""
        if self.checkpoint is None:
            return from_args
        saved = self.checkpoint["model_config"]
        normalised = json.loads(json.dumps(from_args))
        differing = [f"{k}: run has {saved[k]!r}, command line {normalised[k]!r}"
                     for k in sorted(set(saved) & set(normalised)) if saved[k] != normalised[k]]
        if differing:
            raise UsageError(f"{self.checkpoint_path}: model flags differ from the resumed run "
                             f"({'; '.join(differing)})")
        return saved


def _resume_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
                 args: argparse.Namespace, checkpoint: Checkpoint,
                 path: Path) -> argparse.Namespace:
    explicit = _explicit_dests(parser, argv)
    saved = checkpoint["args"]
    for flag in FIXED_ON_RESUME:
        if flag in explicit and getattr(args, flag) != saved.get(flag):
            raise UsageError(f"{path}: --{flag} cannot change when resuming "
                             f"(run used {saved.get(flag)!r})")
    merged = vars(args).copy()
    merged.update({k: v for k, v in saved.items()
                   if k in merged and k not in explicit and k not in NOT_RESUMED})
    if "experiment_name" not in explicit:
        # Continue in the checkpoint's own folder, wherever it now lies.
        merged["checkpoint_dir"] = str(path.parent.parent)
        merged["experiment_name"] = path.parent.name
    return argparse.Namespace(**merged)


def _default_experiment_name(model_name: str, dataset: str, context: DistContext) -> str:
    name = [f"{model_name}_{dataset}_{time.strftime('%Y%m%d-%H%M%S')}"]
    if context.distributed:  # every rank must agree on rank 0's clock
        dist.broadcast_object_list(name, src=0)
    return name[0]


def _check_args(args: argparse.Namespace) -> None:
    for flag in ("batch_size", "nb_epochs", "image_size", "base_channels"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.image_size % 16:
        raise UsageError(f"--image_size must be divisible by 16, got {args.image_size}")
    if args.stop_after_epochs is not None and args.stop_after_epochs < 1:
        raise UsageError(f"--stop_after_epochs must be at least 1, got {args.stop_after_epochs}")


def start_run(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
              model_name: str) -> Run:
    """Parse the command line and set the run up; nothing is written yet.

    Args:
        parser: from :func:`training_parser`, with the script's flags added.
        argv: arguments (``None``: ``sys.argv[1:]``).
        model_name: the model the script trains (a checkpoint of another is refused).

    Raises:
        DataError: ``--resume`` names nothing loadable, or a checkpoint of another model.
        UsageError: contradictory flags, or a fresh run aimed at a folder that holds a run.
    """
    args = parser.parse_args(argv)
    checkpoint, checkpoint_path = None, None
    if args.resume:
        checkpoint_path = resolve_checkpoint_path(args.resume, args.checkpoint_dir)
        checkpoint = load_checkpoint(checkpoint_path)
        check_model_name(checkpoint, model_name, checkpoint_path)
        args = _resume_args(parser, argv, args, checkpoint, checkpoint_path)
    _check_args(args)
    context = init_distributed(args.device)
    device = resolve_device(args.device, context.local_rank)
    if args.experiment_name is None:
        args.experiment_name = _default_experiment_name(model_name, args.dataset, context)
    run_dir = Path(args.checkpoint_dir) / args.experiment_name
    continues_itself = (checkpoint_path is not None
                        and checkpoint_path.parent.resolve() == run_dir.resolve())
    if (run_dir / LAST_CHECKPOINT).exists() and not continues_itself and not args.overwrite:
        raise UsageError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, "
                         "or pass --overwrite or another --experiment_name")
    context.barrier()  # every rank checked the folder before rank 0 may write into it
    seed_everything(args.seed, args.deterministic)
    return Run(args=args, model_name=model_name, context=context, device=device, run_dir=run_dir,
               checkpoint=checkpoint, checkpoint_path=checkpoint_path)
