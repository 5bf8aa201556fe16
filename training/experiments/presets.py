"""The table's rows and presets: which runs a table trains and the sizes they share.

A row (:class:`Experiment`) is one training script with a config file and its own flags; a
preset (:class:`Preset`) lists rows and adds the sizes every run shares. :func:`resolve_preset`
applies the command line's overrides.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from common.argtypes import non_negative_float, non_negative_int, positive_float, positive_int
from common.errors import UsageError
from datasets.registry import DEFAULT_WORLD, WORLD_OPTIONS
from training.cli import WORLD_OPTION_HELP, image_size, unit_fraction

# Which checkpoint of a run the table scores.
BEST, LAST = "best", "last"
# What a row is in the table, whatever script trains it: the official U-Net is trained by the
# student's script but is the reference the students are measured against, not one of them; a
# control is trained by the distillation script but only measures what a KD row's gain owes to
# the teacher, and is never a candidate for "best".
ROLES = ("teacher", "baseline", "student", "kd", "control")
AUDIO_ROLES = ("student", "kd")
# Worlds (--synthetic_seed) by purpose, fixed before any run on the report worlds: every
# screening and choice is made on the development worlds' validation RMSE; headline tables are
# measured on the report worlds, which no decision has seen.
DEVELOPMENT_WORLDS, REPORT_WORLDS = (0, 1), (2, 3)
# A teacher-rich teacher learns from RGB-depth pairs of other rooms: the companion world of a
# preset's world (its seed plus this offset, never a development or report world).
COMPANION_WORLD_OFFSET = 1000


TEACHER, OFFICIAL_UNET, AUDIO_ONLY = "rgb_teacher", "official_unet", "audio_only"


@dataclass(frozen=True)
class Experiment:
    """One row of the table.

    Attributes:
        name: row key and run folder name.
        label: row title.
        kind: ``teacher``, ``student`` or ``kd`` (which training script; ``cli.KIND_SCRIPTS``).
        role: what the row is (:data:`ROLES`): the RGB ``teacher``, the ``baseline`` our audio
            models are measured against, our audio-only ``student`` or a distilled one (``kd``).
        config: config file stem in the preset's ``config_dir``.
        flags: further flags of this row (after the config file and the preset's sizes).
        feature_kd: gets ``--lambda_feat <preset.feature_weight>``.
        scored: which checkpoint the table scores, ``best`` (lowest validation RMSE) or ``last``.
        controls: rows that train the same student for the same steps with the same loss
            structure but without the part of the teacher's information this row's gain is
            credited to (its goal line compares them).
        teacher: for a distillation row, the teacher row it distils from (of the same seed).
        labelled_fraction: this row's ``--labelled_fraction`` (``None``: the preset's).
        companion_world: trained on the preset's companion world (its synthetic seed plus
            :data:`COMPANION_WORLD_OFFSET`) instead of the preset's own: the teacher-rich
            teacher, which has seen other rooms only.
    """

    name: str
    label: str
    kind: str
    role: str
    config: str
    flags: Tuple[str, ...] = ()
    feature_kd: bool = False
    scored: str = BEST
    controls: Tuple[str, ...] = ()
    teacher: str = TEACHER
    labelled_fraction: Optional[float] = None
    companion_world: bool = False

    def fraction_in(self, preset: "Preset") -> float:
        """The share of training samples this row's runs keep labelled in ``preset``: its own
        :attr:`labelled_fraction`, else the preset's."""
        own = self.labelled_fraction
        return preset.labelled_fraction if own is None else own

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"{self.name}: role must be one of {ROLES}, got {self.role!r}")


OFFICIAL_TUNED, STUDENT_OFFICIAL = "official_unet_tuned", "student_official_recipe"
TEACHER_ROW = Experiment(TEACHER, "RGB teacher (upper bound)", "teacher", "teacher", "teacher")
# Our contract scores the official recipe at its last epoch (the official code validates every
# 2 epochs and tests an epoch it picks; we keep no such choice for the recipe that has none).
OFFICIAL_ROW = Experiment(OFFICIAL_UNET, "official U-Net, official recipe (last epoch)",
                          "student", "baseline", "official_unet", ("--model", "official_unet"),
                          scored=LAST)
