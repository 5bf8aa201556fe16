"""Run the distillation experiment table and write it with its pictures.

Trains the RGB teacher, the audio-only student and four distilled students (KD on depth; depth
and decoder features; confidence-weighted; and the encoder-feature ablation), for each seed; adds
two trivial reference rows computed from the training split (the mean depth map, and the mean
depth map of each location); evaluates every run's best checkpoint on the test split with
``evaluate.py``'s code; and writes, under --out (default ``results/<preset>``):

    results.csv     every run and reference row with its test metrics
    results.md      mean ± std over seeds per experiment, with the metric protocol
    rmse.png        test RMSE per experiment (bar chart, ± std over seeds)
    pictures.png    RGB | ground truth | teacher | audio-only | best KD on a few test samples
    runs/seed<k>/<experiment>/   the training runs (checkpoints, metrics.json, eval_test/)

The students of a seed all distil from that seed's teacher. The runner is resumable: a run
whose checkpoint holds all its epochs is not trained again, a run cut short is resumed, and a
test evaluation is reused while it is newer than the run's best checkpoint.

    python run_experiments.py --preset quick --seeds 1
    python run_experiments.py --preset full --seeds 3 --data_root /data/BatvisionV2
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, Dataset, default_collate

import train_binaural_attention
import train_distillation
import train_rgb_depth
from datasets.sample import DEPTH, META, RGB, VALID
from evaluate import evaluate_checkpoint
from training import cli
from training.checkpoint import (
    BEST_CHECKPOINT, LAST_CHECKPOINT, atomic_write, load_checkpoint, load_model,
)
from training.data import MODEL_INPUTS, build_dataset, resolve_data_root
from training.device import DistContext, resolve_device
from training.errors import UsageError
from training.metrics import METRIC_NAMES, DepthMetrics, image_metrics
from training.tracking import DEPTH_CMAP, HOLE_COLOUR, masked_depth, progress, save_figure

TRAINERS: Dict[str, Callable[[Optional[List[str]]], None]] = {
    "teacher": train_rgb_depth.main,
    "student": train_binaural_attention.main,
    "kd": train_distillation.main,
}
EVAL_FILE = Path("eval_test") / "metrics.json"
TABLE_METRICS = ("rmse", "abs_rel", "delta1", "mae", "log10")


@dataclass(frozen=True)
class Preset:
    """Everything that sizes the table's runs.

    Attributes:
        description: one line for results.md.
        dataset: ``synthetic`` or a real dataset (then --data_root is required).
        image_size, base_channels, batch_size: of every run.
        student_base_channels: ``--base_channels`` of the students (the KD adapters bridge
            their channel counts to the teacher's).
        teacher_epochs, student_epochs: ``--nb_epochs`` of the teacher and of every student.
        synthetic_locations, synthetic_samples, synthetic_size: the synthetic world.
        max_depth: metres (``None``: the dataset's default).
        flags: further flags of every run.
        student_flags: further flags of the audio models.
        feature_weight: ``--lambda_feat`` of the runs with feature KD.
    """

    description: str
    dataset: str
    image_size: int
    base_channels: int
    batch_size: int
    student_base_channels: int
    teacher_epochs: int
    student_epochs: int
    synthetic_locations: int = 3
    synthetic_samples: int = 400
    synthetic_size: int = 64
    max_depth: Optional[float] = None
    flags: Tuple[str, ...] = ()
    student_flags: Tuple[str, ...] = ()
    feature_weight: float = 0.05


PRESETS: Dict[str, Preset] = {
    # Sized for this project's 2-core CPU (see /work/shared/docs/feasibility.md and the README):
    # 64x64 inputs, batch 8, AdamW 1e-3, a base-16 teacher; the student at base 8 with attention at
    # its two coarsest levels only (where it is cheap), which costs per sample about what the
    # prototype's base-16 audio U-Net did; depth range = the simulated camera's range (15 m).
    "quick": Preset(
        description="synthetic world (simulated rooms and echoes, cardioid ears; not real data)",
        dataset="synthetic", image_size=64, base_channels=16, batch_size=8, student_base_channels=8,
        teacher_epochs=10, student_epochs=6, max_depth=15.0,
        flags=("--num_workers", "0", "--num_val_images", "2"),
        student_flags=("--attention_levels", "4,5")),
    # The official recipe's scale (256x256, AdamW 1e-3, 80 epochs) on real BatVision V2, for GPUs.
    "full": Preset(
        description="BatVision V2 (real recordings), 256x256, official training length",
        dataset="batvisionv2", image_size=256, base_channels=64, batch_size=64,
        student_base_channels=64, teacher_epochs=80, student_epochs=80,
        flags=("--num_workers", "8", "--amp", "bf16", "--mirror_augment")),
}


@dataclass(frozen=True)
class Experiment:
    """One row of the table: which script trains it and with which extra flags."""

    name: str
    label: str
    kind: str  # a key of TRAINERS
    flags: Tuple[str, ...] = ()
    feature_kd: bool = False


EXPERIMENTS: Tuple[Experiment, ...] = (
    Experiment("rgb_teacher", "RGB teacher (upper bound)", "teacher"),
    Experiment("audio_only", "audio only (baseline)", "student"),
    Experiment("kd_depth", "audio + KD depth", "kd", ("--lambda_depth", "1", "--lambda_feat", "0")),
    Experiment("kd_depth_features", "audio + KD depth + features d1..d4", "kd",
               ("--lambda_depth", "1", "--feature_levels", "d1,d2,d3,d4"), feature_kd=True),
    Experiment("kd_adaptive", "audio + KD adaptive (confidence), depth + d1..d4", "kd",
               ("--lambda_depth", "1", "--feature_levels", "d1,d2,d3,d4",
                "--kd_schedule", "confidence"), feature_kd=True),
    Experiment("kd_encoder_ablation", "ablation: audio + KD depth + features x1..x5", "kd",
               ("--lambda_depth", "1", "--feature_levels", "x1,x2,x3,x4,x5"), feature_kd=True),
)
REFERENCES = {
    "mean_depth_map": "reference: mean depth map of the train split",
    "location_mean_depth_map": "reference: per-location mean depth map of the train split",
}
TEACHER, AUDIO_ONLY = EXPERIMENTS[0].name, EXPERIMENTS[1].name
KD_EXPERIMENTS = tuple(e.name for e in EXPERIMENTS if e.kind == "kd")


def preset_values(field: str) -> str:
    """``quick: 64, full: 256`` for a :class:`Preset` field, for --help."""
    return ", ".join(f"{name}: {getattr(preset, field)}" for name, preset in PRESETS.items())


def build_parser() -> argparse.ArgumentParser:
    """Every flag of this script."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    parser.add_argument("--preset", choices=tuple(PRESETS), default="quick",
                        help="quick: synthetic world on a CPU; full: real BatVision V2 on a GPU")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per trained experiment")
    parser.add_argument("--data_root", default=None,
                        help="real data: the dataset root (required for full). synthetic: the "
                             "folder holding the world (default .cache/synthetic/<world>/)")
    parser.add_argument("--out", default=None, help="output folder (default results/<preset>)")
    parser.add_argument("--cache_dir", default=None,
                        help="preprocessed-sample cache shared by every run (default <out>/cache)")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda if available, else cpu), cpu, cuda")
    parser.add_argument("--num_pictures", type=int, default=4, help="test samples in pictures.png")
    sizes = parser.add_argument_group(
        "size overrides", "replace the preset's value (default: keep it, shown per preset), e.g. "
                          "for a tiny smoke run")
    for field in ("image_size", "base_channels", "student_base_channels", "batch_size",
                  "teacher_epochs", "student_epochs",
                  "synthetic_locations", "synthetic_samples", "synthetic_size"):
        sizes.add_argument(f"--{field}", type=int, default=None, help=preset_values(field))
    sizes.add_argument("--feature_weight", type=float, default=None,
                       help="--lambda_feat of the feature-KD runs; "
                            + preset_values("feature_weight"))
    return parser


