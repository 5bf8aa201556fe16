"""The experiment table behind ``run_experiments.py``: presets, runs reused only when their
identity matches, test scores under two metric protocols, tables, goal checks and pictures.

A preset (:data:`PRESETS`) lists experiments. Each experiment is one training script run with a
config file of the preset's ``config_dir`` (e.g. ``configs/synthetic/student.yaml``) plus its own
flags, once per seed; the preset adds the sizes every run shares (image size, batch, epochs,
depth range, world). The runner calls the repository's command lines (``train_*.py``,
``evaluate.py``) in child processes and prints each one, so any run can be repeated by hand.

Reuse. Before a run is trained, the runner computes the identity that run would record
(:func:`training.identity.run_identity`: its resolved flags, its data's fingerprint and, for
distillation, the teacher checkpoint's fingerprint) and compares it with the identity in the run
folder's ``last_model.pth``: equal and finished, the run is reused; equal and cut short, it is
resumed; different or not recorded, it is trained afresh with ``--overwrite`` or, with
``--on_mismatch stop``, the runner stops with one line listing the differences. A student whose
teacher was retrained has another teacher fingerprint, so it is retrained too. A test evaluation
is reused only while its ``metrics.json`` records the fingerprints of the checkpoint and of the
test split now on disk, and the metrics of every protocol of :data:`training.metrics.PROTOCOLS`.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, Dataset, default_collate

from datasets.batvision import spread_indices
from datasets.sample import AUDIO, DEPTH, META, RGB, VALID
from training import cli
from training.checkpoint import (
    BEST_CHECKPOINT, CONFIG_FILE, LAST_CHECKPOINT, METRICS_FILE, Checkpoint, atomic_write,
    load_checkpoint, load_model,
)
from training.data import (
    REPO_ROOT, build_dataset, input_storage, resolve_data, resolve_data_root, split_fingerprint,
)
from training.device import DistContext, resolve_device, threads_per_job
from training.errors import TrainingError, UsageError
from training.identity import checkpoint_fingerprint, differences, run_identity
from training.metrics import METRIC_NAMES, OFFICIAL, PROTOCOLS, MultiProtocolMetrics, image_metrics
from training.tracking import DEPTH_CMAP, HOLE_COLOUR, masked_depth, progress, save_figure

# Which checkpoint of a run is scored, and where its test evaluation goes (``eval_*`` folders
# are what ``--overwrite`` clears with the run).
BEST, LAST = "best", "last"
CHECKPOINT_FILES = {BEST: BEST_CHECKPOINT, LAST: LAST_CHECKPOINT}
EVALUATION_DIRS = {BEST: "eval_test", LAST: "eval_test_last"}
EVALUATE_SCRIPT = "evaluate.py"
# Every row is scored on the ground truth of one recipe, whatever recipe its model reads: the
# official recipe's bilinear resize blends holes into valid depth and counts +inf as valid, so
# scoring the official U-Net on its own recipe's depth would score it on other pixels and values.
TABLE_GROUND_TRUTH = "default"
MISMATCH_ACTIONS = ("retrain", "stop")
# Goals of the standard table: audio-only and best-KD RMSE as a share of the official U-Net's,
# the student's training time as a multiple of the official U-Net's, and the KD gain in units of
# the larger seed standard deviation.
AUDIO_ONLY_GOAL, BEST_KD_GOAL, TRAIN_TIME_GOAL, SEED_SPREAD_GOAL = 0.90, 0.80, 1.5, 2.0

# (script, argv, log): runs a repository script; ``log`` (None: this terminal) takes its output.
Launcher = Callable[[str, Sequence[str], Optional[Path]], None]
Row = Dict[str, Any]


@dataclass(frozen=True)
class Experiment:
    """One row of the table.

    Attributes:
        name: row key and run folder name.
        label: row title.
        kind: ``teacher``, ``student`` or ``kd`` (which training script; ``cli.KIND_SCRIPTS``).
        config: config file stem in the preset's ``config_dir``.
        flags: further flags of this row (after the config file and the preset's sizes).
        feature_kd: gets ``--lambda_feat <preset.feature_weight>``.
        scored: which checkpoint the table scores, ``best`` (lowest validation RMSE) or ``last``.
    """

    name: str
    label: str
    kind: str
    config: str
    flags: Tuple[str, ...] = ()
    feature_kd: bool = False
    scored: str = BEST


TEACHER, OFFICIAL_UNET, AUDIO_ONLY = "rgb_teacher", "official_unet", "audio_only"
TEACHER_ROW = Experiment(TEACHER, "RGB teacher (upper bound)", "teacher", "teacher")
# The official recipe has no model selection, so the reference is scored at its last epoch.
OFFICIAL_ROW = Experiment(OFFICIAL_UNET, "official BatVision U-Net (reference, last epoch)",
                          "student", "official_unet", ("--model", "official_unet"), scored=LAST)
AUDIO_ROW = Experiment(AUDIO_ONLY, "audio only (our student)", "student", "student")
KD_ROW = Experiment("kd", "audio + KD (recommended, kd.yaml: depth KD)", "kd", "kd")
# Variants of kd.yaml; its own row is the depth-only one, so that variant is not trained twice.
KD_VARIANTS = (
    Experiment("kd_depth_features", "audio + KD depth + features d1..d4", "kd", "kd",
               ("--lambda_depth", "1", "--feature_levels", "d1,d2,d3,d4"), feature_kd=True),
    Experiment("kd_confidence", "audio + KD confidence-weighted depth + d1..d4", "kd", "kd",
               ("--lambda_depth", "1", "--feature_levels", "d1,d2,d3,d4",
                "--kd_schedule", "confidence"), feature_kd=True),
    Experiment("kd_encoder_ablation", "ablation: audio + KD depth + features x1..x5", "kd", "kd",
               ("--lambda_depth", "1", "--feature_levels", "x1,x2,x3,x4,x5"), feature_kd=True),
    # The depth KD only where the teacher beats the student (every depth-KD row above lost below
    # 1.5 m, where the student beats its teacher), beside the encoder features of the row above.
    Experiment("kd_gated", "audio + KD gated depth + features x1..x5", "kd", "kd",
               ("--lambda_depth", "1", "--feature_levels", "x1,x2,x3,x4,x5",
                "--kd_schedule", "gated"), feature_kd=True),
)
QUICK_ROWS = (TEACHER_ROW, OFFICIAL_ROW, AUDIO_ROW, KD_ROW)
STANDARD_ROWS = QUICK_ROWS + KD_VARIANTS
REFERENCES = {
    "mean_depth_map": "reference: mean depth map of the train split",
    "location_mean_depth_map": "reference: per-location mean depth map of the train split",
}


@dataclass(frozen=True)
class Preset:
    """A table: its rows and everything its runs share.

    Attributes:
        description: one line for results.md.
        dataset: ``--dataset`` of every run (``synthetic``: the runner generates the world).
        config_dir: folder of the experiments' config files, relative to the repository (or
            absolute).
        experiments: the trained rows, teacher first (the KD rows distil from it).
        goals: which goal checks results.md prints: ``quick`` or ``standard``.
        seeds: default number of seeds (0..seeds-1).
        image_size, batch_size: of every run.
        teacher_epochs, student_epochs: ``--nb_epochs`` of the teacher and of every audio model.
        max_depth: metres (``None``: the dataset's default).
        synthetic_locations, synthetic_samples, synthetic_size, synthetic_seed: the world.
        feature_weight: ``--lambda_feat`` of the feature-KD rows.
        flags: further flags of every run (operational ones: workers, pictures).
    """

    description: str
    dataset: str
    config_dir: str
    experiments: Tuple[Experiment, ...]
    goals: str
    seeds: int
    image_size: int
    batch_size: int
    teacher_epochs: int
    student_epochs: int
    max_depth: Optional[float] = None
    synthetic_locations: int = 3
    synthetic_samples: int = 400
    synthetic_size: int = 128
    synthetic_seed: int = 0
    feature_weight: float = 0.05
    flags: Tuple[str, ...] = ()


PRESETS: Dict[str, Preset] = {
    # The README's main command, sized for <= 10 minutes on a quiet 2-core CPU: the config files'
    # recipes at 64x64 on a world rendered at 64x64, depth range = the simulated camera's (15 m).
    # The teacher gets 10 epochs, the audio models 8: a distilled student is only as good as its
    # teacher, and 6 teacher epochs left it barely ahead of the students (0.697 m validation
    # RMSE); the teacher costs ~18 s per epoch on the 840 training samples.
    "quick": Preset(
        description="synthetic world (simulated rooms and echoes, cardioid ears; not real data)",
        dataset="synthetic", config_dir="configs/synthetic", experiments=QUICK_ROWS,
        goals="quick", seeds=1, image_size=64, batch_size=8, teacher_epochs=10,
        student_epochs=8, max_depth=15.0, synthetic_size=64,
        flags=("--num_workers", "0", "--num_val_images", "2")),
    # The config files' contract: 128x128, 20 epochs, batch 8, 15 m, 3 seeds, every KD variant.
    "standard": Preset(
        description="synthetic world (simulated rooms and echoes, cardioid ears; not real data), "
                    "the config files' benchmark",
        dataset="synthetic", config_dir="configs/synthetic", experiments=STANDARD_ROWS,
        goals="standard", seeds=3, image_size=128, batch_size=8, teacher_epochs=20,
        student_epochs=20, max_depth=15.0, synthetic_size=128,
        flags=("--num_workers", "0", "--num_val_images", "2")),
    # Real BatVision V2 on a GPU, the official training length.
    "full": Preset(
        description="BatVision V2 (real recordings), 256x256, official training length",
        dataset="batvisionv2", config_dir="configs/batvisionv2", experiments=STANDARD_ROWS,
        goals="standard", seeds=3, image_size=256, batch_size=64, teacher_epochs=80,
        student_epochs=80, flags=("--num_workers", "8")),
}
# Preset fields the command line may override (each a flag of the same name): type, meaning.
SIZE_FIELDS: Dict[str, Tuple[Callable[[str], Any], str]] = {
    "image_size": (cli.image_size, "side of every run's inputs and depth maps, pixels"),
    "batch_size": (cli.positive_int, "batch size of every run"),
    "teacher_epochs": (cli.positive_int, "epochs of the RGB teacher"),
    "student_epochs": (cli.positive_int, "epochs of every audio model (official U-Net included)"),
    "max_depth": (cli.positive_float, "depth range in metres (None: the dataset's)"),
    "synthetic_locations": (cli.positive_int, "synthetic world: locations"),
    "synthetic_samples": (cli.positive_int, "synthetic world: samples per location"),
    "synthetic_size": (cli.positive_int, "synthetic world: rendered image side, pixels"),
    "synthetic_seed": (cli.non_negative_int, "synthetic world: its seed"),
    "feature_weight": (cli.non_negative_float, "--lambda_feat of the feature-KD rows"),
}


EXPERIMENTS: Dict[str, Experiment] = {
    e.name: e for preset in PRESETS.values() for e in preset.experiments}


def is_audio_row(name: str) -> bool:
    """Whether a row is one of our audio students (not the teacher, the reference U-Net or a
    prior)."""
    experiment = EXPERIMENTS.get(name)
    return experiment is not None and experiment.kind != "teacher" and name != OFFICIAL_UNET


def is_kd_row(name: str) -> bool:
    """Whether a row is a distilled student."""
    return name in EXPERIMENTS and EXPERIMENTS[name].kind == "kd"


# --------------------------------------------------------------------------------------------
# Command line


def build_parser(description: Optional[str]) -> argparse.ArgumentParser:
    """Every flag of ``run_experiments.py``.

    Args:
        description: the script's docstring, shown by ``--help``.
    """
    parser = cli.ArgumentParser(description)
    parser.add_argument("--preset", choices=tuple(PRESETS), default="quick",
                        help="quick: the README's main command, synthetic world, CPU; standard: "
                             "the config files' benchmark (128x128, 20 epochs, 3 seeds, every KD "
                             "variant); full: real BatVision V2 on a GPU")
    parser.add_argument("--seeds", type=cli.positive_int, default=None,
                        help="seeds 0..N-1 per trained experiment (None: the preset's: "
                             + _preset_values("seeds") + ")")
    parser.add_argument("--experiments", default=None,
                        help="comma-separated subset of the preset's rows (None: all; the "
                             "teacher is added when a KD row is chosen). Rows: "
                             + "; ".join(f"{name}: {', '.join(e.name for e in p.experiments)}"
                                         for name, p in PRESETS.items() if name != "full")
                             + "; full: those of standard")
    parser.add_argument("--config_dir", default=None,
                        help="folder of the config files (teacher.yaml, student.yaml, kd.yaml, "
                             "official_unet.yaml); None: the preset's: "
                             + _preset_values("config_dir"))
    parser.add_argument("--data_root", default=None,
                        help="real data: the dataset root (required for full). synthetic: the "
                             "folder holding the world (default .cache/synthetic/<world>/)")
    parser.add_argument("--out", default=None, help="output folder (default results/<preset>)")
    parser.add_argument("--cache_dir", default=None,
                        help="preprocessed-sample cache shared by every run (default <out>/cache)")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda if available, else cpu), cpu, cuda")
    parser.add_argument("--on_mismatch", choices=MISMATCH_ACTIONS, default="retrain",
                        help="a run folder trained with other settings, data or teacher than "
                             "asked now: retrain it from scratch (--overwrite), or stop with one "
                             "line listing the differences")
    parser.add_argument("--jobs", type=cli.positive_int, default=1,
                        help="runs trained at once (each its own process; on a GPU several "
                             "small runs share it well; on a CPU they share the free cores out, "
                             "--threads free // jobs); above 1 each run's output goes to "
                             "<out>/logs/ instead of the terminal")
    parser.add_argument("--num_pictures", type=cli.positive_int, default=4,
                        help="test samples in pictures.png")
    sizes = parser.add_argument_group(
        "size overrides", "replace the preset's value (default: keep it, shown per preset), "
                          "e.g. for a tiny smoke run")
    for field, (kind, meaning) in SIZE_FIELDS.items():
        sizes.add_argument(f"--{field}", type=kind, default=None,
                           help=f"{meaning}; {_preset_values(field)}")
    return parser


def _preset_values(field: str) -> str:
    """``quick: 64, standard: 128, full: 256`` for a :class:`Preset` field, for --help."""
    return ", ".join(f"{name}: {getattr(preset, field)}" for name, preset in PRESETS.items())


def resolve_preset(args: argparse.Namespace) -> Preset:
    """The chosen preset with the overrides of ``args`` applied (sizes, seeds, rows).

    Raises:
        UsageError: ``--experiments`` names a row the preset does not have.
    """
    preset = PRESETS[args.preset]
    overrides: Dict[str, Any] = {f: getattr(args, f) for f in SIZE_FIELDS
                                 if getattr(args, f) is not None}
    if args.seeds is not None:
        overrides["seeds"] = args.seeds
    if args.config_dir is not None:  # from the working directory, not the repository
        overrides["config_dir"] = str(Path(args.config_dir).resolve())
    if args.experiments is not None:
        wanted = [name.strip() for name in args.experiments.split(",") if name.strip()]
        known = {e.name for e in preset.experiments}
        unknown = [name for name in wanted if name not in known]
        if unknown or not wanted:
            raise UsageError(f"--experiments {args.experiments!r}: the {args.preset} preset's "
                             f"rows are {', '.join(sorted(known))}")
        needs_teacher = any(e.kind == "kd" for e in preset.experiments if e.name in wanted)
        overrides["experiments"] = tuple(
            e for e in preset.experiments
            if e.name in wanted or (e.name == TEACHER and needs_teacher))
    return dataclasses.replace(preset, **overrides)


# --------------------------------------------------------------------------------------------
# One run: its command line, its identity, and whether to train, resume or reuse it


@dataclass(frozen=True)
class Setup:
    """What every run of one invocation shares.

    Attributes:
        preset: with the command line's overrides.
        config_dir: absolute folder of the config files.
        data_root: every run's explicit ``--data_root`` (for synthetic: the world's folder).
        cache_dir: the shared preprocessing cache.
        device: ``--device`` of every run.
        runs_dir: ``<out>/runs``; a run lives in ``runs_dir/seed<k>/<experiment>``.
        on_mismatch: ``retrain`` or ``stop``.
        launch: runs one script with its arguments (:func:`run_script`).
        jobs: runs trained at once; above 1 each script's output goes to a log file in
            ``logs_dir`` instead of the terminal, where runs would interleave.
        logs_dir: ``<out>/logs``.
        threads: ``--threads`` of every script (``None``: each its own ``auto``), from
            :func:`training.device.threads_per_job`.
    """

    preset: Preset
    config_dir: Path
    data_root: str
    cache_dir: Path
    device: str
    runs_dir: Path
    on_mismatch: str
    launch: Launcher
    jobs: int = 1
    logs_dir: Optional[Path] = None
    threads: Optional[int] = None

    def thread_flags(self) -> List[str]:
        """``--threads N`` when the runs share the cores out, else nothing."""
        return [] if self.threads is None else ["--threads", str(self.threads)]

    def log(self, spec: "RunSpec", step: str) -> Optional[Path]:
        """Where the output of ``step`` (``train`` or ``evaluate``) of a run goes: ``None`` (the
        terminal) with one job, else ``<logs_dir>/seed<k>-<experiment>.<step>.log``."""
        if self.jobs == 1 or self.logs_dir is None:
            return None
        return self.logs_dir / f"seed{spec.seed}-{spec.experiment.name}.{step}.log"


@dataclass(frozen=True)
class RunSpec:
    """One training run: an experiment at one seed."""

    experiment: Experiment
    seed: int
    run_dir: Path
    argv: Tuple[str, ...]

    @property
    def script(self) -> str:
        """The training script (``train_*.py``)."""
        return cli.KIND_SCRIPTS[self.experiment.kind]

    @property
    def scored_checkpoint(self) -> Path:
        """The checkpoint the table scores."""
        return self.run_dir / CHECKPOINT_FILES[self.experiment.scored]


def run_spec(experiment: Experiment, seed: int, setup: Setup) -> RunSpec:
    """The run of ``experiment`` at ``seed``: its folder and its full command line (config file,
    the preset's sizes, the row's flags; no ``--resume``/``--overwrite``)."""
    preset = setup.preset
    seed_dir = setup.runs_dir / f"seed{seed}"
    config = setup.config_dir / f"{experiment.config}.yaml"
    epochs = preset.teacher_epochs if experiment.kind == "teacher" else preset.student_epochs
    argv = ["--config", str(config), "--dataset", preset.dataset, "--data_root", setup.data_root,
            "--image_size", str(preset.image_size), "--batch_size", str(preset.batch_size),
            "--nb_epochs", str(epochs), "--seed", str(seed),
            "--checkpoint_dir", str(seed_dir), "--experiment_name", experiment.name,
            "--cache_dir", str(setup.cache_dir), "--device", setup.device,
            *setup.thread_flags()]
    if preset.dataset == "synthetic":
        argv += ["--synthetic_locations", str(preset.synthetic_locations),
                 "--synthetic_samples", str(preset.synthetic_samples),
                 "--synthetic_size", str(preset.synthetic_size),
                 "--synthetic_seed", str(preset.synthetic_seed)]
    if preset.max_depth is not None:
        argv += ["--max_depth", str(preset.max_depth)]
    argv += [*preset.flags, *experiment.flags]
    if experiment.feature_kd:
        argv += ["--lambda_feat", str(preset.feature_weight)]
    if experiment.kind == "kd":
        argv += ["--teacher_checkpoint", str(seed_dir / TEACHER / BEST_CHECKPOINT)]
    return RunSpec(experiment, seed, seed_dir / experiment.name, tuple(argv))


def parse_run_args(spec: RunSpec) -> Tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The training script's parser and its parse of the run's command line (:func:`parse_argv`).

    Raises:
        UsageError: a bad config file (one line naming it).
    """
    return parse_argv(spec.experiment.kind, spec.argv)


