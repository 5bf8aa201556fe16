"""Train, evaluate and tabulate the experiment table of a preset, with its pictures.

Presets (the rows, config files and sizes live in training/experiments/presets.py):
  quick        the README's main command: the simulated world on a CPU (64x64, <= 10 min);
               rows: RGB teacher, official BatVision U-Net, audio-only student, the depth-KD
               student (configs/synthetic/kd.yaml), and two depth priors.
  standard     the config files' benchmark: configs/synthetic/*.yaml at 128x128, 20 epochs,
               batch 8, 15 m, 3 seeds; the architecture x recipe cells (official U-Net and our
               student, each with the official recipe and with ours), depth KD, the KD variants
               (depth + d1..d4 features; confidence-weighted; encoder features x1..x5), the
               gated distillation and its controls.
  development  decisions: 64x64, 3 seeds, the recipe cells, the recipe-matched U-Net's
               screening (learning rate, width, EMA, mirroring, head init, schedule,
               preprocessing), our student's preprocessing, depth KD, the gated distillation and
               its controls; run it on the development worlds (--synthetic_seed 0 and 1) and
               decide on validation RMSE.
  report       the headline rows at the development sizes (64x64, 3 seeds): the recipe cells,
               depth KD, the gated distillation and its controls, without the screening; run it
               on the report worlds (--synthetic_seed 2 and 3): the largest headline table the
               2-core CPU allows (about 40 minutes per world with --jobs 2).
  labels       label-scarce distillation (64x64, 3 seeds): for each share F of labelled
               training samples (0.05, 0.1, 0.25, 1) an audio-only student, KD from a strict
               teacher (the same labelled samples) and KD from a teacher-rich teacher (RGB-depth
               of the companion world's other rooms), and F = 0 with the teacher-rich one; equal
               optimiser steps (a labelled-only run of share F trains 1/F the epochs); writes
               rmse_by_fraction.png beside the table; also scored against the world's complete
               depth (every pixel, and inside the sensor's holes).
  labels_benchmark  the labels goal rows (F = 0.1, F = 0, fully labelled audio-only) at the
               benchmark size, 128x128 and 20 epochs (a GPU's work).
  full         real BatVision V2 on a GPU (configs/batvisionv2/*.yaml, 256x256, 80 epochs).

Worlds: --synthetic_seed 0 and 1 are the development worlds (every choice is made there, on
validation RMSE); 2 and 3 are the report worlds, fixed before any run on them, for the headline
tables. results.md says which one a table is on. Every "best" row of the goal lines is chosen
by validation RMSE and reported on test; a distillation row is compared with its controls
(same student, steps and loss structure, without the teacher's information). quick runs on the
default (realistic) world; the other synthetic presets stay on the classic world of earlier
versions, where their tables in RGB_DEPTH_README.md were measured (the --synthetic_acoustics,
--synthetic_holes and --synthetic_rooms flags move any preset).

Each run is a train_*.py command line (printed before it runs) with its config file plus the
preset's sizes; the students of a seed distil from that seed's teacher. Every trained run is
scored on the test split by evaluate.py under two metric protocols (official gt > 0, and
gt >= 0.5 m), at its best-validation checkpoint, except the rows of the official recipe at
their last epoch (our contract keeps no validation choice for that recipe). Writes, under --out (default results/<preset>):

    results.csv     every run and reference row: validation RMSE of the scored checkpoint, test
                    metrics under both protocols, params, training seconds
    results.md      mean ± std over seeds, goal checks, the settings read from the runs
    rmse.png        test RMSE per experiment (bar chart, ± std over seeds)
    pictures.png    RGB | ground truth | teacher | official U-Net | audio-only | best KD
    runs/seed<k>/<experiment>/   the training runs (checkpoints, config.json, eval_test*/)

Rerunning reuses a run only when the identity it recorded (resolved settings, data fingerprint,
teacher checkpoint) equals the one it would have now; a run cut short is resumed; anything else
is retrained (or, with --on_mismatch stop, reported). Evaluations are reused only for the same
checkpoint and test split.

    python run_experiments.py --preset quick
    python run_experiments.py --preset development --synthetic_seed 1 --out results/dev_w1
    python run_experiments.py --preset standard --synthetic_seed 2 --out results/standard_w2
    python run_experiments.py --preset full --data_root /data/BatvisionV2
"""
from training.experiments.main import main

if __name__ == "__main__":
    main(description=__doc__)
