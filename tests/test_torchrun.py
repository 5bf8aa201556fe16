"""torchrun on CPU (gloo): two processes give the one-process result for the same global batch,
whatever the depth holes of each rank's images; a folder in use stops every rank."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import torch

import train_binaural_attention
import train_distillation
import train_rgb_depth
from common.errors import UsageError
from datasets.batvision import BatvisionV2Dataset
from datasets.sample import VALID
from datasets.synthetic.writer import Recording, V2Writer
from training.checkpoint import LAST_CHECKPOINT, RUN_LOCK, load_checkpoint, run_folder_lock
from training.metrics import METRIC_NAMES

REPO = Path(__file__).resolve().parent.parent


def _write_tree(root: Path) -> Path:
    """A V2 tree whose samples share one camera image but differ in depth and audio.

    BatchNorm normalises with the statistics of each process's half batch (SyncBatchNorm is
    CUDA-only); with one shared input image those equal the full batch's, whatever the split. The
    depth labels are all different, so the loss and its gradient depend on exactly which samples
    each rank reads: a wrong shard split (a rank reading another's indices, or all of them)
    changes the global batch and the weights.
    """
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    holes = rng.random((32, 32)) < 0.2
    writer = V2Writer(root)
    index = 0
    for location in ("Loc_A", "Loc_B"):
        for split, count in (("train", 4), ("val", 2), ("test", 1)):
            for _ in range(count):
                depth = rng.uniform(500, 20_000, (32, 32))
                depth[holes] = 0
                writer.add(location, split, index, Recording(
                    audio=np.clip(rng.normal(0, 0.1, (2, 20_000)), -1, 1), depth_mm=depth,
                    rgb=rgb, time=1.7e9 + index))
                index += 1
    writer.close()
    return root


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(tmp_path: Path) -> None:
    """One epoch under ``torchrun --nproc_per_node 2`` vs one process, same global batch of 4.

    The samples differ in depth (see :func:`_write_tree`), so the check covers the split of the
    data as well as gradient averaging and the reduction of losses and metrics. SGD is used
    because its step is proportional to the gradient (Adam's would hide a wrong scale).
    """
    root = _write_tree(tmp_path / "bv2")
    argv = ["--dataset", "batvisionv2", "--data_root", str(root), "--image_size", "32",
            "--base_channels", "4", "--batch_size", "4", "--nb_epochs", "1", "--num_workers", "0",
            "--optimizer", "sgd", "--learning_rate", "0.1", "--num_val_images", "0",
            "--device", "cpu", "--checkpoint_dir", str(tmp_path)]
    two, one = _run_twice(train_rgb_depth, argv, tmp_path)
    _assert_same_training(two, one, n_images=4)
    for term, value in one["history"][0]["train"].items():
        assert two["history"][0]["train"][term] == pytest.approx(value, rel=1e-5), term


def _write_holey_tree(root: Path) -> Path:
    """A V2 tree where, at every step of a 2-rank run with global batch 4, rank 1's two images
    are 95 % holes and rank 0's have none.

    Every sample has the same audio and the same camera image, so BatchNorm's batch statistics
    are the same on each rank's half batch as on the whole batch, whatever the split; the depth
    labels all differ. The holes follow the order ``randperm(seed 0 + epoch 0)`` deals the train
    split to the ranks (rank r takes positions r, r + 2, ...). The val split has 3 images, so
    the ranks score 2 and 1 of them: a per-rank mean of means would differ from the mean.
    """
    rng = np.random.default_rng(0)
    audio = np.clip(rng.normal(0, 0.1, (2, 20_000)), -1, 1)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0)).tolist()
    holey = {order[i] for i in range(1, 8, 2)}  # train positions rank 1 reads
    writer = V2Writer(root)
    index, position = 0, 0
    for location, val_count in (("Loc_A", 2), ("Loc_B", 1)):
        for split, count in (("train", 4), ("val", val_count), ("test", 1)):
            for _ in range(count):
                depth = rng.uniform(500, 12_000, (32, 32))
                if split == "train":
                    depth[rng.random((32, 32)) < (0.95 if position in holey else 0.0)] = 0
                    position += 1
                writer.add(location, split, index, Recording(audio=audio, depth_mm=depth,
                                                             rgb=rgb, time=1.7e9 + index))
                index += 1
    writer.close()
    return root


def _run_twice(script: Any, argv: List[str], tmp_path: Path) -> Tuple[Dict, Dict]:
    """``script`` under ``torchrun --nproc_per_node 2`` (run ``two``) and in one process (run
    ``one``), one thread each; their ``last_model.pth``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", Path(script.__file__).name, *argv,
               "--experiment_name", "two"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        script.main([*argv, "--experiment_name", "one"])
    finally:
        torch.set_num_threads(threads)
    return (load_checkpoint(tmp_path / "two" / LAST_CHECKPOINT),
            load_checkpoint(tmp_path / "one" / LAST_CHECKPOINT))


def _assert_same_training(two: Dict, one: Dict, n_images: int) -> None:
    """Same weights after the same steps, same validation metrics over ``n_images`` (reduced
    over the ranks)."""
    assert two["global_step"] == one["global_step"] == 2
    # Parameters only: BatchNorm's running variance uses the unbiased n/(n-1) of each process's
    # own batch, so it differs slightly by construction.
    for key in one["model_state"]:
        if "running" not in key and "num_batches" not in key:
            torch.testing.assert_close(two["model_state"][key], one["model_state"][key],
                                       rtol=1e-4, atol=1e-6, msg=key)
    assert two["metrics"]["n_images"] == one["metrics"]["n_images"] == n_images
    for name in METRIC_NAMES:
        assert two["metrics"][name] == pytest.approx(one["metrics"][name], rel=1e-5), name


@pytest.fixture(scope="module")
def holey_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = _write_holey_tree(tmp_path_factory.mktemp("holey") / "bv2")
    train = BatvisionV2Dataset(root, "train", image_size=32, use_rgb=False)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0)).tolist()
    shares = [float(train[i][VALID].float().mean()) for i in order]
    assert max(shares[1::2]) < 0.1 < 0.9 < min(shares[0::2])  # rank 1: mostly holes
    return root


