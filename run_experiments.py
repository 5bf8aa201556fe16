"""Train, evaluate and tabulate the experiment table of a preset, with its pictures.

Presets (the rows, config files and sizes live in training/experiments/presets.py):
  quick     the README's main command: the simulated world on a CPU (64x64, <= 10 min);
            rows: RGB teacher, official BatVision U-Net, audio-only student, the recommended
            KD student (configs/synthetic/kd.yaml), and two depth priors.
  standard  the config files' benchmark: configs/synthetic/*.yaml at 128x128, 20 epochs,
            batch 8, 15 m, 3 seeds; the rows of quick (whose KD row is depth KD) plus the
            other KD variants (depth + d1..d4 features; confidence-weighted; the
            encoder-feature ablation x1..x5).
  full      real BatVision V2 on a GPU (configs/batvisionv2/*.yaml, 256x256, 80 epochs).

Each run is a train_*.py command line (printed before it runs) with its config file plus the
preset's sizes; the students of a seed distil from that seed's teacher. Every trained run is
scored on the test split by evaluate.py under two metric protocols (official gt > 0, and
gt >= 0.5 m), at its best-validation checkpoint, except the official U-Net at its last epoch
(the official recipe has no model selection). Writes, under --out (default results/<preset>):

    results.csv     every run and reference row, both protocols, params, training seconds
    results.md      mean ± std over seeds, goal checks, the settings read from the runs
    rmse.png        test RMSE per experiment (bar chart, ± std over seeds)
    pictures.png    RGB | ground truth | teacher | official U-Net | audio-only | best KD
    runs/seed<k>/<experiment>/   the training runs (checkpoints, config.json, eval_test*/)

Rerunning reuses a run only when the identity it recorded (resolved settings, data fingerprint,
teacher checkpoint) equals the one it would have now; a run cut short is resumed; anything else
is retrained (or, with --on_mismatch stop, reported). Evaluations are reused only for the same
checkpoint and test split.

    python run_experiments.py --preset quick
    python run_experiments.py --preset standard
    python run_experiments.py --preset full --data_root /data/BatvisionV2
"""
from training.experiments.main import main

if __name__ == "__main__":
    main(description=__doc__)
