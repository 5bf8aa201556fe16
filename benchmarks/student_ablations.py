"""Screening of the student's levers: one change at a time, over training seeds, on one simulated
world.

Each row is a training command line (``train_binaural_attention.py``; ``train_rgb_depth.py`` for
the teacher, ``train_distillation.py`` for the distillation rows), printed before it runs, on a
world written by ``make_synthetic_batvision.py``. The table gives per row the mean ± sample std
over seeds of the best validation RMSE, each run's own, the mean RMSE at the last epoch and the
mean seconds per epoch.
A run already under ``--out`` is handled as ``run_experiments.py`` handles one: read while the
identity it recorded (resolved settings, data fingerprint, teacher fingerprint) equals the one
its command line would record now, resumed when it was cut short, else trained again.

Rows, in two groups:

* ``history``: how ``configs/synthetic/student.yaml`` was chosen, each row building on an earlier
  one (plain -> recipe -> query / ild -> ild_ema), beside the official U-Net;
* ``levers``: one change at a time against ``student.yaml`` (attention at levels 3-5, the
  interaural phase difference as an input, the loss: L2, L1 + L2, L1 plus a scale-invariant log
  term; learning rate 2e-3, width 12), and distillation against ``kd.yaml`` from the teacher of
  ``teacher.yaml`` (seed 0, shared by every seed's student).

Screening, not the benchmark: validation split, 64x64 by default, few epochs. The benchmark of
the chosen recipe is ``run_experiments.py --preset standard`` (128x128, 20 epochs, test split).

    python make_synthetic_batvision.py --out data/world0/v2 --seed 0
    python benchmarks/student_ablations.py --data_root data/world0/v2 --out results/ablations
    python benchmarks/student_ablations.py --data_root data/world0/v2 --group history --seeds 1 \\
        --epochs 15
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common.argtypes import positive_int  # noqa: E402
from common.errors import user_errors  # noqa: E402
from training.checkpoint import BEST_CHECKPOINT  # noqa: E402
from training.cli import image_size  # noqa: E402
from training.experiments import runs  # noqa: E402

CONFIGS = "configs/synthetic"
STUDENT = ("--model", "binaural_attention", "--base_channels", "8", "--attention_levels", "4,5")
RECIPE = ("--head_init_depth", "median", "--scheduler", "cosine", "--warmup_epochs", "1",
          "--mirror_augment")
FEATURES = ("--lambda_feat", "0.5", "--feature_levels", "d1,d2,d3,d4")


@dataclass(frozen=True)
class Row:
    """One row: a training command line without its sizes, seed and folders.

    Attributes:
        name: run folder prefix (``<name>_s<seed>``).
        group: ``history`` or ``levers``.
        kind: ``student``, ``teacher`` or ``kd`` (which script, ``cli.KIND_SCRIPTS``).
        flags: the row's own flags (a ``--config`` file first, if any).
        description: one line for the table.
        seeds: ``None``: every seed of ``--seeds``; else only these (the shared teacher).
    """

    name: str
    group: str
    kind: str
    flags: Tuple[str, ...]
    description: str
    seeds: Optional[Tuple[int, ...]] = None


def _config(name: str) -> Tuple[str, str]:
    # Absolute, so the script runs from any folder (commands show it relative to the repository).
    return ("--config", str(REPO / CONFIGS / f"{name}.yaml"))


ROWS: Tuple[Row, ...] = (
    Row("official_unet", "history", "student", _config("official_unet"),
        "official BatVision U-Net, official recipe"),
    Row("plain", "history", "student", STUDENT,
        "student base 8, attention 4,5, no schedule (the old quick student)"),
    Row("recipe", "history", "student", STUDENT + RECIPE,
        "+ head at the median depth, cosine + 1 warm-up epoch, mirror"),
    Row("query", "history", "student", STUDENT + RECIPE + ("--decoder", "query"),
        "recipe + image-grid query decoder"),
    Row("ild", "history", "student", STUDENT + RECIPE + ("--input_features", "ild"),
        "recipe + interaural level difference input"),
    Row("ild_ema", "history", "student",
        STUDENT + RECIPE + ("--input_features", "ild", "--ema_decay", "0.995"),
        "ild + EMA of the weights (0.995)"),
    Row("official_unet", "levers", "student", _config("official_unet"),
        "official BatVision U-Net, official recipe"),
    Row("student", "levers", "student", _config("student"), "student.yaml"),
    Row("att345", "levers", "student", _config("student") + ("--attention_levels", "3,4,5"),
        "student.yaml, attention at levels 3,4,5"),
    Row("l1_silog", "levers", "student", _config("student") + ("--criterion", "l1_silog"),
        "student.yaml, L1 + scale-invariant log loss"),
    Row("ipd", "levers", "student", _config("student") + (
        "--audio_format", "spectrogram_ipd", "--input_features", "ild_ipd"),
        "student.yaml + interaural phase difference (cos, sin) input"),
    Row("l2", "levers", "student", _config("student") + ("--criterion", "l2"),
        "student.yaml, L2 loss (the mean, as RMSE scores, not the median)"),
    Row("l1_l2", "levers", "student", _config("student") + ("--criterion", "l1_l2"),
        "student.yaml, L1 + L2 loss (the control of kd_l2)"),
    Row("lr2e-3", "levers", "student", _config("student") + ("--learning_rate", "0.002"),
        "student.yaml, learning rate 2e-3"),
    Row("base12", "levers", "student", _config("student") + ("--base_channels", "12"),
        "student.yaml, width 12 (2.2x the compute)"),
    Row("teacher", "levers", "teacher", _config("teacher"), "RGB teacher (teacher.yaml)",
        seeds=(0,)),
    Row("kd", "levers", "kd", _config("kd"), "kd.yaml: depth KD (weight 1)"),
    Row("kd_light", "levers", "kd", _config("kd") + ("--lambda_depth", "0.1"),
        "kd.yaml with depth KD at weight 0.1"),
    Row("kd_feat", "levers", "kd", _config("kd") + FEATURES,
        "kd.yaml + feature KD on d1..d4 (weight 0.5)"),
    Row("kd_feat_only", "levers", "kd", _config("kd") + ("--lambda_depth", "0") + FEATURES,
        "kd.yaml without depth KD, feature KD on d1..d4 (weight 0.5)"),
    Row("kd_l2", "levers", "kd", _config("kd") + ("--depth_kd", "l2"),
        "kd.yaml, depth KD as squared error"),
    Row("kd_confidence", "levers", "kd", _config("kd") + ("--kd_schedule", "confidence"),
        "kd.yaml, depth KD weighted per pixel by the teacher's accuracy"),
    Row("kd_gated", "levers", "kd", _config("kd") + ("--kd_schedule", "gated"),
        "kd.yaml, depth KD only where the teacher beats the student"),
    Row("kd_attention", "levers", "kd",
        _config("kd") + FEATURES + ("--feature_matching", "attention"),
        "kd.yaml + attention transfer on d1..d4 (weight 0.5)"),
)
GROUPS = ("history", "levers")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", required=True,
                        help="a V2 tree written by make_synthetic_batvision.py")
    parser.add_argument("--out", default="results/ablations", help="run folders and cache")
    parser.add_argument("--group", choices=GROUPS, default="levers", help="which rows")
    parser.add_argument("--rows", default=None,
                        help="comma-separated subset of the group's rows (default: all)")
    parser.add_argument("--image_size", type=image_size, default=64,
                        help="input side, pixels")
    parser.add_argument("--epochs", type=positive_int, default=10, help="epochs per run")
    parser.add_argument("--seeds", type=positive_int, default=3,
                        help="training seeds 0..N-1 per row")
    return parser.parse_args(argv)


def run_argv(row: Row, seed: int, args: argparse.Namespace) -> List[str]:
    """The script's arguments for one run of ``row``."""
    argv = [*row.flags, "--dataset", "batvisionv2", "--data_root", args.data_root,
            "--image_size", str(args.image_size), "--nb_epochs", str(args.epochs),
            "--batch_size", "8", "--seed", str(seed), "--max_depth", "15",
            "--num_workers", "0", "--num_val_images", "0",
            "--cache_dir", str(Path(args.out) / "cache"), "--checkpoint_dir", args.out,
            "--experiment_name", f"{row.name}_s{seed}"]
    if row.kind == "kd":
        argv += ["--teacher_checkpoint", str(Path(args.out) / "teacher_s0" / BEST_CHECKPOINT)]
    return argv