def parse_argv(kind: str,
               argv: Sequence[str]) -> Tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser of the training script of ``kind`` (``cli.KIND_SCRIPTS``) and its parse of
    ``argv``, its ``--config`` file first (so the flags override the file), as the script itself
    parses it.

    Raises:
        UsageError: a bad config file (one line naming it).
    """
    parser = cli.build_parser(kind, None)
    parser.prog = cli.KIND_SCRIPTS[kind]  # a bad value in a config file is reported as its own
    return parser, parser.parse_args(cli.with_config(parser, argv))


def identity_of(kind: str, argv: Sequence[str]) -> Dict[str, Any]:
    """The identity a run of the training script of ``kind`` with ``argv`` would record if
    trained now (:func:`training.identity.run_identity`): its arguments resolved as the script
    resolves them (data flags by :func:`training.data.resolve_data`), the train+val data
    fingerprint and, for distillation, the fingerprint of the teacher checkpoint on disk.

    Raises:
        DataError: unreadable split CSVs or teacher checkpoint.
    """
    parser, args = parse_argv(kind, argv)
    _, data_fingerprint = resolve_data(args, DistContext())
    teacher = (checkpoint_fingerprint(load_checkpoint(args.teacher_checkpoint))
               if kind == "kd" else None)
    return run_identity(vars(args), cli.flag_groups(parser), kind, cli.model_name_of(args),
                        data_fingerprint, teacher, input_storage(args))


NEW, REUSE, RESUME, RETRAIN = "new", "reuse", "resume", "retrain"


def decide(run_dir: Path, wanted: Dict[str, Any]) -> Tuple[str, List[str]]:
    """What to do with a run folder, given the identity the run should have.

    Returns:
        ``(action, differences)``: ``new`` (no checkpoint there), ``reuse`` (same identity, all
        epochs trained), ``resume`` (same identity, cut short) or ``retrain`` (another or no
        recorded identity; ``differences`` says what differs).
    """
    last = run_dir / LAST_CHECKPOINT
    if not last.is_file():
        return NEW, []
    saved = load_checkpoint(last)
    recorded = saved.get("identity")
    if not recorded:
        return RETRAIN, ["the run records no identity (written before runs recorded one)"]
    if recorded.get("fingerprint") != wanted["fingerprint"]:
        return RETRAIN, differences(recorded, wanted) or ["identity fingerprint"]
    return (REUSE if saved["epoch"] >= saved["args"]["nb_epochs"] else RESUME), []


def train_run(spec: RunSpec, setup: Setup) -> None:
    """Bring one run of the table up to date (:func:`bring_up_to_date`)."""
    bring_up_to_date(spec.experiment.kind, spec.argv, spec.run_dir, setup.launch,
                     setup.on_mismatch, setup.log(spec, "train"))


def bring_up_to_date(kind: str, argv: Sequence[str], run_dir: Path, launch: Launcher,
                     on_mismatch: str = "retrain", log: Optional[Path] = None) -> None:
    """Reuse, resume or (re)train one run (see the module docstring).

    Args:
        kind: ``teacher``, ``student`` or ``kd`` (which training script, ``cli.KIND_SCRIPTS``).
        argv: the script's arguments, without ``--resume``/``--overwrite``; they name
            ``run_dir``.
        run_dir: the run's folder.
        launch: runs the script (:func:`run_script`).
        on_mismatch: ``retrain`` or ``stop`` (:data:`MISMATCH_ACTIONS`) for a folder that holds
            a run with another identity.
        log: file that takes the script's output (``None``: the terminal).

    Raises:
        UsageError: ``on_mismatch`` is ``stop`` and the folder holds a run with another
            identity.
        TrainingError: the training script failed (its own message is printed above).
    """
    wanted = identity_of(kind, argv)
    action, differing = decide(run_dir, wanted)
    if action == REUSE:
        print(f"[reuse] {run_dir}: finished, same settings, data and teacher")
        return
    argv = list(argv)
    if action == RESUME:
        argv += ["--resume", str(run_dir)]
    elif action == RETRAIN:
        if on_mismatch == "stop":
            raise UsageError(f"{run_dir} holds a run trained differently: "
                             f"{'; '.join(differing)} (--on_mismatch retrain retrains it)")
        print(f"[retrain] {run_dir}: {'; '.join(differing)}")
        argv.append("--overwrite")
    elif run_dir.exists():
        argv.append("--overwrite")  # leftovers of a run stopped before its first checkpoint
    print(f"[{'resume' if action == RESUME else 'train'}] {run_dir}", flush=True)
    launch(cli.KIND_SCRIPTS[kind], argv, log)
    recorded = load_checkpoint(run_dir / LAST_CHECKPOINT).get("identity") or {}
    if recorded.get("fingerprint") != wanted["fingerprint"]:
        # The runner and the engine resolved the run differently: it would be retrained by every
        # later invocation, so say so (and what differs) instead of silently wasting hours.
        print(f"warning: {run_dir} recorded another identity than the runner computed "
              f"({'; '.join(differences(recorded, wanted)) or 'no identity recorded'}); it will "
              "not be reused")


# --------------------------------------------------------------------------------------------
# Test evaluation


def run_test_fingerprint(run_args: Dict[str, Any]) -> str:
    """``data_fingerprint`` of the test split a run's saved arguments read."""
    args = argparse.Namespace(**run_args)
    return split_fingerprint(args, resolve_data_root(args, DistContext()), "test")


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    """A JSON object file, or ``None`` when it is missing or not valid JSON (then rewritten)."""
    try:
        loaded = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return loaded if isinstance(loaded, dict) else None


