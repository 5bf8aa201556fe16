"""The student ablation: one lever at a time against the official U-Net, on one simulated world.

Each row is a ``train_binaural_attention.py`` command line (printed before it runs) on a world
written by ``make_synthetic_batvision.py``; the table gives each run's validation RMSE at its
best and last epoch, read from its ``metrics.json``, and its mean seconds per epoch. Rows build
on each other as listed (``+`` = the previous row's flags plus these). Runs already finished
under ``--out`` are read, not trained again (delete the folder to retrain).

Screening, not the benchmark: one seed, validation split, by default 64x64 and 15 epochs, so
differences under ~0.05 m are noise. The benchmark of the chosen recipe is
``run_experiments.py --preset standard`` (128x128, 20 epochs, 3 seeds, test split).

    python make_synthetic_batvision.py --out data/world0/v2 --seed 0
    python benchmarks/student_ablations.py --data_root data/world0/v2 --out results/ablations
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

REPO = Path(__file__).resolve().parents[1]
STUDENT = ("--model", "binaural_attention", "--base_channels", "8", "--attention_levels", "4,5")
RECIPE = ("--head_init_depth", "median", "--scheduler", "cosine", "--warmup_epochs", "1",
          "--mirror_augment")
# (name, description, flags); each row is one lever changed against an earlier row.
ROWS: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ("official_unet", "official BatVision U-Net, official recipe (configs)",
     ("--config", "configs/synthetic/official_unet.yaml")),
    ("plain", "student base 8, attention 4,5, no schedule (the old quick student)", STUDENT),
    ("recipe", "+ head at the median depth, cosine + 1 warm-up epoch, mirror", STUDENT + RECIPE),
    ("query", "recipe + image-grid query decoder", STUDENT + RECIPE + ("--decoder", "query")),
    ("ild", "recipe + interaural level difference input",
     STUDENT + RECIPE + ("--input_features", "ild")),
    ("ild_ema", "ild + EMA of the weights (0.995)",
     STUDENT + RECIPE + ("--input_features", "ild", "--ema_decay", "0.995")),
)


def run_command(name: str, flags: Tuple[str, ...], args: argparse.Namespace) -> List[str]:
    """The training command line of one row."""
    return [sys.executable, "train_binaural_attention.py", *flags, "--dataset", "batvisionv2",
            "--data_root", args.data_root, "--image_size", str(args.image_size),
            "--nb_epochs", str(args.epochs), "--batch_size", "8", "--seed", str(args.seed),
            "--max_depth", "15", "--num_workers", "0", "--num_val_images", "0",
            "--cache_dir", str(Path(args.out) / "cache"), "--checkpoint_dir", args.out,
            "--experiment_name", name]


def summary(run_dir: Path) -> Tuple[float, float, float]:
    """(best val RMSE, last val RMSE, mean seconds per epoch) of a finished run."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = metrics["history"]
    return (metrics["best"]["rmse"], history[-1]["val"]["rmse"],
            sum(epoch["seconds"] for epoch in history) / len(history))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", required=True,
                        help="a V2 tree written by make_synthetic_batvision.py")
    parser.add_argument("--out", default="results/ablations", help="run folders and cache")
    parser.add_argument("--image_size", type=int, default=64, help="input side, pixels")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per run")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--rows", default=",".join(name for name, _, _ in ROWS),
                        help="comma-separated subset of the rows, in table order")
    args = parser.parse_args()
    wanted = args.rows.split(",")
    table = []
    for name, description, flags in ROWS:
        if name not in wanted:
            continue
        run_dir = Path(args.out) / name
        metrics = run_dir / "metrics.json"
        done = (metrics.is_file()
                and len(json.loads(metrics.read_text())["history"]) >= args.epochs)
        if not done:
            command = run_command(name, flags, args)
            print("$ " + " ".join(shlex.quote(part) for part in command), flush=True)
            subprocess.run(command + (["--overwrite"] if run_dir.exists() else []), cwd=REPO,
                           check=True)
        table.append((name, description, *summary(run_dir)))
    print(f"\nvalidation RMSE (m), {args.image_size}x{args.image_size}, {args.epochs} epochs, "
          f"seed {args.seed}, {args.data_root}")
    print(f"{'row':<14} {'best':>7} {'last':>7} {'s/epoch':>8}  what")
    for name, description, best, last, seconds in table:
        print(f"{name:<14} {best:>7.3f} {last:>7.3f} {seconds:>8.1f}  {description}")


if __name__ == "__main__":
    main()
