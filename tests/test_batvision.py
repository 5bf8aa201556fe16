"""V1/V2 readers: documented shapes and dtypes, exact values, sorted order, location filter."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from datasets import BatvisionV1Dataset, BatvisionV2Dataset, DataError
from datasets.synthetic.writer import Recording, V1Writer, V2Writer, audio_to_int32

SIZE = 32
READERS = {"v1": (BatvisionV1Dataset, 12.0), "v2": (BatvisionV2Dataset, 30.0)}


@pytest.fixture
def roots(v1_root, v2_root):
    return {"v1": v1_root, "v2": v2_root}


@pytest.mark.parametrize("fmt", ["v1", "v2"])
@pytest.mark.parametrize("audio", ["spectrogram", "mel", "waveform"])
@pytest.mark.parametrize("use_rgb", [False, True])
def test_shapes_and_dtypes(roots, fmt, audio, use_rgb):
    reader, max_depth = READERS[fmt]
    dataset = reader(roots[fmt], "train", image_size=SIZE, audio=audio, use_rgb=use_rgb)
    assert dataset.max_depth == max_depth
    sample = dataset[len(dataset) - 1]
    cut = int(2 * max_depth / 340 * 44100)
    audio_shape = (2, cut) if audio == "waveform" else (2, SIZE, SIZE)
    assert sample["audio"].shape == audio_shape and sample["audio"].dtype == torch.float32
    assert sample["depth"].shape == (1, SIZE, SIZE) and sample["depth"].dtype == torch.float32
    assert sample["valid"].dtype == torch.bool
    assert torch.equal(sample["valid"], sample["depth"] > 0)
    assert 0.0 <= sample["depth"].min() and sample["depth"].max() <= max_depth
    assert 0 < sample["valid"].float().mean() < 1          # the trees have holes
    if use_rgb:
        assert sample["rgb"].shape == (3, SIZE, SIZE) and sample["rgb"].dtype == torch.float32
        assert 0.0 <= sample["rgb"].min() and sample["rgb"].max() <= 1.0
    else:
        assert "rgb" not in sample
    meta = sample["meta"]
    audio_keys = ["audio_path_left", "audio_path_right"] if fmt == "v1" else ["audio_path"]
    for key in audio_keys + ["depth_path", "camera_path"]:
        assert Path(meta[key]).is_file()
    assert isinstance(meta["index"], int) and isinstance(meta["location"], str)


def test_batches_with_default_collate(v2_root):
    dataset = BatvisionV2Dataset(v2_root, "train", image_size=SIZE, use_rgb=True)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["audio"].shape == (4, 2, SIZE, SIZE) and batch["rgb"].shape == (4, 3, SIZE, SIZE)


def _known_recording(depth_mm: float, frames: int) -> Recording:
    t = np.arange(frames) / 44100
    audio = np.stack([0.5 * np.sin(2 * np.pi * 1000 * t), 0.25 * np.sin(2 * np.pi * 3000 * t)])
    depth = np.full((16, 16), depth_mm)
    depth[2:5, 3:9] = 0.0
    rgb = np.full((16, 16, 3), (200, 40, 90), dtype=np.uint8)
    return Recording(audio=audio, depth_mm=depth, rgb=rgb, time=1.7e9)


@pytest.mark.parametrize("fmt", ["v1", "v2"])
def test_exact_values(tmp_path, fmt):
    """Waveform is the stored audio, depth is metres, a hole is 0, rgb is the image in [0, 1]."""
    frames = 20_000 if fmt == "v2" else 6_000
    rec = _known_recording(4321.0, frames)
    writer = V2Writer(tmp_path) if fmt == "v2" else V1Writer(tmp_path)
    writer.add("Room", "test", 5, rec)
    writer.close()
    reader, _ = READERS[fmt]
    sample = reader(tmp_path, "test", image_size=16, audio="waveform", use_rgb=True)[0]
    stored = (audio_to_int32(rec.audio).T / 2.0 ** 31 if fmt == "v2" else rec.audio)
    cut = sample["audio"].shape[1]
    np.testing.assert_array_equal(sample["audio"].numpy(), stored[:, :cut].astype(np.float32))
    expected = np.full((16, 16), np.float32(4.321))
    expected[2:5, 3:9] = 0.0
    np.testing.assert_array_equal(sample["depth"][0].numpy(), expected)
    np.testing.assert_allclose(sample["rgb"].mean(dim=(1, 2)).numpy(),
                               np.array([200, 40, 90]) / 255, atol=3 / 255)
    assert sample["meta"]["location"] == "Room"
    assert sample["meta"]["index"] == (5 if fmt == "v2" else 0)


def test_v2_locations_are_sorted_and_order_is_deterministic(tmp_path, write_v2_tree):
    written = ["Zeta_Hall", "alpha_room", "Attic", "Mid_Corridor"]    # out of order on purpose
    v2_root = write_v2_tree(tmp_path / "bv2", locations=written, counts={"train": 2})
    dataset = BatvisionV2Dataset(v2_root, "train", image_size=SIZE)
    assert dataset.locations == sorted(written)
    order = [(r.location, r.index) for r in dataset.records]
    assert [loc for loc, _ in order] == sorted(loc for loc, _ in order)
    assert order == [(r.location, r.index) for r in
                     BatvisionV2Dataset(v2_root, "train", image_size=SIZE).records]
    metas = [dataset[i]["meta"] for i in range(len(dataset))]
    assert [(m["location"], m["index"]) for m in metas] == order


def test_v2_location_filter(v2_root):
    keep = ["Salle_B", "Attic_A"]
    dataset = BatvisionV2Dataset(v2_root, "val", image_size=SIZE, locations=keep)
    assert dataset.locations == sorted(keep)
    assert len(dataset) == 2 * len(keep)
    assert {r.location for r in dataset.records} == set(keep)
    with pytest.raises(DataError, match="Kitchen"):
        BatvisionV2Dataset(v2_root, "val", locations=["Salle_B", "Kitchen"])


def test_v1_location_filter_and_csv_order(v1_root):
    everything = BatvisionV1Dataset(v1_root, "train", image_size=SIZE)
    assert [r.index for r in everything.records] == list(range(len(everything)))
    assert len(everything.locations) == 2
    first = everything.locations[0]
    dataset = BatvisionV1Dataset(v1_root, "train", image_size=SIZE, locations=[first])
    assert {r.location for r in dataset.records} == {first}
    assert len(dataset) == len(everything) // 2


def test_negative_index_and_out_of_range(v2_root):
    dataset = BatvisionV2Dataset(v2_root, "test", image_size=SIZE)
    assert dataset[-1]["meta"] == dataset[len(dataset) - 1]["meta"]
    with pytest.raises(IndexError):
        dataset[len(dataset)]


def test_bad_arguments(v2_root):
    with pytest.raises(ValueError, match="audio mode"):
        BatvisionV2Dataset(v2_root, "train", audio="cochleagram")
    with pytest.raises(ValueError, match="recipe"):
        BatvisionV2Dataset(v2_root, "train", recipe="fancy")
    with pytest.raises(ValueError, match="STFT needs"):
        BatvisionV2Dataset(v2_root, "train", max_depth=0.5)


def _touch(path: Path, seconds: float) -> None:
    """Set ``path``'s modification time explicitly (coarse clocks would hide a rewrite)."""
    os.utime(path, ns=(int(seconds * 1e9), int(seconds * 1e9)))