# The architecture-by-recipe table: each architecture with the other's recipe.
OFFICIAL_TUNED_ROW = Experiment(OFFICIAL_TUNED, "official U-Net, our recipe", "student",
                                "baseline", "official_unet_tuned", ("--model", "official_unet"))
AUDIO_ROW = Experiment(AUDIO_ONLY, "audio only (our student, our recipe)", "student", "student",
                       "student")
STUDENT_OFFICIAL_ROW = Experiment(STUDENT_OFFICIAL, "our student, official recipe (last epoch)",
                                  "student", "student", "student_official_recipe", scored=LAST)
RECIPE_ROWS = (OFFICIAL_ROW, OFFICIAL_TUNED_ROW, AUDIO_ROW, STUDENT_OFFICIAL_ROW)
KD_ROW = Experiment("kd", "audio + depth KD (kd.yaml; no measured gain under dense labels)",
                    "kd", "kd", "kd", controls=(AUDIO_ONLY,))
# Variants of kd.yaml; its own row is the depth-only one, so that variant is not trained twice.
KD_VARIANTS = (
    Experiment("kd_depth_features", "audio + KD depth + features d1..d4", "kd", "kd", "kd",
               ("--lambda_depth", "1", "--feature_levels", "d1,d2,d3,d4"), feature_kd=True),
    Experiment("kd_confidence", "audio + KD confidence-weighted depth + d1..d4", "kd", "kd", "kd",
               ("--lambda_depth", "1", "--feature_levels", "d1,d2,d3,d4",
                "--kd_schedule", "confidence"), feature_kd=True),
    Experiment("kd_encoder_ablation", "ablation: audio + KD depth + features x1..x5", "kd", "kd",
               "kd", ("--lambda_depth", "1", "--feature_levels", "x1,x2,x3,x4,x5"),
               feature_kd=True),
)
# The gated distillation and its controls (distill.py's module docstring: on a valid pixel the
# gated L1 gradient is the ground truth's, so the teacher's depth counts only in the holes).
GATED_ROWS = (
    Experiment("kd_gated", "audio + KD gated depth + features x1..x5", "kd", "kd", "kd",
               ("--kd_schedule", "gated", "--feature_levels", "x1,x2,x3,x4,x5"),
               feature_kd=True, controls=("kd_gated_depth", "kd_gated_random_features")),
    Experiment("kd_gated_depth", "audio + KD gated depth", "kd", "kd", "kd",
               ("--kd_schedule", "gated"), controls=("kd_hard_pixels",)),
    Experiment("kd_holes", "audio + KD teacher depth in the ground truth's holes only", "kd",
               "kd", "kd", ("--kd_schedule", "holes"), controls=(AUDIO_ONLY,)),
    Experiment("kd_hard_pixels", "control: ground-truth L1 on the gate's share of hardest "
               "pixels (no teacher depth)", "kd", "control", "kd",
               ("--kd_schedule", "hard_pixels")),
    Experiment("kd_gated_random_features", "control: gated depth + x1..x5 features of an "
               "untrained teacher", "kd", "control", "kd",
               ("--kd_schedule", "gated", "--feature_levels", "x1,x2,x3,x4,x5",
                "--feature_teacher", "random"), feature_kd=True),
)
# The recipe-matched U-Net's screening (development worlds, validation RMSE): the levers the
# student had screened that apply to it.
UNET_SCREEN_ROWS = (
    Experiment("official_unet_tuned_lr3e-4", "official U-Net, our recipe, lr 3e-4", "student",
               "baseline", "official_unet_tuned", ("--learning_rate", "0.0003")),
    Experiment("official_unet_tuned_ngf16", "official U-Net, our recipe, ngf 16", "student",
               "baseline", "official_unet_tuned", ("--base_channels", "16")),
    Experiment("official_unet_tuned_no_ema", "official U-Net, our recipe, no EMA", "student",
               "baseline", "official_unet_tuned", ("--ema_decay", "0")),
    Experiment("official_unet_tuned_no_mirror", "official U-Net, our recipe, no mirroring",
               "student", "baseline", "official_unet_tuned", ("--no-mirror_augment",)),
    Experiment("official_unet_tuned_log1p", "official U-Net, our recipe, default preprocessing "
               "(log1p magnitude, antialiasing)", "student", "baseline", "official_unet_tuned",
               ("--recipe", "default")),
    Experiment("official_unet_tuned_no_head_init", "official U-Net, our recipe, no head init",
               "student", "baseline", "official_unet_tuned", ("--head_init_depth", "none")),
    Experiment("official_unet_tuned_constant_lr", "official U-Net, our recipe, constant lr",
               "student", "baseline", "official_unet_tuned",
               ("--scheduler", "none", "--warmup_epochs", "0")),
)
# Label-scarce distillation: each label fraction F with an audio-only student on the labelled
# samples, a KD student from the strict teacher (trained on the same labelled samples) and one
# from the teacher-rich teacher (the companion world's RGB-depth pairs); F = 1 is the fully
# labelled pair of rows, F = 0 (no depth label on any echo) has only the teacher-rich KD.
LABEL_FRACTIONS = (0.05, 0.1, 0.25)
RICH_TEACHER = "rgb_teacher_rich"


