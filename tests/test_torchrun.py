"""torchrun on CPU (gloo): two processes give the one-process result for the same global batch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

import train_rgb_depth
from datasets.synthetic.writer import Recording, V2Writer
from training.checkpoint import LAST_CHECKPOINT, load_checkpoint
from training.data import train_sampler
from training.device import DistContext
from training.metrics import METRIC_NAMES

REPO = Path(__file__).resolve().parent.parent


def test_ranks_split_each_global_batch_of_one_process() -> None:
    """Per step, the two ranks' batches together are exactly the one-process batch."""
    data = list(range(16))
    orders = []
    for epoch in (0, 1):
        samplers = [train_sampler(data, DistContext(rank, 0, world), seed=3)
                    for world, rank in ((1, 0), (2, 0), (2, 1))]
        for sampler in samplers:
            sampler.set_epoch(epoch)
        single, rank0, rank1 = (list(s) for s in samplers)
        for step in range(4):  # global batch 4, per-rank batch 2
            assert sorted(single[4 * step: 4 * step + 4]) == sorted(
                rank0[2 * step: 2 * step + 2] + rank1[2 * step: 2 * step + 2])
        orders.append(single)
    assert orders[0] != orders[1] and sorted(orders[0]) == data  # reshuffled each epoch


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
    command: List[str] = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "train_rgb_depth.py", *argv,
                          "--experiment_name", "two"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_rgb_depth.main([*argv, "--experiment_name", "one"])
    finally:
        torch.set_num_threads(threads)

    two = load_checkpoint(tmp_path / "two" / LAST_CHECKPOINT)
    one = load_checkpoint(tmp_path / "one" / LAST_CHECKPOINT)
    assert two["global_step"] == one["global_step"] == 2
    # Parameters only: BatchNorm's running variance uses the unbiased n/(n-1) of each process's
    # own batch, so it differs slightly by construction.
    parameter_keys = [k for k in one["model_state"]
                      if "running" not in k and "num_batches" not in k]
    for key in parameter_keys:
        torch.testing.assert_close(two["model_state"][key], one["model_state"][key],
                                   rtol=1e-4, atol=1e-6, msg=key)
    assert two["metrics"]["n_images"] == one["metrics"]["n_images"] == 4  # reduced over ranks
    for name in METRIC_NAMES:
        assert two["metrics"][name] == pytest.approx(one["metrics"][name], rel=1e-5), name
    for term, value in one["history"][0]["train"].items():
        assert two["history"][0]["train"][term] == pytest.approx(value, rel=1e-5), term
