"""The one argparse home of the training scripts: every flag, its type, ``--config`` files.

:func:`build_parser` builds the flag groups every training script shares (data, model,
optimisation, run, logging) plus the audio models' and distillation flags of the script's kind;
:func:`parse_with_config` parses a command line after its ``--config`` file. Everything a run
does with the parsed flags lives in :mod:`training.run`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from common.argtypes import (
    ArgumentParser, non_negative_float, non_negative_int, positive_float, positive_int,
)
from common.errors import UsageError
from datasets.registry import DATASETS, DEFAULT_WORLD, WORLD_OPTIONS
from models.binaural_attention_model import (
    DEFAULT_ATTENTION_LEVELS, INPUT_FEATURES, check_attention_levels,
)
from models.blocks import DECODER_KEYS, SIZE_MULTIPLE, check_feature_levels
from training.distill import DEPTH_KD_KINDS, FEATURE_TEACHERS, MATCHINGS, SCHEDULES
from training.losses import CRITERIA

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("none", "cosine", "step")
AMP_MODES = ("none", "bf16", "fp16")

ArgumentGroup = argparse._ArgumentGroup
ArgumentGroups = Dict[str, ArgumentGroup]

# The models each training script can train (the first is its default).
KIND_MODELS: Dict[str, Tuple[str, ...]] = {
    "teacher": ("rgb_depth",),
    "student": ("binaural_attention", "official_unet"),
    "kd": ("binaural_attention",),
}


KIND_SCRIPTS = {"teacher": "train_rgb_depth.py", "student": "train_binaural_attention.py",
                "kd": "train_distillation.py"}


def ema_decay(text: str) -> float:
    """argparse type of ``--ema_decay``: a number in [0, 1) (0: no weight average)."""
    value = non_negative_float(text)
    if not value < 1:
        raise argparse.ArgumentTypeError(f"must be < 1, got {text}")
    return value


def unit_fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be <= 1, got {text}")
    return value


def image_size(text: str) -> int:
    """argparse type: a side in pixels, >= 16 and divisible by 16 (four 2x poolings)."""
    value = positive_int(text)
    if value % SIZE_MULTIPLE:
        raise argparse.ArgumentTypeError(f"must be divisible by {SIZE_MULTIPLE}, got {text}")
    return value


def head_init_depth(text: str) -> "str | float | None":
    """argparse type of ``--head_init_depth``: ``median``, a depth in metres (> 0), or ``none``
    (the architecture's own start, so a command line can undo a config file's choice)."""
    if text == "none":
        return None
    if text == "median":
        return text
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"expected 'median', 'none' or metres > 0; {error}") \
            from None


def worker_count(text: str) -> "str | int":
    """argparse type of ``--num_workers``: ``auto`` or an integer >= 0."""
    return text if text == "auto" else non_negative_int(text)


def thread_count(text: str) -> str:
    """argparse type of ``--threads``: ``auto`` or a positive integer (kept as text)."""
    if text != "auto":
        positive_int(text)
    return text


def training_parser(description: Optional[str]) -> Tuple[argparse.ArgumentParser, ArgumentGroups]:
    """The parser with every shared flag; returns it and its groups by name.

    Groups: ``data``, ``model``, ``optimisation``, ``run``, ``logging``.
    """
    parser = ArgumentParser(description)
    parser.add_argument("--config", default=None,
                        help="YAML file of flag defaults ({flag: value}, flags without '--'); "
                             "flags on the command line override it. Every run saves its "
                             "resolved config.yaml, which --config accepts")
    groups: ArgumentGroups = {
        name: parser.add_argument_group(name)
        for name in ("data", "model", "optimisation", "run", "logging")
    }
    add_data_flags(groups["data"])
    groups["model"].add_argument("--base_channels", type=positive_int, default=64,
                                 help="U-Net width of the first level (levels: 1,2,4,8,8 x this)")
    add_optimisation_flags(groups["optimisation"])
    add_run_flags(groups["run"])
    add_logging_flags(groups["logging"])
    return parser, groups


def add_data_flags(data: ArgumentGroup) -> None:
    """What data a run reads and how (dataset, root, size, recipe, cache, workers, world)."""
    data.add_argument("--dataset", choices=("auto", *DATASETS), default="auto",
                      help="which data: real BatVision V1/V2, or the simulated world (V2 format). "
                           "auto: the simulated world without --data_root; with it, the layout "
                           "found there (V2 location folders, V1 CSVs, or a simulated world)")
    data.add_argument("--data_root", default=None,
                      help="dataset root; required for batvisionv1/v2. For synthetic: default "
                           ".cache/synthetic/<world>/ in the repository, generated on first use")
    data.add_argument("--image_size", type=image_size, default=256,
                      help="side S of the square inputs and depth maps (divisible by 16)")
    data.add_argument("--max_depth", type=positive_float, default=None,
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
    data.add_argument("--num_workers", type=worker_count, default="auto",
                      help="DataLoader worker processes. auto: none on a CPU (the compute threads "
                           "already hold every free core), the cores per process less one on "
                           "CUDA (at most 8)")
    data.add_argument("--labelled_fraction", type=unit_fraction, default=1.0,
                      help="share of each location's training samples that keep their depth "
                           "label (drawn by --labelled_seed); the teacher and student scripts "
                           "train on those alone, the distillation script also reads the others "
                           "through the teacher; val and test stay fully labelled")
    data.add_argument("--labelled_seed", type=non_negative_int, default=0,
                      help="seed of the labelled subset (independent of --seed)")
    data.add_argument("--mirror_augment", action=argparse.BooleanOptionalAction, default=False,
                      help="mirror half the training samples left-right: flip depth and RGB, "
                           "swap the two ears")
    data.add_argument("--synthetic_locations", type=positive_int, default=3,
                      help="synthetic world: locations (one room family each)")
    data.add_argument("--synthetic_samples", type=positive_int, default=400,
                      help="synthetic world: samples per location (~70/15/15 train/val/test)")
    data.add_argument("--synthetic_size", type=positive_int, default=128,
                      help="synthetic world: side of the rendered depth/RGB images in pixels")
    data.add_argument("--synthetic_seed", type=non_negative_int, default=0,
                      help="synthetic world: seed of the world (independent of --seed)")
    for name, values in WORLD_OPTIONS.items():
        data.add_argument(f"--synthetic_{name}", choices=values, default=DEFAULT_WORLD[name],
                          help=f"synthetic world: {WORLD_OPTION_HELP[name]}")


# What each realism option of the simulated world does (datasets.registry.WORLD_OPTIONS; the
# first value of each is the classic world of earlier versions, the second the default).
WORLD_OPTION_HELP = {
    "acoustics": "ideal (image sources alone, the chirp leaves at time 0) or realistic (playback "
                 "latency, band-limited directional speaker, reverberant tail, room noise; "
                 "calibrated on a real V2 recording)",
    "holes": "depth holes: blobs (beyond range, random blobs) or sensor (where a depth camera "
             "fails: far range, grazing incidence, specular and dark surfaces, occlusion edges, "
             "textureless areas)",
    "rooms": "classic (small rooms, corridors, halls) or realistic (also furnished offices, "
             "classrooms, stairwell landings, cluttered labs; surface materials; a robot's poses "
             "near walls and furniture)",
}


def add_optimisation_flags(opt: ArgumentGroup) -> None:
    """How a run optimises (batch, epochs, optimiser, schedule, loss, EMA, precision)."""
    opt.add_argument("--batch_size", type=positive_int, default=32,
                     help="GLOBAL batch size, split evenly over torchrun processes")
    opt.add_argument("--nb_epochs", type=positive_int, default=80, help="epochs to train in total")
    opt.add_argument("--learning_rate", type=positive_float, default=1e-3,
                     help="peak learning rate")
    opt.add_argument("--weight_decay", type=non_negative_float, default=1e-2, help="weight decay")
    opt.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                     help="optimizer (sgd uses momentum 0.9)")
    opt.add_argument("--scheduler", choices=SCHEDULERS, default="none",
                     help="learning-rate schedule over all --nb_epochs, stepped every batch")
    opt.add_argument("--warmup_epochs", type=non_negative_float, default=0.0,
                     help="linear warm-up from 0 over this many epochs (any scheduler)")
    opt.add_argument("--step_size", type=positive_int, default=30,
                     help="step scheduler: epochs between learning-rate drops")
    opt.add_argument("--step_gamma", type=positive_float, default=0.1,
                     help="step scheduler: factor of each drop")
    opt.add_argument("--criterion", choices=tuple(CRITERIA), default="l1",
                     help="depth loss on valid pixels, on depth / max_depth. Under torchrun "
                          "each mean is over the valid pixels of the whole global batch (every "
                          "rank's), as in one process; silog, a root of means, is over each "
                          "rank's own and the ranks' values are averaged")
    opt.add_argument("--smoothness_weight", type=non_negative_float, default=0.0,
                     help="weight of the smoothness term on the prediction (edge-aware on the "
                          "RGB view when the batch has one; 0: off)")
    opt.add_argument("--grad_clip", type=non_negative_float, default=0.0,
                     help="clip the global gradient norm to this (0: off)")
    opt.add_argument("--ema_decay", type=ema_decay, default=0.0,
                     help="exponential moving average of the weights, updated after every "
                          "optimizer step taken, with decay min(this, (1 + t) / (10 + t)) at the "
                          "t-th update; the average is validated, picks the best epoch and is "
                          "saved as the model (what evaluate.py, predict.py and a distillation "
                          "teacher load), the trained weights beside it for --resume. 0: off; "
                          "0.999 averages over about the last 1000 steps")
    opt.add_argument("--amp", choices=AMP_MODES, default="none",
                     help="mixed precision through torch.autocast; fp16 adds a gradient scaler "
                          "(a step whose gradients overflow is skipped). Runs on CPU too, where "
                          "it is for testing rather than speed")
    opt.add_argument("--sync_bn", action=argparse.BooleanOptionalAction, default=False,
                     help="under torchrun on CUDA, synchronise BatchNorm statistics across GPUs "
                          "(an error on CPU)")
    opt.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=False,
                     help="channels-last memory format for the networks and the batches "
                          "(faster convolutions with AMP on recent GPUs)")
    opt.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                     help="torch.compile the trained network (the first steps are slow while it "
                          "compiles; an error where torch.compile is not supported)")


def add_run_flags(run: ArgumentGroup) -> None:
    """Where a run writes, how it resumes, its seed and its device."""
    run.add_argument("--experiment_name", default=None,
                     help="run folder name under --checkpoint_dir (None: "
                          "<model>_<dataset>_<date-time>; when resuming: the resumed run's)")
    run.add_argument("--checkpoint_dir", default="checkpoints", help="where run folders go")
    run.add_argument("--resume", default=None,
                     help="continue a run: its folder, a checkpoint file, or 'latest' (the run "
                          "most recently written under --checkpoint_dir). Its saved arguments "
                          "are restored; flags given now override them, except the data and "
                          "distillation settings, which must match the run's")
    run.add_argument("--overwrite", action=argparse.BooleanOptionalAction, default=False,
                     help="start afresh in a run folder that already holds a run (its "
                          "checkpoints, records and pictures are deleted first)")
    run.add_argument("--seed", type=non_negative_int, default=0,
                     help="seed of initialisation and data order")
    run.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=False,
                     help="deterministic kernels: bit-exact reruns and resumes on CPU")
    run.add_argument("--device", default="auto",
                     help="auto (cuda if available, else cpu), cpu, cuda, cuda:N")
    run.add_argument("--threads", type=thread_count, default="auto",
                     help="CPU threads per process for torch's kernels. auto: the cores that are "
                          "idle when the run starts (a laptop is never quiet: threads beyond the "
                          "free cores slow every step), torch's default on CUDA; an explicit "
                          "OMP_NUM_THREADS wins")
    run.add_argument("--stop_after_epochs", type=positive_int, default=None,
                     help="stop after this many epochs of this invocation, as if killed "
                          "(the schedule still spans --nb_epochs); continue with --resume")


def add_logging_flags(log: ArgumentGroup) -> None:
    """What a run logs and draws, and the validation metric threshold."""
    log.add_argument("--use_wandb", action=argparse.BooleanOptionalAction, default=False,
                     help="log to Weights & Biases (offline when no API key is configured)")
    log.add_argument("--wandb_project", default="batdepth", help="W&B project")
    log.add_argument("--log_every", type=positive_int, default=50,
                     help="W&B: log the loss every N steps")
    log.add_argument("--num_val_images", type=non_negative_int, default=4,
                     help="validation samples drawn in val_last.png / val_best.png "
                          "(0: no pictures)")
    log.add_argument("--valid_threshold", type=non_negative_float, default=0.0,
                     help="metrics score pixels with ground truth > this (metres)")


def comma_separated(text: str) -> List[str]:
    """The non-empty, stripped parts of a comma-separated flag value."""
    return [part.strip() for part in text.split(",") if part.strip()]


def attention_levels(text: str) -> List[int]:
    """argparse type of ``--attention_levels 2,3,4,5``: distinct encoder levels in 1..5 (in the
    order given; :func:`models.binaural_attention_model.check_attention_levels` checks them)."""
    try:
        levels = [int(part) for part in comma_separated(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    try:
        check_attention_levels(levels)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return levels


def feature_levels(text: str) -> List[str]:
    """argparse type of ``--feature_levels d1,d2`` (any of x1..x5, d1..d4; checked by
    :func:`models.blocks.check_feature_levels`)."""
    levels = comma_separated(text)
    try:
        check_feature_levels(levels)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return levels


def add_audio_model_args(groups: ArgumentGroups, models: Sequence[str]) -> None:
    """The audio models' flags: input format, which model, and the student's own flags."""
    groups["data"].add_argument(
        "--audio_format", choices=("spectrogram", "spectrogram_ipd", "mel"),
        default="spectrogram",
        help="audio input: STFT magnitude or mel bands, both (2, S, S); spectrogram_ipd: the "
             "magnitude and the cosine and sine of the interaural phase difference, (4, S, S), "
             "for the student's --input_features ild_ipd")
    model = groups["model"]
    if len(models) > 1:
        model.add_argument("--model", choices=tuple(models), default=models[0],
                           help="binaural_attention: our student; official_unet: the official "
                                "BatVision U-Net (pix2pix UnetGenerator, reference baseline; "
                                "--base_channels is its ngf)")
    model.add_argument("--attention_levels", type=attention_levels,
                       default=",".join(map(str, DEFAULT_ATTENTION_LEVELS)),
                       help="student: encoder levels (1..5, comma-separated) with ear-to-ear "
                            "cross-attention")
    model.add_argument("--num_heads", type=positive_int, default=4,
                       help="student: attention heads per level (must divide every attended "
                            "level's width)")
    model.add_argument("--attention_mode", choices=("auto", "global", "time"), default="auto",
                       help="student: auto: global attention at small levels, along time per "
                            "frequency band at large ones")
    model.add_argument("--decoder", choices=("unet", "query"), default="unet",
                       help="student: unet: the teacher's U-Net decoder with the fused "
                            "(spectrogram-grid) skips; query: image-grid queries that "
                            "cross-attend to the binaural tokens, so d1..d4 are image-grid "
                            "features")
    model.add_argument("--input_features", choices=INPUT_FEATURES, default="magnitude",
                       help="student: what each ear encoder reads: its ear's spectrogram, or "
                            "that plus the interaural level difference (left - right), or both "
                            "and the interaural phase difference (needs --audio_format "
                            "spectrogram_ipd)")
    model.add_argument("--head_init_depth", type=head_init_depth, default=None,
                       help="student and official_unet: start every prediction at this "
                            "depth: metres, or 'median' (the training split's median valid "
                            "depth); none (default): the middle of the depth range")


def add_distillation_args(parser: argparse.ArgumentParser) -> None:
    """The ``distillation`` flag group."""
    group = parser.add_argument_group("distillation")
    group.add_argument("--teacher_checkpoint", default=None,
                       help="checkpoint of a train_rgb_depth.py run (required for a new run; a "
                            "resumed run reuses its own)")
    group.add_argument("--lambda_depth", type=non_negative_float, default=1.0,
                       help="weight of the depth KD term (on depth / max_depth; 0: off)")
    group.add_argument("--depth_kd", choices=DEPTH_KD_KINDS, default="l1",
                       help="depth KD distance: absolute or squared error")
    group.add_argument("--lambda_feat", type=non_negative_float, default=0.0,
                       help="weight of the feature KD term, the mean over --feature_levels "
                            "(0: off)")
    group.add_argument("--feature_levels", type=feature_levels, default=",".join(DECODER_KEYS),
                       help="comma-separated levels for feature KD, any of x1..x5 (encoder, on the "
                            "spectrogram grid) and d1..d4 (decoder, on the image grid)")
    group.add_argument("--feature_teacher", choices=FEATURE_TEACHERS, default="teacher",
                       help="whose features the feature KD matches: the teacher's, or (a "
                            "control) those of an untrained twin of it, same architecture, "
                            "weights drawn from --seed; the depth KD still uses the teacher")
    group.add_argument("--feature_matching", choices=MATCHINGS, default="mse",
                       help="mse: MSE of per-sample standardised features; cosine: 1 - cosine "
                            "over channels; attention: attention transfer of spatial maps")
    group.add_argument("--kd_schedule", choices=SCHEDULES, default="constant",
                       help="KD weights: constant; ramped from 0 (linear, cosine) over "
                            "--kd_ramp_epochs; confidence (constant, depth KD weighted per "
                            "pixel by the teacher's agreement with the ground truth); or gated "
                            "(constant, depth KD only on pixels where the teacher is closer to "
                            "the ground truth than the student); controls of gated: "
                            "hard_pixels (L1 towards the ground truth on as many valid pixels "
                            "as the gate passes, those where the student errs most; nothing in "
                            "the holes) and holes (the gated term inside the ground truth's "
                            "holes only)")
    group.add_argument("--kd_ramp_epochs", type=positive_float, default=5.0,
                       help="linear/cosine schedules: epochs until the KD weights reach full value")
    group.add_argument("--confidence_tau", type=positive_float, default=0.2,
                       help="confidence schedule: relative teacher error that gets weight 1/e")


def build_parser(kind: str, description: Optional[str]) -> argparse.ArgumentParser:
    """Every flag of the training script of ``kind`` (one of :data:`KIND_MODELS`).

    Args:
        kind: ``teacher`` (train_rgb_depth.py), ``student`` (train_binaural_attention.py) or
            ``kd`` (train_distillation.py).
        description: the script's docstring, shown by ``--help``.
    """
    parser, groups = training_parser(description)
    if kind != "teacher":
        add_audio_model_args(groups, KIND_MODELS[kind])
    if kind == "kd":
        add_distillation_args(parser)
    parser.set_defaults(kind=kind)
    return parser


def model_name_of(args: argparse.Namespace) -> str:
    """The model a run of these arguments trains."""
    return getattr(args, "model", None) or KIND_MODELS[args.kind][0]


def check_model_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Cross-flag checks argparse cannot do flag by flag (one-line parser error, exit 2)."""
    with_phase = getattr(args, "audio_format", None) == "spectrogram_ipd"
    if with_phase != (getattr(args, "input_features", None) == "ild_ipd"
                      and model_name_of(args) == "binaural_attention"):
        parser.error("--audio_format spectrogram_ipd and the student's --input_features ild_ipd "
                     "go together: the phase channels are read by that student only")
    if model_name_of(args) == "binaural_attention":
        try:
            check_attention_levels(args.attention_levels, args.base_channels, args.num_heads)
        except ValueError as error:
            parser.error(f"--num_heads {args.num_heads} with --base_channels "
                         f"{args.base_channels}: {error}")