def evaluate_run(spec: RunSpec, setup: Setup) -> Tuple[Dict[str, Any], Checkpoint]:
    """Test metrics of the run's scored checkpoint (``evaluate.py``, on the ground truth of
    :data:`TABLE_GROUND_TRUTH`), reused while the recorded checkpoint and test-split fingerprints
    match the files now on disk, the ground truth is that recipe's, the predictions were not
    mirror-averaged and every protocol of :data:`training.metrics.PROTOCOLS` was scored.

    Returns:
        ``(metrics.json contents, the scored checkpoint)``.
    """
    checkpoint_path = spec.scored_checkpoint
    checkpoint = load_checkpoint(checkpoint_path)
    wanted = {"checkpoint_fingerprint": checkpoint_fingerprint(checkpoint),
              "data_fingerprint": run_test_fingerprint(checkpoint["args"]),
              "ground_truth": TABLE_GROUND_TRUTH}
    out = spec.run_dir / EVALUATION_DIRS[spec.experiment.scored]
    result = read_json(out / METRICS_FILE)
    if (result is not None and all(result.get(k) == v for k, v in wanted.items())
            and not result.get("mirror_average")
            and set(PROTOCOLS) <= set(protocol_results(result))):
        print(f"[reuse] {out}: evaluation of this checkpoint on this test split and ground "
              "truth")
        return result, checkpoint
    setup.launch(EVALUATE_SCRIPT, [
        "--checkpoint", str(checkpoint_path), "--split", "test", "--out", str(out),
        "--batch_size", str(4 * setup.preset.batch_size), "--num_workers", "0",
        # gt > 0 whatever threshold the run validated with: the table's primary protocol.
        "--device", setup.device, "--valid_threshold", "0", "--ground_truth", TABLE_GROUND_TRUTH,
        *setup.thread_flags()],
        setup.log(spec, "evaluate"))
    result = read_json(out / METRICS_FILE)
    if result is None:
        raise TrainingError(f"{out / METRICS_FILE}: {EVALUATE_SCRIPT} wrote no metrics")
    return result, checkpoint