def _argv(root: Path, tmp_path: Path) -> List[str]:
    return ["--dataset", "batvisionv2", "--data_root", str(root), "--image_size", "32",
            "--base_channels", "8", "--batch_size", "4", "--nb_epochs", "1",
            "--num_workers", "0", "--optimizer", "sgd", "--learning_rate", "0.1",
            "--num_val_images", "0", "--smoothness_weight", "0.1", "--device", "cpu",
            "--checkpoint_dir", str(tmp_path)]


@pytest.mark.slow
def test_with_different_holes_per_rank_the_student_trains_as_one_process(
        holey_tree: Path, tmp_path: Path) -> None:
    """Masked means over the global batch's valid pixels: rank 1's few valid pixels weigh what
    they weigh in one process, not 1 / (their count) each."""
    two, one = _run_twice(train_binaural_attention,
                          [*_argv(holey_tree, tmp_path), "--criterion", "l1_l2"], tmp_path)
    _assert_same_training(two, one, n_images=3)


@pytest.mark.slow
def test_with_different_holes_per_rank_distillation_trains_as_one_process(
        holey_tree: Path, tmp_path: Path) -> None:
    teacher_dir = tmp_path / "teacher_runs"
    train_rgb_depth.main([*_argv(holey_tree, teacher_dir), "--experiment_name", "teacher"])
    argv = [*_argv(holey_tree, tmp_path), "--criterion", "l1",
            "--teacher_checkpoint", str(teacher_dir / "teacher" / LAST_CHECKPOINT),
            "--lambda_depth", "1", "--kd_schedule", "gated", "--lambda_feat", "0.05",
            "--feature_levels", "d3,d4"]
    two, one = _run_twice(train_distillation, argv, tmp_path)
    _assert_same_training(two, one, n_images=3)


@pytest.mark.slow
def test_a_folder_in_use_stops_every_rank_with_one_line(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "bv2")
    argv = ["--dataset", "batvisionv2", "--data_root", str(root), "--image_size", "32",
            "--base_channels", "4", "--batch_size", "4", "--nb_epochs", "1", "--num_workers", "0",
            "--num_val_images", "0", "--device", "cpu", "--checkpoint_dir", str(tmp_path),
            "--experiment_name", "held"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "train_rgb_depth.py", *argv]
    with run_folder_lock(tmp_path / "held"):
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    refusals = [line for line in result.stderr.splitlines()
                if line.startswith("error: ") and "being written by another" in line]
    # One line per rank that got to print it: once one rank has failed, torchrun's launcher
    # terminates the other, which on a loaded machine may not have printed yet.
    assert 1 <= len(refusals) <= 2, result.stderr[-3000:]
    # torchrun's launcher prints its own traceback of the failed children; ours print none.
    assert f'File "{REPO / "training"}' not in result.stderr, result.stderr[-3000:]


@pytest.mark.slow
def test_a_killed_holder_leaves_no_lock(tmp_path: Path) -> None:
    """The lock is the kernel's: a process killed while holding it (SIGKILL, no clean-up)
    leaves the file but not the lock."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from training.checkpoint import run_folder_lock\n"
         f"held = run_folder_lock({str(tmp_path)!r})\n"
         "held.__enter__()\n"
         "print('held', flush=True)\n"
         "time.sleep(600)\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match="being written by another"):
            with run_folder_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / RUN_LOCK).is_file()
    with run_folder_lock(tmp_path):
        pass
