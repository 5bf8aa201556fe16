"""The simulated world read back through the real readers: the two halves of issue 2 agree."""
from __future__ import annotations

import torch

from datasets import BatvisionV1Dataset, BatvisionV2Dataset
from datasets.synthetic.world import WorldConfig, ensure_synthetic_world


def test_synthetic_v2_world_loads_with_real_reader(tmp_path):
    config = WorldConfig(format="v2", locations=2, samples=6, seed=3, height=32, width=32)
    root = ensure_synthetic_world(tmp_path / "world", config, workers=1, progress=False)
    ds = BatvisionV2Dataset(root, "train", image_size=32, use_rgb=True)
    assert len(ds) > 0 and ds.locations == sorted(ds.locations)
    sample = ds[0]
    assert sample["audio"].shape == (2, 32, 32) and sample["rgb"].shape == (3, 32, 32)
    valid = sample["valid"]
    assert valid.any() and not valid.all(), "the camera leaves some holes and sees some surfaces"
    assert torch.all(sample["depth"][valid] > 0) and sample["depth"].max() <= ds.max_depth


def test_synthetic_v1_world_loads_with_real_reader(tmp_path):
    config = WorldConfig(format="v1", locations=1, samples=6, seed=3, height=32, width=32)
    root = ensure_synthetic_world(tmp_path / "world", config, workers=1, progress=False)
    ds = BatvisionV1Dataset(root, "train", image_size=32, use_rgb=True, audio="waveform")
    sample = ds[0]
    assert sample["audio"].shape[0] == 2 and sample["audio"].dtype == torch.float32
    assert sample["depth"].max() <= 12.0 and sample["valid"].any()