def _fraction_rows(fraction: float) -> Tuple[Experiment, ...]:
    tag = f"f{fraction:g}"
    strict = Experiment(f"rgb_teacher_{tag}", f"RGB teacher, {fraction:.0%} labelled", "teacher",
                        "teacher", "teacher", labelled_fraction=fraction)
    return (strict,
            Experiment(f"audio_only_{tag}", f"audio only, {fraction:.0%} labelled", "student",
                       "student", "student", labelled_fraction=fraction),
            Experiment(f"kd_strict_{tag}", f"KD from the strict teacher, {fraction:.0%} "
                       "labelled", "kd", "kd", "kd", teacher=strict.name,
                       labelled_fraction=fraction, controls=(f"audio_only_{tag}",)),
            Experiment(f"kd_rich_{tag}", f"KD from the teacher-rich teacher, {fraction:.0%} "
                       "labelled", "kd", "kd", "kd", teacher=RICH_TEACHER,
                       labelled_fraction=fraction, controls=(f"audio_only_{tag}",)))


LABELS_ROWS = (
    TEACHER_ROW,
    # Scored like every row on the test split of the world it trained on: the companion world.
    Experiment(RICH_TEACHER, "RGB teacher of other rooms (teacher-rich; scored on its own "
               "world's test split)", "teacher", "teacher", "teacher", companion_world=True),
    *(row for fraction in LABEL_FRACTIONS for row in _fraction_rows(fraction)),
    AUDIO_ROW,
    Experiment("kd_strict_f1", "KD from the teacher, 100% labelled", "kd", "kd", "kd",
               controls=(AUDIO_ONLY,)),
    Experiment("kd_rich_f1", "KD from the teacher-rich teacher, 100% labelled", "kd", "kd",
               "kd", teacher=RICH_TEACHER, controls=(AUDIO_ONLY,)),
    # No label at all: nothing to start the head at the training median from.
    Experiment("kd_rich_f0", "KD from the teacher-rich teacher, no depth label", "kd", "kd",
               "kd", ("--head_init_depth", "none"), teacher=RICH_TEACHER, labelled_fraction=0.0),
)
# The goal rows of the labels table at the benchmark size: F = 0.1 (both teachers and its
# audio-only control), F = 0 and the fully labelled audio-only student the goals compare with.
LABELS_BENCHMARK_ROWS = tuple(e for e in LABELS_ROWS if e.name in (
    RICH_TEACHER, "rgb_teacher_f0.1", "audio_only_f0.1", "kd_strict_f0.1", "kd_rich_f0.1",
    AUDIO_ONLY, "kd_rich_f0"))
# The same lever for our student (its configs take the official preprocessing since the
# development worlds measured it; this row keeps the default recipe's beside it).
STUDENT_SCREEN_ROWS = (
    Experiment("audio_only_log1p", "audio only, our recipe, default preprocessing (log1p "
               "magnitude, antialiasing)", "student", "student", "student",
               ("--recipe", "default")),
)
QUICK_ROWS = (TEACHER_ROW, OFFICIAL_ROW, AUDIO_ROW, KD_ROW)
STANDARD_ROWS = (TEACHER_ROW, *RECIPE_ROWS, KD_ROW, *KD_VARIANTS, *GATED_ROWS)
DEVELOPMENT_ROWS = (TEACHER_ROW, *RECIPE_ROWS, *UNET_SCREEN_ROWS, *STUDENT_SCREEN_ROWS, KD_ROW,
                    *GATED_ROWS)