@pytest.mark.parametrize("fmt", ["v1", "v2"])
def test_data_fingerprint_follows_the_files(roots, fmt, tmp_path):
    reader, _ = READERS[fmt]
    root = roots[fmt]
    train = reader(root, "train", image_size=SIZE)
    fingerprint = train.data_fingerprint
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    assert reader(root, "train", image_size=SIZE, use_rgb=True).data_fingerprint == fingerprint
    assert reader(root, "val", image_size=SIZE).data_fingerprint != fingerprint
    # Moving the tree with its times kept (copy2) keeps the fingerprint: the root is not in it.
    moved = shutil.copytree(root, tmp_path / "moved")
    assert reader(moved, "train", image_size=SIZE).data_fingerprint == fingerprint

    record = train.records[-1]
    for path in (record.audio_paths[-1], record.depth_path, record.camera_path):
        stat = path.stat()
        _touch(path, stat.st_mtime + 1)       # same size, same bytes, another time
        assert reader(root, "train", image_size=SIZE).data_fingerprint != fingerprint
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert reader(root, "train", image_size=SIZE).data_fingerprint == fingerprint
    record.depth_path.unlink()               # a missing file is part of the picture too
    assert reader(root, "train", image_size=SIZE).data_fingerprint != fingerprint


def test_data_fingerprint_covers_the_csv_bytes(v2_root):
    fingerprint = BatvisionV2Dataset(v2_root, "test", image_size=SIZE).data_fingerprint
    csv_path = v2_root / "Attic_A" / "test.csv"
    stat = csv_path.stat()
    csv_path.write_text(csv_path.read_text().replace(".504", ".505"))   # a time column only
    _touch(csv_path, stat.st_mtime)
    assert BatvisionV2Dataset(v2_root, "test", image_size=SIZE).data_fingerprint != fingerprint
    # A location filter changes which CSVs and files the split covers.
    assert BatvisionV2Dataset(v2_root, "test", image_size=SIZE,
                              locations=["Attic_A"]).data_fingerprint != fingerprint


def test_replaced_wav_is_not_served_from_a_stale_cache(v2_root, tmp_path):
    """Regenerated data in the same folder gets a new cache (the CSVs alone did not change)."""
    cache = tmp_path / "cache"
    dataset = BatvisionV2Dataset(v2_root, "test", image_size=SIZE, audio="waveform",
                                 cache_dir=cache)
    before = dataset[0]["audio"]
    path = dataset.records[0].audio_paths[0]
    wavfile.write(path, 44_100, np.full((20_000, 2), 2 ** 28, dtype=np.int32))
    again = BatvisionV2Dataset(v2_root, "test", image_size=SIZE, audio="waveform",
                               cache_dir=cache)
    assert not torch.equal(again[0]["audio"], before)
    assert torch.all(again[0]["audio"] == 2 ** 28 / 2 ** 31)