def resolve_preset(args: argparse.Namespace) -> Preset:
    """The chosen preset with the size overrides of ``args`` applied."""
    preset = PRESETS[args.preset]
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Preset)
                 if getattr(args, f.name, None) is not None}
    return dataclasses.replace(preset, **overrides)


def common_flags(preset: Preset, data_root: Optional[str], cache_dir: Path,
                 device: str) -> List[str]:
    """Flags shared by every training run of the table (no ``--data_root`` when it is ``None``)."""
    flags = ["--dataset", preset.dataset, "--image_size", str(preset.image_size),
             "--base_channels", str(preset.base_channels), "--batch_size", str(preset.batch_size),
             "--cache_dir", str(cache_dir), "--device", device,
             "--synthetic_locations", str(preset.synthetic_locations),
             "--synthetic_samples", str(preset.synthetic_samples),
             "--synthetic_size", str(preset.synthetic_size), *preset.flags]
    if preset.max_depth is not None:
        flags += ["--max_depth", str(preset.max_depth)]
    if data_root is not None:
        flags += ["--data_root", data_root]
    return flags


def data_args(flags: Sequence[str]) -> argparse.Namespace:
    """The training scripts' resolved data arguments for ``flags`` (one definition of the data)."""
    return train_rgb_depth.build_parser().parse_args(list(flags))