# The claims' rows without the screening: the architecture-by-recipe cells, depth KD, the gated
# distillation and its controls.
REPORT_ROWS = (TEACHER_ROW, *RECIPE_ROWS, KD_ROW, *GATED_ROWS)
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
        goals: which goal checks results.md prints: ``quick``, ``standard`` (also for
            ``development``) or ``labels``.
        seeds: default number of seeds (0..seeds-1).
        image_size, batch_size: of every run.
        teacher_epochs, student_epochs: ``--nb_epochs`` of the teacher and of every audio model.
        max_depth: metres (``None``: the dataset's default).
        synthetic_locations, synthetic_samples, synthetic_size, synthetic_seed: the world.
        synthetic_acoustics, synthetic_holes, synthetic_rooms: the world's realism
            (``datasets.registry.WORLD_OPTIONS``; the runs get a flag only where it is not the
            training scripts' default, ``datasets.registry.DEFAULT_WORLD``).
        feature_weight: ``--lambda_feat`` of the feature-KD rows.
        labelled_fraction: ``--labelled_fraction`` of every run (1: every training sample
            labelled; below 1 the teacher too learns from the labelled subset alone).
        dense_truth: also score every run against the world's complete depth (holes
            included; ``evaluate.py --truth dense``): what filling the sensor's holes is worth.
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
    synthetic_acoustics: str = DEFAULT_WORLD["acoustics"]
    synthetic_holes: str = DEFAULT_WORLD["holes"]
    synthetic_rooms: str = DEFAULT_WORLD["rooms"]
    feature_weight: float = 0.05
    labelled_fraction: float = 1.0
    dense_truth: bool = False
    flags: Tuple[str, ...] = ()

    def world_options(self) -> Dict[str, str]:
        """The world's realism: option → value (``datasets.registry.WORLD_OPTIONS``)."""
        return {name: getattr(self, f"synthetic_{name}") for name in WORLD_OPTIONS}

    def world_flags(self) -> Dict[str, str]:
        """The realism options where the world is not the training scripts' default world
        (``datasets.registry.DEFAULT_WORLD``): a run gets ``--synthetic_<option> <value>``."""
        return {name: value for name, value in self.world_options().items()
                if value != DEFAULT_WORLD[name]}

    def companion(self) -> "Preset":
        """This preset on its companion world (:data:`COMPANION_WORLD_OFFSET`), where the rows
        of :attr:`Experiment.companion_world` train."""
        return dataclasses.replace(
            self, synthetic_seed=self.synthetic_seed + COMPANION_WORLD_OFFSET)


# The preset fields of the classic world of earlier versions (every WORLD_OPTIONS' first value):
# the presets whose tables in RGB_DEPTH_README were measured on it stay on it, so their commands
# reproduce them, until those tables are measured again on the default (realistic) world.
CLASSIC_WORLD_FIELDS = {f"synthetic_{name}": values[0] for name, values in WORLD_OPTIONS.items()}

# Decisions: the quick preset's sizes, three seeds, every row a choice or a claim needs (the
# architecture-by-recipe cells, the U-Net's screening, the gated KD and its controls). Run it on
# the development worlds (--synthetic_seed 0 and 1) and decide on validation RMSE.
DEVELOPMENT = Preset(
    description="synthetic world at 64x64, decisions by validation RMSE (development worlds "
                "only)",
    dataset="synthetic", config_dir="configs/synthetic", experiments=DEVELOPMENT_ROWS,
    goals="standard", seeds=3, image_size=64, batch_size=8, teacher_epochs=10,
    student_epochs=8, max_depth=15.0, synthetic_size=64, **CLASSIC_WORLD_FIELDS,
    flags=("--num_workers", "0", "--num_val_images", "0"))


# Distillation where the teacher knows what the labels don't: the quick sizes, 3 seeds, every
# label fraction (training/labels.py). A run that reads only the labelled share trains
# 1 / F as many epochs, so every row takes the same optimiser steps.
LABELS = Preset(
    description="synthetic world at 64x64, label-scarce distillation",
    dataset="synthetic", config_dir="configs/synthetic", experiments=LABELS_ROWS,
    goals="labels", seeds=3, image_size=64, batch_size=8, teacher_epochs=10,
    student_epochs=8, max_depth=15.0, synthetic_size=64, dense_truth=True, **CLASSIC_WORLD_FIELDS,
    flags=("--num_workers", "0", "--num_val_images", "0"))


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
        student_epochs=20, max_depth=15.0, synthetic_size=128, **CLASSIC_WORLD_FIELDS,
        flags=("--num_workers", "0", "--num_val_images", "2")),
    "development": DEVELOPMENT,
    # The headline rows at the development preset's sizes, the largest the 2-core CPU allows for
    # two worlds x three seeds (about 40 minutes per world with --jobs 2): run it on the report
    # worlds (--synthetic_seed 2 and 3). The standard preset holds the same claims at the config
    # files' benchmark size, a GPU's work.
    "report": dataclasses.replace(
        DEVELOPMENT, description="synthetic world at 64x64, the headline rows (report worlds)",
        experiments=REPORT_ROWS),
    "labels": LABELS,
    # The labels table's goal rows at the config files' benchmark size (128x128, 20 epochs): a
    # GPU's work (21 runs per world, each ~20 min on the 2-core CPU).
    "labels_benchmark": dataclasses.replace(
        LABELS, description="synthetic world at 128x128, label-scarce distillation, the goal "
        "rows", experiments=LABELS_BENCHMARK_ROWS, image_size=128, teacher_epochs=20,
        student_epochs=20, synthetic_size=128),
    # Real BatVision V2 on a GPU, the official training length.
    "full": Preset(
        description="BatVision V2 (real recordings), 256x256, official training length",
        dataset="batvisionv2", config_dir="configs/batvisionv2", experiments=STANDARD_ROWS,
        goals="standard", seeds=3, image_size=256, batch_size=64, teacher_epochs=80,
        student_epochs=80, flags=("--num_workers", "8")),
}


