"""The preprocessing cache: equal to the source, keyed by every parameter, built atomically."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from datasets import BatvisionV1Dataset, BatvisionV2Dataset
from datasets.cache import MANIFEST, open_or_build

SIZE = 32


def cache_folders(cache_dir):
    return sorted(p.name for p in cache_dir.iterdir()) if cache_dir.exists() else []


def assert_same_samples(cached, source):
    assert len(cached) == len(source)
    for i in range(len(source)):
        got, want = cached[i], source.load_sample(i)
        assert got.keys() == want.keys()
        for key in want:
            if key == "meta":
                assert got[key] == want[key]
            else:
                assert got[key].dtype == want[key].dtype
                assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("fmt, audio, use_rgb", [
    ("v2", "spectrogram", True), ("v2", "waveform", False), ("v1", "mel", True)])
def test_cached_sample_equals_source(tmp_path, v1_root, v2_root, fmt, audio, use_rgb):
    reader, root = (BatvisionV2Dataset, v2_root) if fmt == "v2" else (BatvisionV1Dataset, v1_root)
    kwargs = dict(image_size=SIZE, audio=audio, use_rgb=use_rgb)
    cached = reader(root, "train", cache_dir=tmp_path / "cache", **kwargs)
    assert_same_samples(cached, reader(root, "train", **kwargs))
    assert len(cache_folders(tmp_path / "cache")) == 1


def test_cache_is_reused_without_reading_the_source(tmp_path, v2_root, monkeypatch):
    BatvisionV2Dataset(v2_root, "val", image_size=SIZE, cache_dir=tmp_path / "cache")

    def no_source_reads(self, i):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(BatvisionV2Dataset, "load_sample", no_source_reads)
    again = BatvisionV2Dataset(v2_root, "val", image_size=SIZE, cache_dir=tmp_path / "cache")
    assert again[0]["audio"].shape == (2, SIZE, SIZE)
    assert len(cache_folders(tmp_path / "cache")) == 1


@pytest.mark.parametrize("change", [
    {"image_size": 16}, {"audio": "mel"}, {"use_rgb": True}, {"max_depth": 20.0},
    {"recipe": "official"}, {"locations": ["Salle_B"]}, {"split": "test"}])
def test_changed_parameter_never_reuses_a_stale_cache(tmp_path, v2_root, change):
    cache_dir = tmp_path / "cache"
    base = dict(split="val", image_size=SIZE, audio="spectrogram", use_rgb=False,
                max_depth=None, recipe="default", locations=None)
    BatvisionV2Dataset(v2_root, cache_dir=cache_dir, **base)
    changed = BatvisionV2Dataset(v2_root, cache_dir=cache_dir, **{**base, **change})
    assert len(cache_folders(cache_dir)) == 2
    assert_same_samples(changed, BatvisionV2Dataset(v2_root, **{**base, **change}))


def test_changed_split_csv_never_reuses_a_stale_cache(tmp_path, v2_root):
    cache_dir = tmp_path / "cache"
    first = BatvisionV2Dataset(v2_root, "train", image_size=SIZE, cache_dir=cache_dir)
    csv_path = v2_root / "Salle_B" / "train.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    csv_path.write_text("".join(lines[:-1]))       # one sample fewer
    second = BatvisionV2Dataset(v2_root, "train", image_size=SIZE, cache_dir=cache_dir)
    assert len(second) == len(first) - 1
    assert len(cache_folders(cache_dir)) == 2


def test_failed_build_leaves_nothing_to_reuse(tmp_path, v2_root):
    source = BatvisionV2Dataset(v2_root, "train", image_size=SIZE)
    cache_dir = tmp_path / "cache"
    params = {"test": "failed build"}

    def dies_midway(i):
        if i == 2:
            raise KeyboardInterrupt
        return source.load_sample(i)

    with pytest.raises(KeyboardInterrupt):
        open_or_build(cache_dir, "v2-train", params, len(source), dies_midway)
    assert cache_folders(cache_dir) == []
    cache = open_or_build(cache_dir, "v2-train", params, len(source), source.load_sample)
    assert len(cache) == len(source) and (cache.folder / MANIFEST).is_file()


def test_leftover_of_a_killed_build_is_ignored(tmp_path, v2_root):
    """A SIGKILLed build leaves only its temporary folder, which is never read."""
    source = BatvisionV2Dataset(v2_root, "train", image_size=SIZE)
    cache_dir = tmp_path / "cache"
    params = {"test": "killed build"}
    cache = open_or_build(cache_dir, "v2-train", params, len(source), source.load_sample)
    leftover = cache.folder.with_name(cache.folder.name + ".tmp-killed")
    leftover.mkdir()
    np.save(leftover / "audio.npy", np.zeros((1, 2, SIZE, SIZE), dtype=np.float32))
    cache.folder.rename(cache_dir / "moved-away")
    rebuilt = open_or_build(cache_dir, "v2-train", params, len(source), source.load_sample)
    assert torch.equal(rebuilt[0]["audio"], source.load_sample(0)["audio"])


def test_cached_dataset_pickles_for_workers(tmp_path, v2_root):
    dataset = BatvisionV2Dataset(v2_root, "test", image_size=SIZE, cache_dir=tmp_path / "cache")
    dataset[0]                                     # maps the arrays in this process
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < 100_000    # memory maps are not copied into the pickle
    assert torch.equal(clone[0]["depth"], dataset[0]["depth"])