# --------------------------------------------------------------------------------------------
# Training and evaluation of one run


def trained_epochs(run_dir: Path) -> int:
    """Epochs in the run's last checkpoint (0 when there is none)."""
    path = run_dir / LAST_CHECKPOINT
    return load_checkpoint(path)["epoch"] if path.is_file() else 0


def train_run(experiment: Experiment, preset: Preset, seed: int, seeds_dir: Path,
              flags: Sequence[str]) -> Path:
    """Train one run to its full length, resuming it if cut short; returns its folder."""
    run_dir = seeds_dir / f"seed{seed}" / experiment.name
    epochs = preset.teacher_epochs if experiment.kind == "teacher" else preset.student_epochs
    done = trained_epochs(run_dir)
    if done >= epochs:
        print(f"[skip] {run_dir}: {done} epochs already trained")
        return run_dir
    argv = [*flags, "--checkpoint_dir", str(run_dir.parent), "--experiment_name", experiment.name,
            "--seed", str(seed), "--nb_epochs", str(epochs), *experiment.flags]
    if experiment.kind != "teacher":
        argv += ["--base_channels", str(preset.student_base_channels), *preset.student_flags]
    if experiment.kind == "kd":
        argv += ["--teacher_checkpoint", str(run_dir.parent / TEACHER / BEST_CHECKPOINT)]
        if experiment.feature_kd:
            argv += ["--lambda_feat", str(preset.feature_weight)]
    if done:
        argv += ["--resume", str(run_dir)]
    print(f"[train] {run_dir} ({'resuming at epoch ' + str(done) if done else 'new'})")
    TRAINERS[experiment.kind](argv)
    return run_dir


def evaluate_run(run_dir: Path, data_root: str, device: str, batch_size: int) -> Dict[str, Any]:
    """Test metrics of the run's best checkpoint (``evaluate.py``), reused while up to date."""
    result_file = run_dir / EVAL_FILE
    best = run_dir / BEST_CHECKPOINT
    if result_file.is_file() and result_file.stat().st_mtime >= best.stat().st_mtime:
        return json.loads(result_file.read_text())
    return evaluate_checkpoint(best, "test", data_root=data_root, out_dir=result_file.parent,
                               batch_size=batch_size, num_workers=0, device=device)


def training_seconds(run_dir: Path) -> float:
    """Wall time of all the run's epochs (from its ``metrics.json`` history)."""
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    return sum(epoch["seconds"] for epoch in history)


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
                   batch_size: int) -> Dict[str, Any]:
    """Score a per-location constant prediction on the test split with the official metrics.

    Args:
        test_set: the test split.
        prior: location name → (1, H, W) depth map in metres.
        batch_size: samples per batch.
    """
    metrics = DepthMetrics()
    for batch in DataLoader(test_set, batch_size=batch_size):
        prediction = torch.stack([prior(location) for location in batch[META]["location"]])
        metrics.update(prediction, batch[DEPTH])
    return {**metrics.compute(), "protocol": metrics.protocol()}


