#!/usr/bin/env bash
# Example runs of train_rgb_depth.py (the RGB U-Net teacher).
#
#   bash run_rgb_depth_examples.sh                 menu: pick a preset by number
#   bash run_rgb_depth_examples.sh N [FLAGS...]    run preset N; extra FLAGS are appended
#   bash run_rgb_depth_examples.sh --dry-run N     print preset N's command, run nothing
#
# Presets 1-7 train on real BatVision V2 under $DATA_ROOT (default data/BatvisionV2); preset 8
# needs no data: it trains on the simulated world (generated on first use) and finishes in a few
# minutes on a CPU. The script's exit status is the training's. $PYTHON picks the interpreter.
# Any flag can be appended to a preset, e.g. the edge-aware smoothness term:
#   bash run_rgb_depth_examples.sh 1 --smoothness_weight 0.1
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python}"
DATA_ROOT="${DATA_ROOT:-data/BatvisionV2}"
V2=(--dataset batvisionv2 --data_root "$DATA_ROOT")

TITLES=(
  ""
  "basic: BatVision V2, base 64, official-like L1 + AdamW"
  "basic V2 run logged to Weights & Biases (offline without an API key)"
  "lightweight: base 32 (about 1/4 of the parameters)"
  "high capacity: base 128, bf16 mixed precision (for a GPU), cosine schedule with warm-up"
  "resume the latest run under checkpoints/"
  "the teacher for distillation (checkpoints/rgb_teacher_v2)"
  "label-scarce teacher: 10% of V2's depth labels, preset 6's optimiser steps (10x the epochs)"
  "quick check on the synthetic world (CPU, a few minutes, no data needed)"
)

preset_command() {
  local args
  case "$1" in
    1) args=("${V2[@]}" --experiment_name rgb_v2_basic) ;;
    2) args=("${V2[@]}" --experiment_name rgb_v2_wandb --use_wandb) ;;
    3) args=("${V2[@]}" --experiment_name rgb_v2_light --base_channels 32 --batch_size 64) ;;
    4) args=("${V2[@]}" --experiment_name rgb_v2_large --base_channels 128 --batch_size 16
             --amp bf16 --scheduler cosine --warmup_epochs 2) ;;
    5) args=(--resume latest) ;;
    6) args=("${V2[@]}" --experiment_name rgb_teacher_v2 --scheduler cosine --warmup_epochs 2
             --mirror_augment) ;;
    # The strict teacher of label-scarce distillation (RGB_DEPTH_README, "Distillation with
    # scarce depth labels"): it sees only the labelled tenth, so it trains ten times the epochs
    # (and warm-up epochs) to take as many optimiser steps as preset 6's teacher.
    7) args=("${V2[@]}" --experiment_name rgb_teacher_v2_labels10 --scheduler cosine
             --warmup_epochs 20 --mirror_augment --labelled_fraction 0.1 --nb_epochs 800) ;;
    8) args=(--config configs/synthetic/teacher.yaml --dataset synthetic --image_size 64
             --batch_size 8 --nb_epochs 10 --cache_dir .cache/preprocessed
             --experiment_name quick_synthetic --overwrite) ;;
    *) return 1 ;;
  esac
  COMMAND=("$PYTHON" train_rgb_depth.py "${args[@]}")
}

print_menu() {
  local n
  for n in 1 2 3 4 5 6 7 8; do
    printf '  %d) %s\n' "$n" "${TITLES[$n]}"
  done
}

dry_run=0
preset=""
extra=()
for arg in "$@"; do
  if [[ "$arg" == "--dry-run" ]]; then
    dry_run=1
  elif [[ -z "$preset" ]]; then
    preset="$arg"
  else
    extra+=("$arg")
  fi
done

if [[ -z "$preset" ]]; then
  if [[ ! -t 0 ]]; then
    { echo "Presets:"; print_menu
      echo "error: no preset given and stdin is not a terminal: run 'bash $0 N' (N = 1-8)"; } >&2
    exit 2
  fi
  echo "Presets:"
  print_menu
  read -r -p "Run which preset (1-8)? " preset
fi

if ! preset_command "$preset"; then
  echo "error: unknown preset '$preset' (choose 1-8)" >&2
  exit 2
fi
COMMAND+=("${extra[@]}")

if (( dry_run )); then
  printf '%q ' "${COMMAND[@]}"
  echo
  exit 0
fi
echo "+ ${COMMAND[*]}" >&2
exec "${COMMAND[@]}"
