"""The simulated world read back through the real readers; never generated into foreign folders."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Tuple

import pytest
import torch

from datasets import BatvisionV1Dataset, BatvisionV2Dataset, DataError
from datasets.synthetic.world import WorldConfig, ensure_synthetic_world

TINY = WorldConfig(format="v2", locations=1, samples=3, seed=0, height=8, width=8)


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


@pytest.mark.parametrize("fmt", ["v2", "v1"])
def test_dense_truth_reads_the_complete_depth_and_keeps_the_sensors_holes(tmp_path, fmt):
    config = WorldConfig(format=fmt, locations=1, samples=6, seed=3, height=32, width=32)
    root = ensure_synthetic_world(tmp_path / "world", config, workers=1, progress=False)
    reader = BatvisionV2Dataset if fmt == "v2" else BatvisionV1Dataset
    sensor = reader(root, "train", image_size=32, audio="waveform")
    dense = reader(root, "train", image_size=32, audio="waveform", truth="dense")
    assert dense.data_fingerprint != sensor.data_fingerprint
    for i in range(len(sensor)):
        seen, complete = sensor[i], dense[i]
        assert "sensor_valid" not in seen
        assert torch.equal(complete["sensor_valid"], seen["valid"])
        assert complete["valid"].all(), "the complete depth has no hole"
        assert torch.equal(complete["depth"][seen["valid"]], seen["depth"][seen["valid"]])
        assert torch.equal(complete["audio"], seen["audio"])


def test_dense_truth_on_data_without_it_stops_naming_the_missing_file(tmp_path, write_v2_tree):
    root = write_v2_tree(tmp_path / "real")
    with pytest.raises(DataError) as error:
        BatvisionV2Dataset(root, "test", image_size=8, truth="dense")
    message = str(error.value)
    assert "\n" not in message and "depth_dense" in message and "simulated worlds" in message
    assert "--truth sensor" in message


def _listing(root: Path) -> List[Tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


def test_world_is_never_generated_into_someone_elses_folder(tmp_path, write_v2_tree):
    """A folder of real data (no world manifest) is refused whole, before anything is written."""
    users = write_v2_tree(tmp_path / "BatvisionV2", counts={"train": 1})
    before = _listing(users)
    with pytest.raises(DataError, match="no synthetic world manifest") as error:
        ensure_synthetic_world(users, TINY, workers=1, progress=False)
    assert str(error.value).startswith(f"{users}: ") and "\n" not in str(error.value)
    assert _listing(users) == before
    # A *.world.json that is not ours does not make the folder ours.
    (users / "notes.world.json").write_text("{}")
    with pytest.raises(DataError, match="no synthetic world manifest"):
        ensure_synthetic_world(users, TINY, workers=1, progress=False)


def test_a_tree_without_its_own_manifest_is_never_deleted(tmp_path, write_v2_tree):
    """A world folder of ours beside a ``v2/`` it did not make: that ``v2/`` stays untouched."""
    holder = tmp_path / "holder"
    write_v2_tree(holder / "v2", counts={"train": 1})
    (holder / "v1.world.json").write_text(json.dumps({"version": 1, "config": {}, "stats": {}}))
    before = _listing(holder)
    with pytest.raises(DataError, match="not made by this project") as error:
        ensure_synthetic_world(holder, TINY, workers=1, progress=False)
    assert str(error.value).startswith(f"{holder / 'v2'}: ")
    assert _listing(holder) == before


def test_a_file_is_not_a_world_holder(tmp_path):
    path = tmp_path / "world"
    path.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        ensure_synthetic_world(path, TINY, workers=1, progress=False)


def test_evaluating_never_replaces_another_world(tmp_path):
    """A finished run's evaluation pointed at a folder holding another world of ours stops in one
    line naming what differs; training (replace=True) may still regenerate it."""
    ensure_synthetic_world(tmp_path / "world", TINY, workers=1, progress=False)
    manifest = (tmp_path / "world" / "v2.world.json").read_text()
    other = WorldConfig(format="v2", locations=1, samples=3, seed=5, height=8, width=8)
    with pytest.raises(DataError) as error:
        ensure_synthetic_world(tmp_path / "world", other, workers=1, progress=False,
                               replace=False)
    message = str(error.value)
    assert "\n" not in message and "seed 0 (asked: 5)" in message
    assert "--dataset batvisionv2" in message
    assert (tmp_path / "world" / "v2.world.json").read_text() == manifest
    ensure_synthetic_world(tmp_path / "world", other, workers=1, progress=False)
    assert json.loads((tmp_path / "world" / "v2.world.json").read_text())["config"]["seed"] == 5