def protocol_results(result: Dict[str, Any]) -> Dict[str, Dict[str, Optional[float]]]:
    """Protocol name → metrics from an ``evaluate.py`` ``metrics.json``.

    The top-level metrics are those of ``result["protocol"]`` (the official protocol when it has
    no name); ``result["protocols"]``, when present, maps further protocol names to their
    metrics.
    """
    primary = (result.get("protocol") or {}).get("name", OFFICIAL)
    found = {primary: {m: result.get(m) for m in METRIC_NAMES}}
    for name, values in (result.get("protocols") or {}).items():
        if isinstance(values, dict) and "rmse" in values:
            found[name] = {m: values.get(m) for m in METRIC_NAMES}
    return found


def metric_column(metric: str, protocol: str) -> str:
    """CSV column of a metric: the bare name under the official protocol, else
    ``<metric>@<protocol>`` (e.g. ``rmse@bv2_min0.5``)."""
    return metric if protocol == OFFICIAL else f"{metric}@{protocol}"


METRIC_COLUMNS = [metric_column(m, p) for p in PROTOCOLS for m in METRIC_NAMES]


def metric_cells(per_protocol: Dict[str, Dict[str, Optional[float]]]) -> Dict[str, Any]:
    """The metric columns of a row (``None`` where a protocol was not scored)."""
    return {metric_column(m, p): per_protocol.get(p, {}).get(m)
            for p in PROTOCOLS for m in METRIC_NAMES}


