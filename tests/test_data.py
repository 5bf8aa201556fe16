"""training.data: the mirror augmentation of a batch, the training sampler's split of each global
batch over torchrun's ranks, and a batch's move to the device."""
from __future__ import annotations

import torch

from datasets.sample import AUDIO, DEPTH, RGB, VALID
from training.data import mirror_batch, to_device, train_sampler
from training.device import DistContext


def test_mirror_flips_images_and_swaps_ears_only() -> None:
    generator = torch.Generator().manual_seed(0)
    batch = {DEPTH: torch.rand(2, 1, 4, 6, generator=generator),
             RGB: torch.rand(2, 3, 4, 6, generator=generator),
             AUDIO: torch.rand(2, 2, 5, 7, generator=generator), "meta": {"index": [0, 1]}}
    batch[VALID] = batch[DEPTH] > 0.5
    out = mirror_batch(batch, torch.tensor([True, False]))
    for key in (DEPTH, VALID, RGB):
        assert torch.equal(out[key][0], batch[key][0].flip(-1)), key
        assert torch.equal(out[key][1], batch[key][1]), key
    # The spectrogram's axes are frequency x time: the ears swap, the time axis is untouched.
    assert torch.equal(out[AUDIO][0, 0], batch[AUDIO][0, 1])
    assert torch.equal(out[AUDIO][0, 1], batch[AUDIO][0, 0])
    assert torch.equal(out[AUDIO][1], batch[AUDIO][1])
    assert out["meta"] is batch["meta"]


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


def test_to_device_moves_the_tensors_and_lays_out_only_images_channels_last() -> None:
    batch = {RGB: torch.rand(2, 3, 4, 6), "index": torch.arange(2),
             "meta": {"location": ["a", "b"]}}
    assert not batch[RGB].is_contiguous(memory_format=torch.channels_last)
    out = to_device(batch, torch.device("cpu"), torch.channels_last)
    assert out[RGB].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out[RGB], batch[RGB]) and torch.equal(out["index"], batch["index"])
    assert out["meta"] is batch["meta"]  # strings stay as they are