# --------------------------------------------------------------------------------------------
# --config FILE.yaml


def config_argv(parser: argparse.ArgumentParser, path: "str | Path") -> List[str]:
    """The flags a ``--config`` YAML file stands for, as command-line tokens.

    The file maps flag names (without ``--``) to values: scalars, lists (joined with commas, as
    the comma-separated flags take them) and, for on/off flags, booleans. ``null`` keeps the
    parser's default. Values go through the flags' own argparse types, so a file is validated
    exactly like a command line, and a bad value is reported with the file's name.

    Raises:
        UsageError: unreadable file, not a mapping, an unknown flag or a value of the wrong kind
            (one line naming the file).
    """
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as error:
        raise UsageError(f"{path}: cannot read the config file ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if loaded is None:
        return []
    if not isinstance(loaded, dict):
        raise UsageError(f"{path}: expected a mapping of flag: value, got {type(loaded).__name__}")
    actions = {action.dest: action for action in parser._actions}
    tokens: List[str] = []
    for key, value in loaded.items():
        action = actions.get(key)
        if action is None or key in ("help", "config", "kind") or not action.option_strings:
            raise UsageError(f"{path}: unknown flag {key!r} (see --help for the flags)")
        flag = action.option_strings[0]
        if value is None:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise UsageError(f"{path}: {key} is an on/off flag, expected true or false, "
                                 f"got {value!r}")
            # Both spellings, so a file's false also overrides an earlier true.
            tokens += [flag if value else f"--no-{flag[2:]}"]
        elif isinstance(value, (dict, bool)):
            raise UsageError(f"{path}: {key} expects a value, got {value!r}")
        else:
            text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
            _check_value(action, text, path)
            tokens += [flag, text]
    return tokens


def _check_value(action: argparse.Action, text: str, path: Path) -> None:
    """Parse a config file's value as argparse will, so a bad one names the file it came from.

    Raises:
        UsageError: ``<file>: --<flag>: <argparse's reason>``.
    """
    try:
        value = action.type(text) if action.type is not None else text
        if action.choices is not None and value not in action.choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice {text!r} (choose from {', '.join(map(str, action.choices))})")
    except (argparse.ArgumentTypeError, ValueError) as error:
        raise UsageError(f"{path}: --{action.dest}: {error}") from None


def with_config(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> List[str]:
    """``argv`` preceded by its ``--config`` file's flags, so the command line overrides them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--config", default=None)
    known, _ = probe.parse_known_args(argv)
    return argv if known.config is None else config_argv(parser, known.config) + argv


def parse_with_config(parser: argparse.ArgumentParser,
                      argv: Optional[Sequence[str]]) -> Tuple[List[str], argparse.Namespace]:
    """Parse ``argv`` after its ``--config`` file's flags, so the command line overrides the file.

    Returns:
        ``(the expanded argv, the parsed arguments)``.

    Raises:
        UsageError: a bad config file (one line naming it).
    """
    argv = with_config(parser, argv)
    return argv, parser.parse_args(argv)


def parse_script_argv(kind: str, argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` parsed as the training script of ``kind`` parses it (:func:`parse_with_config`),
    unresolved (``--dataset auto`` stays ``auto``); a bad value in a config file is reported as
    that script's.

    Raises:
        UsageError: a bad config file (one line naming it).
    """
    parser = build_parser(kind, None)
    parser.prog = KIND_SCRIPTS[kind]
    return parse_with_config(parser, argv)[1]


def flag_groups(parser: argparse.ArgumentParser) -> Dict[str, List[str]]:
    """Argparse group title → destinations of its flags (positional/optional groups skipped)."""
    return {group.title: [action.dest for action in group._group_actions]
            for group in parser._action_groups
            if group.title not in ("positional arguments", "options", "optional arguments")}