def training_seconds(run_dir: Path) -> float:
    """Wall time of all the run's epochs, in seconds (its ``metrics.json`` history)."""
    history = (read_json(run_dir / METRICS_FILE) or {}).get("history", [])
    return sum(epoch["seconds"] for epoch in history)


def parameter_count(checkpoint: Checkpoint) -> int:
    """Trainable parameters of the checkpoint's model (buffers such as BatchNorm statistics
    excluded)."""
    model = load_model(checkpoint)
    return sum(p.numel() for p in model.parameters())


def score_run(spec: RunSpec, setup: Setup) -> Row:
    """The CSV row of a trained run: its test metrics under every protocol and its costs."""
    result, checkpoint = evaluate_run(spec, setup)
    return {"experiment": spec.experiment.name, "label": spec.experiment.label,
            "seed": spec.seed,
            "scored": f"{spec.experiment.scored} (epoch {checkpoint['epoch']})",
            **metric_cells(protocol_results(result)), "n_images": result.get("n_images"),
            "params": parameter_count(checkpoint),
            "train_seconds": round(training_seconds(spec.run_dir), 2), "run_dir": str(spec.run_dir)}


# --------------------------------------------------------------------------------------------
# Reference rows: depth priors of the training split


def depth_priors(train_set: Dataset,
                 batch_size: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Mean depth map of the training split, overall and per location.

    Each pixel is the mean of the valid ground truth there (metres); a pixel never valid in the
    (location's) training samples gets the overall mean valid depth.

    Returns:
        ``(overall, by_location)``: (1, H, W) maps in metres.
    """
    sums: Dict[str, torch.Tensor] = {}
    counts: Dict[str, torch.Tensor] = {}
    for batch in progress(DataLoader(train_set, batch_size=batch_size), True, "depth priors"):
        for i, location in enumerate(batch[META]["location"]):
            valid = batch[VALID][i].double()
            sums[location] = sums.get(location, 0) + batch[DEPTH][i].double() * valid
            counts[location] = counts.get(location, 0) + valid
    total_sum, total_count = sum(sums.values()), sum(counts.values())
    fallback = total_sum.sum() / total_count.sum()

    def mean_map(depth_sum: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        return torch.where(count > 0, depth_sum / count.clamp(min=1), fallback).float()

    return mean_map(total_sum, total_count), {k: mean_map(sums[k], counts[k]) for k in sums}


def evaluate_prior(test_set: Dataset, prior: Callable[[str], torch.Tensor],
                   batch_size: int) -> Tuple[Dict[str, Dict[str, Optional[float]]], int]:
    """Score a per-location constant prediction on the test split under every protocol.

    Args:
        test_set: the test split.
        prior: location name → (1, H, W) depth map in metres.
        batch_size: samples per batch.

    Returns:
        ``(protocol name → metrics, images scored under the official protocol)``.
    """
    metrics = MultiProtocolMetrics(tuple(PROTOCOLS))
    for batch in DataLoader(test_set, batch_size=batch_size):
        prediction = torch.stack([prior(location) for location in batch[META]["location"]])
        metrics.update(prediction, batch[DEPTH])
    results = metrics.compute_all()
    return results, int(results[OFFICIAL]["n_images"])


def reference_rows(train_set: Dataset, test_set: Dataset, batch_size: int) -> List[Row]:
    """The two depth-prior rows, fitted on ``train_set`` and scored on ``test_set``."""
    overall, by_location = depth_priors(train_set, batch_size)
    priors = {"mean_depth_map": lambda location: overall,
              "location_mean_depth_map": lambda location: by_location.get(location, overall)}
    rows = []
    for name, prior in priors.items():
        results, n_images = evaluate_prior(test_set, prior, batch_size)
        rows.append({"experiment": name, "label": REFERENCES[name], "seed": "",
                     **metric_cells(results), "n_images": n_images})
    return rows


# --------------------------------------------------------------------------------------------
# Summary and goal checks


def summarise(rows: List[Row], order: Sequence[str]) -> List[Row]:
    """Per experiment, in ``order``: label, seed count, scored checkpoint, mean and sample std
    (``None`` with one seed) of every metric column and of ``train_seconds``, and ``params``."""
    summary = []
    for name in order:
        runs = [row for row in rows if row["experiment"] == name]
        if not runs:
            continue
        entry: Row = {"experiment": name, "label": runs[0]["label"], "n": len(runs),
                      "scored": runs[0].get("scored", ""), "params": runs[0].get("params")}
        for column in [*METRIC_COLUMNS, "train_seconds"]:
            values = [row[column] for row in runs if row.get(column) is not None]
            entry[column] = statistics.fmean(values) if values else None
            entry[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else None
        summary.append(entry)
    return summary


def _verdict(met: bool) -> str:
    return "met" if met else "not met"


def quick_goal_lines(by_name: Dict[str, Row]) -> List[str]:
    """The quick preset's check: the best audio row's RMSE below the official U-Net's."""
    official = by_name.get(OFFICIAL_UNET)
    audio = [e for name, e in by_name.items() if is_audio_row(name)]
    if official is None or not audio:
        return []
    best = min(audio, key=lambda e: e["rmse"])
    beats = best["rmse"] < official["rmse"]
    return [f"- Best audio row beats the official U-Net row of the same run: "
            f"{'yes' if beats else 'no'} ({best['rmse']:.3f} vs {official['rmse']:.3f} m test "
            f"RMSE; best audio row: {best['label']})."]


def standard_goal_lines(by_name: Dict[str, Row]) -> List[str]:
    """The standard table's goals (RMSE ratios and train time vs the official U-Net, and a KD
    gain larger than the seed spread), each with its numbers and met / not met."""
    official, audio = by_name.get(OFFICIAL_UNET), by_name.get(AUDIO_ONLY)
    kd = [e for name, e in by_name.items() if is_kd_row(name)]
    best_kd = min(kd, key=lambda e: e["rmse"]) if kd else None
    lines = []
    if official and audio:
        ratio = audio["rmse"] / official["rmse"]
        lines.append(f"- Audio-only RMSE <= {AUDIO_ONLY_GOAL:.2f} x the official U-Net's: "
                     f"{_verdict(ratio <= AUDIO_ONLY_GOAL)} ({audio['rmse']:.3f} vs "
                     f"{official['rmse']:.3f} m, ratio {ratio:.3f}).")
        time_ratio = audio["train_seconds"] / official["train_seconds"]
        lines.append(f"- Audio-only training time <= {TRAIN_TIME_GOAL} x the official U-Net's: "
                     f"{_verdict(time_ratio <= TRAIN_TIME_GOAL)} ({audio['train_seconds']:.0f} "
                     f"vs {official['train_seconds']:.0f} s, ratio {time_ratio:.2f}).")
    if official and best_kd:
        ratio = best_kd["rmse"] / official["rmse"]
        lines.append(f"- Best KD RMSE <= {BEST_KD_GOAL:.2f} x the official U-Net's: "
                     f"{_verdict(ratio <= BEST_KD_GOAL)} ({best_kd['rmse']:.3f} vs "
                     f"{official['rmse']:.3f} m, ratio {ratio:.3f}; best KD: {best_kd['label']}).")
    if audio and best_kd:
        gain = audio["rmse"] - best_kd["rmse"]
        stds = [audio["rmse_std"], best_kd["rmse_std"]]
        if None in stds:
            lines.append(f"- KD gain larger than {SEED_SPREAD_GOAL:g} x the seed spread: not "
                         f"measurable with one seed (gain {gain:.3f} m).")
        else:
            bar = SEED_SPREAD_GOAL * max(stds)
            lines.append(f"- KD gain larger than {SEED_SPREAD_GOAL:g} x the larger seed std: "
                         f"{_verdict(gain > bar)} (gain {audio['rmse']:.3f} - "
                         f"{best_kd['rmse']:.3f} = {gain:.3f} m vs {SEED_SPREAD_GOAL:g} x "
                         f"{max(stds):.3f} = {bar:.3f} m, {audio['n']} seeds).")
    return lines


def goal_lines(summary: List[Row], goals: str) -> List[str]:
    """The preset's goal checks (``quick`` or ``standard``) plus how many audio rows beat the
    per-location mean depth map."""
    by_name = {entry["experiment"]: entry for entry in summary}
    lines = quick_goal_lines(by_name) if goals == "quick" else standard_goal_lines(by_name)
    prior = by_name.get("location_mean_depth_map")
    audio = [e for name, e in by_name.items() if is_audio_row(name)]
    if prior and audio:
        below = [e for e in audio if e["rmse"] < prior["rmse"]]
        lines.append(f"- Audio rows below the per-location mean depth map ({prior['rmse']:.3f} m):"
                     f" {len(below)} of {len(audio)}.")
    return lines


# --------------------------------------------------------------------------------------------
# Writing: CSV, markdown, chart, pictures


def write_csv(path: Path, rows: List[Row]) -> None:
    """``results.csv``: one line per run or reference row (rmse, mae in metres; every metric
    under each protocol, see :func:`metric_column`)."""
    columns = ["experiment", "label", "seed", "scored", *METRIC_COLUMNS, "n_images", "params",
               "train_seconds", "run_dir"]
    lines = [{k: ("" if row.get(k) is None else row[k]) for k in columns} for row in rows]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(lines)

    atomic_write(path, write)


def _cell(entry: Row, column: str, digits: int = 3) -> str:
    value, std = entry.get(column), entry.get(f"{column}_std")
    if value is None:
        return "–"
    return f"{value:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


# results.md columns: every official metric, then the headline metrics under the other protocols.
TABLE_COLUMNS = [metric_column(m, OFFICIAL) for m in ("rmse", "abs_rel", "delta1", "mae", "log10")]
TABLE_COLUMNS += [metric_column(m, p) for p in PROTOCOLS if p != OFFICIAL
                  for m in ("rmse", "abs_rel", "delta1")]


def _column_title(column: str) -> str:
    metric, _, protocol = column.partition("@")
    return metric if not protocol else f"{metric} ({PROTOCOLS[protocol].describe()})"


def _format_value(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def recorded_settings(run_dir: Path) -> Dict[str, Any]:
    """The settings a run recorded in its ``config.json``: the flags of its identity (so no
    operational flag) except the seed and the model group's flags, which the model's own
    constructor arguments replace (a flag the model ignores is not shown).

    Returns:
        flag → value, plus ``model`` → ``name(arg=value, ...)``; empty without a config.json.
    """
    config = read_json(run_dir / CONFIG_FILE) or {}
    groups = (config.get("identity") or {}).get("settings", {})
    settings = {flag: value for group, flags in groups.items() if group != "model"
                for flag, value in flags.items() if flag not in ("seed", "kind")}
    model = config.get("model")
    if model:
        arguments = ", ".join(f"{k}={_format_value(v)}" for k, v in sorted(model["config"].items()))
        settings["model"] = f"{model['name']}({arguments})"
    return settings


def run_settings(run_dirs: Dict[str, Path]) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]]:
    """:func:`recorded_settings` of each run, split into the settings every run shares and those
    of each run.

    Args:
        run_dirs: experiment name → run folder.

    Returns:
        ``(common, own)``: flag → value, and experiment → {flag → value} for the flags not in
        ``common``.
    """
    recorded = {name: recorded_settings(run_dir) for name, run_dir in run_dirs.items()}
    shared = set.intersection(*map(set, recorded.values())) if recorded else set()
    common = {k: next(iter(recorded.values()))[k] for k in sorted(shared)
              if len({json.dumps(values[k], sort_keys=True) for values in recorded.values()}) == 1}
    own = {name: {k: v for k, v in sorted(values.items()) if k not in common}
           for name, values in recorded.items()}
    return common, own


def write_markdown(path: Path, summary: List[Row], preset: Preset,
                   settings: Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]],
                   commands: Dict[str, str], command: str, minutes: float,
                   jobs: int = 1) -> None:
    """``results.md``: how it was made, the protocols, the table, the goal checks, the settings
    read from the runs and the seed-0 commands (``jobs``: runs trained at once)."""
    protocols = "; ".join(f"`{name}`: {p.describe()}" for name, p in PROTOCOLS.items())
    labels = {e["experiment"]: e["label"] for e in summary}
    common, own = settings
    trained = [e for e in summary if e["experiment"] not in REFERENCES]
    lines = [
        f"# Experiment table: {preset.description}", "",
        f"Made by `{command}` ({minutes:.1f} min for this invocation; runs reused from earlier "
        "invocations are not counted)."
        + (f" Runs trained {jobs} at once: their training times include that contention."
           if jobs > 1 else ""), "",
        f"Test split; mean ± sample std over {preset.seeds} seed(s) (no ± with one seed). Each "
        "trained run is scored with `evaluate.py` at the checkpoint its row names: `best` = "
        "lowest validation RMSE, `last` = final epoch (the official recipe has no model "
        "selection). The reference rows predict the training split's mean depth map (overall / "
        "of the sample's location), scored by the same metric code. Every row is scored on the "
        f"ground truth of the `{TABLE_GROUND_TRUTH}` recipe (depth resized by nearest neighbour, "
        "+inf invalid), whatever recipe its model reads.", "",
        f"Metric protocols (valid ground-truth pixels): {protocols}. Per image, then mean over "
        "images; metres; no median scaling; predictions floored at 1 mm inside log10 and delta "
        "only. rmse, mae in metres; abs_rel, log10 unitless; delta1 = share of pixels with "
        "max(gt/pred, pred/gt) < 1.25.", "",
        "| experiment | seeds | scored | " + " | ".join(map(_column_title, TABLE_COLUMNS))
        + " | params | train s |",
        "|" + "---|" * (5 + len(TABLE_COLUMNS)),
    ]
    for entry in summary:
        reference = entry["experiment"] in REFERENCES
        params = entry.get("params")
        lines.append(
            f"| {entry['label']} | {'–' if reference else entry['n']} | "
            f"{'–' if reference else entry['scored']} | "
            + " | ".join(_cell(entry, c) for c in TABLE_COLUMNS)
            + f" | {'–' if params is None else f'{params:,}'} | "
            + ("–" if reference else _cell(entry, "train_seconds", 0)) + " |")
    lines += ["", "## Goals", "", *goal_lines(summary, preset.goals), "",
              "## Settings read from the runs (seed 0's config.json)", "",
              "Every run: " + ", ".join(f"{k}={_format_value(v)}" for k, v in common.items()),
              ""]
    lines += [f"- {labels.get(name, name)}: "
              + ", ".join(f"{k}={_format_value(v)}" for k, v in values.items())
              for name, values in own.items() if name in labels]
    lines += ["", "## Commands (seed 0)", ""]
    lines += [f"- {labels.get(e['experiment'])}: `{commands[e['experiment']]}`" for e in trained
              if e["experiment"] in commands]
    lines += ["", "![test RMSE](rmse.png)", "", "![test samples](pictures.png)", ""]
    text = "\n".join(lines)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def save_bar_chart(path: Path, summary: List[Row]) -> None:
    """Horizontal bars of test RMSE (official protocol, metres) with ± std over seeds; the
    teacher orange, the official U-Net green, references grey."""
    colour = {TEACHER: "tab:orange", OFFICIAL_UNET: "tab:green"}
    figure = Figure(figsize=(8, 0.5 * len(summary) + 1.2))
    ax = figure.subplots()
    positions = np.arange(len(summary))[::-1]
    colours = ["tab:grey" if e["experiment"] in REFERENCES else
               colour.get(e["experiment"], "tab:blue") for e in summary]
    errors = [e["rmse_std"] or 0.0 for e in summary]
    ax.barh(positions, [e["rmse"] for e in summary], xerr=errors, color=colours, capsize=3)
    ax.set_yticks(positions, [e["label"] for e in summary])
    ax.set_xlabel("test RMSE (m, gt > 0), lower is better")
    for y, entry in zip(positions, summary):
        ax.text(entry["rmse"], y, f" {entry['rmse']:.3f}", va="center")
    save_figure(figure, path)