def bring_up_to_date(row: Row, seed: int, args: argparse.Namespace) -> Path:
    """Reuse, resume or train one run of ``row`` as ``run_experiments.py`` does
    (:func:`training.experiments.runs.bring_up_to_date`); returns its folder."""
    run_dir = Path(args.out) / f"{row.name}_s{seed}"
    runs.bring_up_to_date(row.kind, run_argv(row, seed, args), run_dir, runs.run_script)
    return run_dir


def summary(run_dir: Path) -> Tuple[float, float, float]:
    """(best validation RMSE, last epoch's, mean seconds per epoch) of a finished run."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = metrics["history"]
    return (metrics["best"]["rmse"], history[-1]["val"]["rmse"],
            sum(epoch["seconds"] for epoch in history) / len(history))


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, List[float]]:
    """Run the chosen rows; print the table; returns row name → best validation RMSE per seed."""
    args = parse_args(argv)
    rows = [row for row in ROWS if row.group == args.group]
    if args.rows is not None:
        wanted = args.rows.split(",")
        unknown = sorted(set(wanted) - {row.name for row in rows})
        if unknown:
            sys.exit(f"error: --rows: no row {', '.join(unknown)} in group {args.group}")
        # distillation rows need the teacher
        wanted += ["teacher"] * any(row.kind == "kd" for row in rows if row.name in wanted)
        rows = [row for row in rows if row.name in wanted]
    results: Dict[str, List[float]] = {}
    table = []
    for row in rows:
        seeds = row.seeds or tuple(range(args.seeds))
        with user_errors():  # a failed run or a bad file: one line
            figures = [summary(bring_up_to_date(row, seed, args)) for seed in seeds]
        results[row.name] = [best for best, _, _ in figures]
        table.append((row, results[row.name], statistics.fmean(last for _, last, _ in figures),
                      statistics.fmean(seconds for _, _, seconds in figures)))
    print(f"\nbest validation RMSE (m), {args.image_size}x{args.image_size}, {args.epochs} epochs, "
          f"{args.data_root}; mean ± sample std over seeds")
    print(f"{'row':<14} {'best':>7} {'std':>6} {'last':>7} {'s/epoch':>8}  best per seed; what")
    for row, best, last, seconds in table:
        spread = f"{statistics.stdev(best):6.3f}" if len(best) > 1 else f"{'-':>6}"
        print(f"{row.name:<14} {statistics.fmean(best):7.3f} {spread} {last:7.3f} {seconds:8.1f}  "
              f"{' '.join(f'{b:.3f}' for b in best)}; {row.description}")
    return results


if __name__ == "__main__":
    main()