# --------------------------------------------------------------------------------------------
# Tables and pictures


def write_csv(path: Path, rows: List[Dict[str, Any]]) -> None:
    """``results.csv``: one line per run or reference row (rmse, mae in metres)."""
    columns = ["experiment", "label", "seed", *METRIC_NAMES, "n_images", "train_seconds", "run_dir"]
    lines: List[Dict[str, Any]] = [{k: row.get(k, "") for k in columns} for row in rows]

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            writer.writerows(lines)

    atomic_write(path, write)


def summarise(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per experiment (in table order): label, seed count, and mean / std of each metric."""
    summary = []
    for name in [e.name for e in EXPERIMENTS] + list(REFERENCES):
        runs = [row for row in rows if row["experiment"] == name]
        if not runs:
            continue
        entry: Dict[str, Any] = {"experiment": name, "label": runs[0]["label"], "n": len(runs)}
        for metric in METRIC_NAMES:
            values = [row[metric] for row in runs]
            entry[metric] = statistics.fmean(values)
            entry[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else None
        summary.append(entry)
    return summary


def _cell(entry: Dict[str, Any], metric: str) -> str:
    std = entry[f"{metric}_std"]
    return f"{entry[metric]:.3f}" + ("" if std is None else f" ± {std:.3f}")


def goal_lines(summary: List[Dict[str, Any]]) -> List[str]:
    """The benchmark goal in words: best KD vs audio-only, audio rows vs the location prior."""
    by_name = {entry["experiment"]: entry for entry in summary}
    lines = []
    kd = [by_name[name] for name in KD_EXPERIMENTS if name in by_name]
    if kd and AUDIO_ONLY in by_name:
        best = min(kd, key=lambda entry: entry["rmse"])
        ratio = best["rmse"] / by_name[AUDIO_ONLY]["rmse"]
        lines.append(f"- Best KD student: {best['label']}, RMSE {best['rmse']:.3f} m = "
                     f"{ratio:.3f} x the audio-only student's {by_name[AUDIO_ONLY]['rmse']:.3f} m "
                     f"(goal: <= 0.95, {'met' if ratio <= 0.95 else 'not met'} on these "
                     f"{best['n']} seed(s)).")
    prior = by_name.get("location_mean_depth_map")
    if prior:
        audio = [by_name[name] for name in (AUDIO_ONLY, *KD_EXPERIMENTS) if name in by_name]
        below = [entry for entry in audio if entry["rmse"] < prior["rmse"]]
        lines.append(f"- Audio rows below the per-location mean depth map ({prior['rmse']:.3f} m): "
                     f"{len(below)} of {len(audio)}.")
    return lines


def describe_sizes(preset: Preset) -> str:
    """One sentence with the sizes of every run of the table."""
    text = (f"{preset.image_size}x{preset.image_size} inputs, base channels "
            f"{preset.base_channels} (teacher) / {preset.student_base_channels} (students), batch "
            f"{preset.batch_size}, teacher {preset.teacher_epochs} epochs, students "
            f"{preset.student_epochs} epochs, student flags "
            f"`{' '.join(preset.student_flags) or 'none'}`, "
            f"feature-KD weight {preset.feature_weight}")
    if preset.dataset == "synthetic":
        text += (f"; world: {preset.synthetic_locations} locations x {preset.synthetic_samples} "
                 f"samples at {preset.synthetic_size}x{preset.synthetic_size}")
    return text + "."


def write_markdown(path: Path, summary: List[Dict[str, Any]], preset: Preset, seeds: int,
                   protocol: Dict[str, Any], command: str, minutes: float) -> None:
    header = "| experiment | seeds | " + " | ".join(TABLE_METRICS) + " |"
    lines = [
        f"# Distillation table: {preset.description}", "",
        f"Made by `{command}` ({minutes:.1f} min for this invocation; trained runs reused from "
        "earlier invocations are not counted).", "",
        f"Test split; mean ± std over {seeds} seed(s) (sample std; no ± with one seed). Every "
        "trained run is scored at its best validation-RMSE checkpoint with `evaluate.py`; the "
        "two reference rows predict the mean training depth map (overall / of the sample's "
        "location) and are scored by the same metric code.", "",
        f"Metric protocol: {protocol['valid_pixels']} valid; {protocol['averaging']}; "
        f"{protocol['units']}; no median scaling; predictions floored at "
        f"{protocol['min_prediction']} m inside log10 and delta only. rmse, mae in metres; "
        "abs_rel, log10 unitless; delta1 = share of pixels with max(gt/pred, pred/gt) < 1.25.", "",
        f"Sizes: {describe_sizes(preset)}", "",
        header, "|" + "---|" * (2 + len(TABLE_METRICS)),
    ]
    for entry in summary:
        seeds_cell = "–" if entry["experiment"] in REFERENCES else str(entry["n"])
        lines.append(f"| {entry['label']} | {seeds_cell} | "
                     + " | ".join(_cell(entry, m) for m in TABLE_METRICS) + " |")
    lines += ["", *goal_lines(summary), "", "![test RMSE](rmse.png)", "",
              "![test samples](pictures.png)", ""]
    text = "\n".join(lines)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def save_bar_chart(path: Path, summary: List[Dict[str, Any]]) -> None:
    """Horizontal bars of test RMSE (metres) with ± std over seeds; references in grey."""
    figure = Figure(figsize=(8, 0.5 * len(summary) + 1.2))
    ax = figure.subplots()
    positions = np.arange(len(summary))[::-1]
    colours = ["tab:grey" if e["experiment"] in REFERENCES else
               "tab:orange" if e["experiment"] == TEACHER else "tab:blue" for e in summary]
    errors = [e["rmse_std"] or 0.0 for e in summary]
    ax.barh(positions, [e["rmse"] for e in summary], xerr=errors, color=colours, capsize=3)
    ax.set_yticks(positions, [e["label"] for e in summary])
    ax.set_xlabel("test RMSE (m), lower is better")
    for y, entry in zip(positions, summary):
        ax.text(entry["rmse"], y, f" {entry['rmse']:.3f}", va="center")
    save_figure(figure, path)


def save_picture_grid(path: Path, test_set: Dataset, runs: Dict[str, Path], count: int,
                      device: torch.device) -> None:
    """Rows of test samples: RGB | ground truth | one depth map per run (titled with its RMSE).

    Args:
        path: PNG to write.
        test_set: the test split with ``rgb``.
        runs: column title → run folder (its best checkpoint predicts).
        count: number of samples, spread evenly over the split (so over its locations).
        device: where the models run.
    """
    picks = np.linspace(0, len(test_set) - 1, min(count, len(test_set))).round().astype(int)
    batch = default_collate([test_set[int(i)] for i in picks])
    gt = batch[DEPTH]
    predictions = {}
    for title, run_dir in runs.items():
        checkpoint = load_checkpoint(run_dir / BEST_CHECKPOINT)
        model = load_model(checkpoint, device, path=run_dir / BEST_CHECKPOINT)
        with torch.no_grad():
            inputs = batch[MODEL_INPUTS[checkpoint["model_name"]]].to(device)
            predictions[title] = model(inputs).cpu()
    cmap = colormaps[DEPTH_CMAP].with_extremes(bad=HOLE_COLOUR)
    columns = 2 + len(runs)
    figure = Figure(figsize=(2.4 * columns, 2.4 * len(picks) + 0.4))
    axes = figure.subplots(len(picks), columns, squeeze=False)
    for row in range(len(picks)):
        truth = gt[row, 0].numpy()
        norm = Normalize(0.0, float(truth.max()) or 1.0)  # per row: near rooms keep their contrast
        axes[row, 0].imshow(batch[RGB][row].permute(1, 2, 0).numpy().clip(0, 1))
        axes[row, 1].imshow(masked_depth(truth), cmap=cmap, norm=norm)
        titles = ["RGB", "ground truth (white: hole)"]
        for column, (title, depth) in enumerate(predictions.items(), start=2):
            axes[row, column].imshow(depth[row, 0].numpy(), cmap=cmap, norm=norm)
            scores, _ = image_metrics(depth[row:row + 1], gt[row:row + 1])
            rmse = scores[0, METRIC_NAMES.index("rmse")]
            titles.append(f"{title}\nRMSE {rmse:.2f} m")
        for ax, title in zip(axes[row], titles):
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    figure.suptitle("test samples; depth colours per row, from 0 to its farthest ground truth")
    save_figure(figure, path)


# --------------------------------------------------------------------------------------------


def run_table(experiments: Sequence[Experiment], preset: Preset, seeds: int, out: Path,
              flags: Sequence[str], data_root: str, device: str) -> List[Dict[str, Any]]:
    """Train (or reuse) and evaluate every run; returns one CSV row per run."""
    rows = []
    for seed in range(seeds):
        for experiment in experiments:
            run_dir = train_run(experiment, preset, seed, out / "runs", flags)
            result = evaluate_run(run_dir, data_root, device, preset.batch_size)
            rows.append({"experiment": experiment.name, "label": experiment.label, "seed": seed,
                         **{m: result[m] for m in METRIC_NAMES}, "n_images": result["n_images"],
                         "protocol": result["protocol"],
                         "train_seconds": round(training_seconds(run_dir), 1),
                         "run_dir": str(run_dir)})
    return rows


def reference_rows(train_set: Dataset, test_set: Dataset, batch_size: int) -> List[Dict[str, Any]]:
    """The two depth-prior rows, fitted on ``train_set`` and scored on ``test_set``."""
    overall, by_location = depth_priors(train_set, batch_size)
    priors = {"mean_depth_map": lambda location: overall,
              "location_mean_depth_map": lambda location: by_location.get(location, overall)}
    rows = []
    for name, prior in priors.items():
        result = evaluate_prior(test_set, prior, batch_size)
        rows.append({"experiment": name, "label": REFERENCES[name], "seed": "",
                     **{m: result[m] for m in METRIC_NAMES}, "n_images": result["n_images"],
                     "protocol": result["protocol"]})
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv``; train, evaluate and tabulate every experiment."""
    args = build_parser().parse_args(argv)
    started = time.time()
    with cli.user_errors():
        if args.seeds < 1:
            raise UsageError(f"--seeds must be at least 1, got {args.seeds}")
        preset = resolve_preset(args)
        out = Path(args.out or Path("results") / args.preset)
        cache_dir = Path(args.cache_dir) if args.cache_dir else out / "cache"
        device = resolve_device(args.device)
        world = data_args(common_flags(preset, args.data_root, cache_dir, args.device))
        # Generates the synthetic world when absent and, for synthetic, sets world.data_root to
        # the folder holding it: every run and evaluation then gets that same explicit root.
        data_root = resolve_data_root(world, DistContext())
        flags = common_flags(preset, world.data_root, cache_dir, args.device)

        rows = run_table(EXPERIMENTS, preset, args.seeds, out, flags, world.data_root, args.device)
        rows += reference_rows(build_dataset(world, data_root, "train", use_rgb=False),
                               build_dataset(world, data_root, "test", use_rgb=False),
                               4 * preset.batch_size)

        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "results.csv", rows)
        summary = summarise(rows)
        command = " ".join(shlex.quote(a) for a in ["python", "run_experiments.py",
                                                     *(sys.argv[1:] if argv is None else argv)])
        write_markdown(out / "results.md", summary, preset, args.seeds, rows[-1]["protocol"],
                       command, (time.time() - started) / 60)
        save_bar_chart(out / "rmse.png", summary)
        best_kd = min((e for e in summary if e["experiment"] in KD_EXPERIMENTS),
                      key=lambda e: e["rmse"])
        seed0 = out / "runs" / "seed0"
        test_with_rgb = build_dataset(world, data_root, "test", use_rgb=True)
        save_picture_grid(out / "pictures.png", test_with_rgb,
                          {"teacher (RGB)": seed0 / TEACHER, "audio only": seed0 / AUDIO_ONLY,
                           f"best KD: {best_kd['experiment']}": seed0 / best_kd["experiment"]},
                          args.num_pictures, device)
    print((out / "results.md").read_text())
    print(f"wrote {out}/results.csv, results.md, rmse.png, pictures.png "
          f"in {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