def save_picture_grid(path: Path, columns: Dict[str, Path], count: int,
                      device: torch.device) -> None:
    """Rows of test samples: RGB | ground truth | one depth map per checkpoint (with its RMSE).

    Each model reads the test split as its own run did (its saved data arguments: the official
    U-Net its own recipe); the RGB comes from the first checkpoint's run, and the ground truth
    too, made by the :data:`TABLE_GROUND_TRUTH` recipe as in the table.

    Args:
        path: PNG to write.
        columns: column title → checkpoint file.
        count: number of samples, spread evenly over the split (so over its locations).
        device: where the models run.
    """
    def test_batch(checkpoint: Checkpoint, use_rgb: bool,
                   ground_truth: Optional[str] = None) -> Dict[str, Any]:
        args = argparse.Namespace(**checkpoint["args"])
        test_set = build_dataset(args, resolve_data_root(args, DistContext()), "test", use_rgb,
                                 ground_truth)
        picks = spread_indices(len(test_set), count)
        return default_collate([test_set[int(i)] for i in picks])

    checkpoints = {title: load_checkpoint(p) for title, p in columns.items()}
    shown = test_batch(next(iter(checkpoints.values())), use_rgb=True,
                       ground_truth=TABLE_GROUND_TRUTH)
    predictions: Dict[str, torch.Tensor] = {}
    for title, checkpoint in checkpoints.items():
        uses_rgb = checkpoint["model_name"] == "rgb_depth"
        batch = test_batch(checkpoint, uses_rgb)
        model = load_model(checkpoint, device, path=columns[title])
        with torch.no_grad():
            predictions[title] = model(batch[RGB if uses_rgb else AUDIO].to(device)).cpu()
    gt = shown[DEPTH]
    cmap = colormaps[DEPTH_CMAP].with_extremes(bad=HOLE_COLOUR)
    n_rows, n_columns = len(gt), 2 + len(columns)
    figure = Figure(figsize=(2.4 * n_columns, 2.4 * n_rows + 0.4))
    axes = figure.subplots(n_rows, n_columns, squeeze=False)
    for row in range(n_rows):
        truth = gt[row, 0].numpy()
        norm = Normalize(0.0, float(truth.max()) or 1.0)  # per row: near rooms keep their contrast
        axes[row, 0].imshow(shown[RGB][row].permute(1, 2, 0).numpy().clip(0, 1))
        axes[row, 1].imshow(masked_depth(truth), cmap=cmap, norm=norm)
        titles = ["RGB", "ground truth (white: hole)"]
        for column, (title, depth) in enumerate(predictions.items(), start=2):
            axes[row, column].imshow(depth[row, 0].numpy(), cmap=cmap, norm=norm)
            scores, _ = image_metrics(depth[row:row + 1], gt[row:row + 1])
            titles.append(f"{title}\nRMSE {scores[0, METRIC_NAMES.index('rmse')]:.2f} m")
        for ax, title in zip(axes[row], titles):
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    figure.suptitle("test samples; depth colours per row, from 0 to its farthest ground truth")
    save_figure(figure, path)