def _one_of(values: Tuple[str, ...]) -> Callable[[str], str]:
    """argparse type accepting one of ``values`` (a size field's type, where choices cannot go)."""
    def parse(text: str) -> str:
        if text not in values:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(values)}, got {text!r}")
        return text
    return parse


# Preset fields the command line may override (each a flag of the same name): type, meaning.
SIZE_FIELDS: Dict[str, Tuple[Callable[[str], Any], str]] = {
    "image_size": (image_size, "side of every run's inputs and depth maps, pixels"),
    "batch_size": (positive_int, "batch size of every run"),
    "teacher_epochs": (positive_int, "epochs of the RGB teacher"),
    "student_epochs": (positive_int, "epochs of every audio model (official U-Net included)"),
    "max_depth": (positive_float, "depth range in metres (None: the dataset's)"),
    "synthetic_locations": (positive_int, "synthetic world: locations"),
    "synthetic_samples": (positive_int, "synthetic world: samples per location"),
    "synthetic_size": (positive_int, "synthetic world: rendered image side, pixels"),
    "synthetic_seed": (non_negative_int, "synthetic world: its seed"),
    **{f"synthetic_{name}": (_one_of(values), f"synthetic world: {WORLD_OPTION_HELP[name]}")
       for name, values in WORLD_OPTIONS.items()},
    "feature_weight": (non_negative_float, "--lambda_feat of the feature-KD rows"),
    "labelled_fraction": (unit_fraction, "share of each location's training samples that keep "
                                         "their depth (every run; training/labels.py)"),
}


EXPERIMENTS: Dict[str, Experiment] = {
    e.name: e for preset in PRESETS.values() for e in preset.experiments}


def is_audio_row(name: str) -> bool:
    """Whether a row is one of our audio students (not the teacher, the reference U-Net or a
    prior)."""
    experiment = EXPERIMENTS.get(name)
    return experiment is not None and experiment.role in AUDIO_ROLES


def is_kd_row(name: str) -> bool:
    """Whether a row is a distilled student."""
    experiment = EXPERIMENTS.get(name)
    return experiment is not None and experiment.role == "kd"


def resolve_preset(args: argparse.Namespace) -> Preset:
    """The chosen preset with the overrides of ``args`` applied (sizes, seeds, rows).

    Args:
        args: parsed ``run_experiments.py`` flags (``training.experiments.main.build_parser``).

    Returns:
        The preset to run.

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
        teachers = {e.teacher for e in preset.experiments if e.name in wanted and e.kind == "kd"}
        overrides["experiments"] = tuple(
            e for e in preset.experiments if e.name in wanted or e.name in teachers)
    return dataclasses.replace(preset, **overrides)