# --------------------------------------------------------------------------------------------


def shown_command(script: str, argv: Sequence[str]) -> str:
    """The command line of a repository script as a user types it from the repository root:
    paths inside the repository (config files, the default world) shown relative to it."""
    root = f"{REPO_ROOT}{os.sep}"
    return shlex.join(["python", script,
                       *(arg[len(root):] if arg.startswith(root) else arg for arg in argv)])


def run_script(script: str, argv: Sequence[str], log: Optional[Path] = None) -> None:
    """Run one of the repository's scripts in a child process (this interpreter, this
    environment), after printing its command line.

    Args:
        script: file name in the repository root.
        argv: its arguments.
        log: file that takes the script's output (stdout and stderr); ``None``: this terminal.

    Raises:
        TrainingError: it exited with a non-zero status (its own message is printed above, or
            is the log's last line, quoted).
    """
    shown = shown_command(script, argv)
    command = [sys.executable, str(REPO_ROOT / script), *argv]
    if log is None:
        print(f"$ {shown}", flush=True)
        completed = subprocess.run(command, check=False)
        where = "its message is above"
    else:
        print(f"$ {shown} > {log}", flush=True)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as output:
            completed = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT,
                                       check=False)
        lines = log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()
        where = f"{log}: {lines[-1] if lines else 'empty'}"
    if completed.returncode != 0:
        raise TrainingError(f"{script} exited with status {completed.returncode} ({where}); "
                            f"command: {shown}")


def world_root(preset: Preset, data_root: Optional[str]) -> str:
    """The explicit ``--data_root`` of every run: ``data_root`` for real data; for synthetic, the
    folder holding the preset's world (default ``.cache/synthetic/<world>/``), generated now
    when absent."""
    parser = cli.build_parser("teacher", None)
    argv = ["--dataset", preset.dataset,
            "--synthetic_locations", str(preset.synthetic_locations),
            "--synthetic_samples", str(preset.synthetic_samples),
            "--synthetic_size", str(preset.synthetic_size),
            "--synthetic_seed", str(preset.synthetic_seed)]
    args = parser.parse_args(argv + (["--data_root", data_root] if data_root else []))
    resolve_data_root(args, DistContext())  # sets args.data_root for synthetic
    return str(Path(args.data_root).resolve())


def output_folder(args: argparse.Namespace) -> Path:
    """``--out``, by default ``results/<preset>``."""
    return Path(args.out or Path("results") / args.preset)


def make_setup(args: argparse.Namespace, launch: Launcher) -> Setup:
    """The :class:`Setup` of this invocation (generates the synthetic world when absent)."""
    preset = resolve_preset(args)
    out = output_folder(args)
    return Setup(preset=preset, config_dir=REPO_ROOT / preset.config_dir,
                 data_root=world_root(preset, args.data_root),
                 cache_dir=Path(args.cache_dir) if args.cache_dir else out / "cache",
                 device=args.device, runs_dir=out / "runs", on_mismatch=args.on_mismatch,
                 launch=launch, jobs=args.jobs, logs_dir=out / "logs",
                 threads=threads_per_job(args.jobs, args.device))


def train_and_score(specs: Sequence[RunSpec], setup: Setup) -> List[Row]:
    """Train (or reuse) and score every run, ``setup.jobs`` at a time.

    With several jobs, teachers start first and a distillation run starts its training only once
    its seed's teacher is done; a failed run does not stop the others.

    Returns:
        One row per spec, in the order of ``specs``.

    Raises:
        TrainingError, UsageError, DataError: the first failure, in the order of ``specs``, once
            every run has finished (a distillation run whose teacher failed fails with it).
    """
    def trained_and_scored(spec: RunSpec) -> Row:
        train_run(spec, setup)
        return score_run(spec, setup)

    if setup.jobs == 1:
        return [trained_and_scored(spec) for spec in specs]
    teachers: Dict[int, Future] = {}

    def after_teacher(spec: RunSpec) -> Row:
        teacher = teachers.get(spec.seed)
        if teacher is not None:
            teacher.result()  # its failure is this run's
        return trained_and_scored(spec)

    # Teachers first, distillation last: a run that waits on its teacher holds a worker, and the
    # teachers it waits on were all started before it.
    order = sorted(specs, key=lambda spec: (spec.experiment.kind == "kd",
                                            spec.experiment.kind != "teacher"))
    with ThreadPoolExecutor(max_workers=setup.jobs) as pool:
        futures: Dict[int, Future] = {}
        for spec in order:
            futures[id(spec)] = pool.submit(after_teacher if spec.experiment.kind == "kd"
                                            else trained_and_scored, spec)
            if spec.experiment.kind == "teacher":
                teachers[spec.seed] = futures[id(spec)]
    failures = [futures[id(spec)].exception() for spec in specs]
    first_failure = next((error for error in failures if error is not None), None)
    if first_failure is not None:
        raise first_failure
    return [futures[id(spec)].result() for spec in specs]


def run_table(args: argparse.Namespace, launch: Launcher, command: str) -> Path:
    """Train (or reuse) and score every run of the preset, then write the table and pictures.

    Args:
        args: parsed :func:`build_parser` flags.
        launch: runs a script (:func:`run_script`).
        command: the invocation, quoted in results.md.

    Returns:
        The output folder.
    """
    started = time.time()
    setup, out = make_setup(args, launch), output_folder(args)
    preset = setup.preset
    specs = [run_spec(e, seed, setup) for seed in range(preset.seeds) for e in preset.experiments]
    for spec in specs:  # every config file and flag checked before hours of training
        parse_run_args(spec)

    rows = train_and_score(specs, setup)
    first = {spec.experiment.name: spec for spec in specs if spec.seed == 0}
    reference_spec = first.get(AUDIO_ONLY, specs[0])
    _, data_args = parse_run_args(reference_spec)
    root = resolve_data_root(data_args, DistContext())
    batch = 4 * preset.batch_size
    rows += reference_rows(*(build_dataset(data_args, root, split, use_rgb=False,
                                           ground_truth=TABLE_GROUND_TRUTH)
                             for split in ("train", "test")), batch)

    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", rows)
    summary = summarise(rows, [e.name for e in preset.experiments] + list(REFERENCES))
    settings = run_settings({name: spec.run_dir for name, spec in first.items()})
    commands = {name: shown_command(spec.script, spec.argv) for name, spec in first.items()}
    write_markdown(out / "results.md", summary, preset, settings, commands, command,
                   (time.time() - started) / 60, setup.jobs)
    save_bar_chart(out / "rmse.png", summary)
    pictures = {"teacher (RGB)": TEACHER, "official U-Net": OFFICIAL_UNET,
                "audio only": AUDIO_ONLY}
    kd = [e for e in summary if is_kd_row(e["experiment"])]
    if kd:
        best_kd = min(kd, key=lambda e: e["rmse"])["experiment"]
        pictures[f"best KD: {best_kd}"] = best_kd
    save_picture_grid(out / "pictures.png",
                      {title: first[name].scored_checkpoint for title, name in pictures.items()
                       if name in first},
                      args.num_pictures, resolve_device(args.device))
    return out


def main(argv: Optional[Sequence[str]] = None, description: Optional[str] = None) -> None:
    """``run_experiments.py``: parse ``argv``, run the table, print it.

    Args:
        argv: arguments (``None``: ``sys.argv[1:]``).
        description: the script's docstring, for ``--help``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(description).parse_args(argv)
    started = time.time()
    with cli.user_errors():
        out = run_table(args, run_script, shlex.join(["python", "run_experiments.py", *argv]))
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.csv, results.md, rmse.png, pictures.png "
          f"in {(time.time() - started) / 60:.1f} min")
