"""The preprocessing cache: compact, equal to the source within its stated bounds, keyed by every
parameter, built once and atomically, repaired when corrupt."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import pickle
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from datasets import BatvisionV1Dataset, BatvisionV2Dataset
from datasets.cache import (CACHE_FORMAT_VERSION, EXACT, MANIFEST, META_FILE, MM_UINT16,
                            SCALED_FLOAT16, SCALED_UINT8, TMP_MARK, UNIT_UINT8, SampleCache,
                            StoredForm, cache_folder, open_or_build, read_manifest)
from datasets.errors import DataError
from datasets.sample import Sample

SIZE = 32


# --------------------------------------------------------------------------------------------
# Helpers

def cache_folders(cache_dir: Path) -> List[str]:
    """Names of the cache folders (not the lock files) under ``cache_dir``."""
    return sorted(p.name for p in cache_dir.iterdir() if p.is_dir()) if cache_dir.exists() else []


def the_cache(cache_dir: Path) -> Path:
    (name,) = cache_folders(cache_dir)
    return cache_dir / name


def assert_within_bounds(got: Sample, want: Sample,
                         audio_form: StoredForm = SCALED_FLOAT16) -> None:
    """Cached ``got`` equals uncached ``want`` within the bounds that ``datasets.cache`` states
    (for spectrogram audio: those of ``audio_form``)."""
    assert got.keys() == want.keys()
    assert got["meta"] == want["meta"]
    assert torch.equal(got["valid"], want["valid"])      # holes exactly where they were
    for key in want.keys() - {"meta", "valid"}:
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        w = want[key].double()
        error = (got[key].double() - w).abs()
        if key == "rgb":
            bound = torch.full_like(w, 0.5 / 255 + 2 ** -24)
        elif key == "depth":                              # 0.5 mm, + float32 rounding at 30 m
            bound = torch.where(w >= 5e-4, 5e-4 + 1e-6, 1e-3)
        elif key == "audio" and w.ndim == 3 and audio_form == SCALED_UINT8:
            bound = torch.full_like(w, w.max() / 510 + 2 ** -23 * w.max())
        elif key == "audio" and w.ndim == 3:
            bound = 2 ** -11 * w.abs() + 2 ** -39 * w.abs().max()
        else:
            bound = torch.zeros_like(w)
        assert (error <= bound).all(), f"{key}: max error {error.max():.3g}"


def fake_sample(i: int) -> Sample:
    """A small deterministic sample: (2, 8, 8) audio, depth up to 10 m with a column of holes,
    rgb."""
    generator = torch.Generator().manual_seed(i)
    depth = torch.rand(1, 8, 8, generator=generator) * 10.0
    depth[..., 0] = 0.0
    return {"audio": torch.rand(2, 8, 8, generator=generator) * 10, "depth": depth,
            "valid": depth > 0, "rgb": torch.rand(3, 8, 8, generator=generator),
            "meta": {"index": i}}


class LoggedSource:
    """``load_sample`` of fake samples that appends ``<pid> <i>`` to ``log`` per call (picklable,
    for other processes); ``delay_s`` per sample makes concurrent builds overlap."""

    def __init__(self, log: Path, delay_s: float = 0.0, length: int = 6) -> None:
        self.log, self.delay_s, self.length = log, delay_s, length

    def __call__(self, i: int) -> Sample:
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {i}\n")
        time.sleep(self.delay_s)
        return fake_sample(i)

    def calls(self) -> List[Tuple[int, int]]:
        """(pid, index) per call so far."""
        if not self.log.exists():
            return []
        return [(int(pid), int(i)) for pid, i in map(str.split, self.log.read_text().splitlines())]


@pytest.fixture
def source(tmp_path: Path) -> LoggedSource:
    return LoggedSource(tmp_path / "calls.log")


PARAMS = {"test": "fake"}


# --------------------------------------------------------------------------------------------
# Stored forms and their bounds

@pytest.mark.parametrize("fmt, audio, use_rgb, recipe", [
    ("v2", "spectrogram", True, "default"), ("v2", "waveform", False, "default"),
    ("v1", "mel", True, "default"), ("v2", "spectrogram", True, "official")])
def test_cached_sample_equals_source_within_bounds(tmp_path, v1_root, v2_root, fmt, audio,
                                                   use_rgb, recipe):
    reader, root = (BatvisionV2Dataset, v2_root) if fmt == "v2" else (BatvisionV1Dataset, v1_root)
    kwargs = dict(image_size=SIZE, audio=audio, use_rgb=use_rgb, recipe=recipe)
    cached = reader(root, "train", cache_dir=tmp_path / "cache", **kwargs)
    source = reader(root, "train", **kwargs)
    assert len(cached) == len(source)
    audio_form = read_manifest(the_cache(tmp_path / "cache")).arrays["audio"].form
    # Log-scaled spectrograms (the default recipe) in 8 bits; linear ones (official) in float16.
    assert audio_form == {"waveform": EXACT}.get(
        audio, SCALED_UINT8 if recipe == "default" else SCALED_FLOAT16)
    for i in range(len(source)):
        got, want = cached[i], source.load_sample(i)
        assert_within_bounds(got, want, audio_form)
        assert (want["depth"] == 0).any()                # the trees have holes to preserve
        if fmt == "v2" and recipe == "default":          # uint16 mm, nearest resize: exact
            assert torch.equal(got["depth"], want["depth"])
        if audio == "waveform":
            assert torch.equal(got["audio"], want["audio"])
    assert len(cache_folders(tmp_path / "cache")) == 1


def test_stored_dtypes_and_bytes(tmp_path, v2_root):
    dataset = BatvisionV2Dataset(v2_root, "val", image_size=SIZE, use_rgb=True,
                                 cache_dir=tmp_path / "cache")
    folder = the_cache(tmp_path / "cache")
    n = len(dataset)
    arrays = read_manifest(folder).arrays
    assert {k: (a.form, a.dtype.name) for k, a in arrays.items()} == {
        "audio": (SCALED_UINT8, "uint8"), "depth": (MM_UINT16, "uint16"),
        "rgb": (UNIT_UINT8, "uint8")}
    # Per sample: audio 2·32·32 uint8 + a float32 scale, depth 32·32 uint16, rgb 3·32·32 uint8.
    assert {k: a.stored_bytes for k, a in arrays.items()} == {
        "audio": 2048 + 4, "depth": 2048, "rgb": 3072}
    assert {k: a.sample_bytes for k, a in arrays.items()} == {
        "audio": 8192, "depth": 4096, "rgb": 12288}
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert sizes["audio.bin"] == n * 2048 and sizes["audio.scale.bin"] == n * 4
    assert sizes["depth.bin"] == n * 2048 and sizes["rgb.bin"] == n * 3072
    waveform = BatvisionV2Dataset(v2_root, "test", image_size=SIZE, audio="waveform",
                                  cache_dir=tmp_path / "wave")
    spec = read_manifest(the_cache(tmp_path / "wave")).arrays["audio"]
    assert (spec.form, spec.dtype.name) == (EXACT, "float32")
    assert spec.shape == (len(waveform), 2, 7782)        # V2's cut at 30 m


def test_depth_form_keeps_holes_and_millimetres():
    x = np.array([0.0, 1e-4, 5e-4, 1.5e-3, 1.2344, 30.0, 65.535], dtype=np.float32)
    stored, _ = MM_UINT16.encode(x)
    # 0.1 mm and 0.5 mm are valid depths: stored as 1 mm, never as a hole.
    assert stored.tolist() == [0, 1, 1, 2, 1234, 30000, 65535]
    assert MM_UINT16.decode(stored, 1.0).numpy().tolist() == np.array(
        [0, 0.001, 0.001, 0.002, 1.234, 30.0, 65.535], dtype=np.float32).tolist()
    mm = np.arange(65536, dtype=np.uint16)               # what the recipes compute from mm
    assert np.array_equal(MM_UINT16.decode(mm, 1.0).numpy(), mm.astype(np.float32) / 1000.0)
    for outside in (65.536, -0.001, np.nan):
        assert MM_UINT16.encode(np.array([1.0, outside], dtype=np.float32)) is None


def test_rgb_form_rounds_to_the_nearest_8_bit_level():
    x = np.array([0.0, 1.0, 0.2, 0.5, 0.7], dtype=np.float32)
    stored, _ = UNIT_UINT8.encode(x)
    assert stored.tolist() == [0, 255, 51, 128, 178]     # 127.5 → 128 (even), 178.5 → 178
    assert np.abs(UNIT_UINT8.decode(stored, 1.0).numpy() - x).max() <= 0.5 / 255 + 2 ** -24
    assert UNIT_UINT8.encode(np.array([0.5, 1.01], dtype=np.float32)) is None


def test_audio_form_neither_overflows_nor_underflows():
    """Linear magnitudes of int16-scaled audio would be inf in plain float16; tiny ones 0."""
    x = np.array([0.0, 1e6, -3.0, 1e-3], dtype=np.float32)
    with np.errstate(over="ignore"):
        assert np.isinf(x.astype(np.float16)[1])
    stored, scale = SCALED_FLOAT16.encode(x)
    assert stored.dtype == np.float16 and scale == 32.0   # 1e6 / 32 = 31250 in [2**14, 2**15)
    decoded = SCALED_FLOAT16.decode(stored, scale).numpy()
    # 31250 rounds to 31248 (float16 spacing 16 there); -3/32 is exact in float16.
    assert decoded[:3].tolist() == [0.0, 999_936.0, -3.0]
    assert abs(decoded[3] - 1e-3) <= 2 ** -39 * 1e6       # subnormal: the absolute bound
    tiny = np.array([1e-3, 1e-9], dtype=np.float32)      # plain float16 flushes 1e-9 to 0
    stored, scale = SCALED_FLOAT16.encode(tiny)
    decoded = SCALED_FLOAT16.decode(stored, scale).numpy()
    assert np.abs(decoded - tiny).max() <= 2 ** -11 * 1e-3
    assert abs(decoded[1] - 1e-9) <= 2 ** -11 * 1e-9
    assert SCALED_FLOAT16.encode(np.array([1.0, np.inf], dtype=np.float32)) is None


def test_log_audio_form_rounds_to_255_levels_of_the_sample_peak() -> None:
    x = np.array([0.0, 10.0, 4.0, 0.02, 0.019, 9.99], dtype=np.float32)
    stored, scale = SCALED_UINT8.encode(x)
    assert stored.dtype == np.uint8 and scale == pytest.approx(10.0 / 255)
    assert stored.tolist() == [0, 255, 102, 1, 0, 255]  # 0.51 → 1; 0.48 → 0; 254.7 → 255
    decoded = SCALED_UINT8.decode(stored, scale).numpy()
    assert decoded[0] == 0.0 and decoded[1] == pytest.approx(10.0)
    assert np.abs(decoded - x).max() <= 10.0 / 510 + 2 ** -23 * 10.0
    assert SCALED_UINT8.encode(np.zeros(3, dtype=np.float32))[0].tolist() == [0, 0, 0]
    for outside in (-1e-3, np.inf, np.nan):                # non-negative and finite only
        assert SCALED_UINT8.encode(np.array([1.0, outside], dtype=np.float32)) is None


def test_the_callers_forms_choose_the_stored_form_and_the_cache_folder(tmp_path, source):
    default = open_or_build(tmp_path / "cache", "fake", PARAMS, 4, source)
    compact = open_or_build(tmp_path / "cache", "fake", PARAMS, 4, source,
                            forms={"audio": SCALED_UINT8})
    assert default.folder != compact.folder
    assert read_manifest(default.folder).arrays["audio"].form == SCALED_FLOAT16
    assert read_manifest(compact.folder).arrays["audio"].form == SCALED_UINT8
    for i in range(4):
        assert_within_bounds(compact[i], fake_sample(i), SCALED_UINT8)


def test_tensor_outside_its_form_is_stored_as_it_is(tmp_path, source):
    """A depth beyond 65.535 m restarts the build with depth stored exactly, never clipped."""
    def far_depth(i: int) -> Sample:
        sample = source(i)
        if i == 2:
            sample["depth"][0, 0, 1] = 70.0
        return sample

    with pytest.warns(UserWarning, match=r"sample 2's depth is outside the range of mm-uint16"):
        cache = open_or_build(tmp_path / "cache", "fake", PARAMS, 4, far_depth)
    assert [i for _, i in source.calls()] == [0, 1, 2, 0, 1, 2, 3]
    arrays = read_manifest(cache.folder).arrays
    assert arrays["depth"].form == EXACT and arrays["audio"].form == SCALED_FLOAT16
    for i in range(4):
        assert torch.equal(cache[i]["depth"], far_depth(i)["depth"])


def test_sample_of_another_shape_is_one_line_error(tmp_path, source):
    def odd_shape(i: int) -> Sample:
        sample = source(i)
        if i == 1:
            sample["audio"] = sample["audio"][:, :4]
        return sample

    with pytest.raises(DataError, match=r"sample 1 .* audio float32 \(2, 4, 8\)") as error:
        open_or_build(tmp_path / "cache", "fake", PARAMS, 3, odd_shape)
    assert "\n" not in str(error.value)
    assert cache_folders(tmp_path / "cache") == []


# --------------------------------------------------------------------------------------------
# Keys

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
    source = BatvisionV2Dataset(v2_root, **{**base, **change})
    audio_form = read_manifest(changed._cache.folder).arrays["audio"].form
    for i in range(len(source)):
        assert_within_bounds(changed[i], source.load_sample(i), audio_form)


def test_changed_split_csv_never_reuses_a_stale_cache(tmp_path, v2_root):
    cache_dir = tmp_path / "cache"
    first = BatvisionV2Dataset(v2_root, "train", image_size=SIZE, cache_dir=cache_dir)
    csv_path = v2_root / "Salle_B" / "train.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    csv_path.write_text("".join(lines[:-1]))       # one sample fewer
    second = BatvisionV2Dataset(v2_root, "train", image_size=SIZE, cache_dir=cache_dir)
    assert len(second) == len(first) - 1
    assert len(cache_folders(cache_dir)) == 2


def test_same_parameters_of_another_length_get_another_folder(tmp_path):
    assert cache_folder(tmp_path, "x", PARAMS, 3) != cache_folder(tmp_path, "x", PARAMS, 4)


# --------------------------------------------------------------------------------------------
# Corrupt caches, failed and killed builds

def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _edit_manifest(folder: Path, edit: Callable[[Dict], None]) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    edit(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


# name → (the file reported, how the cache folder is damaged)
CORRUPTIONS: Dict[str, Tuple[str, Callable[[Path], object]]] = {
    "manifest truncated": (MANIFEST, lambda f: _truncate(f / MANIFEST, 40)),
    "manifest missing": (MANIFEST, lambda f: (f / MANIFEST).unlink()),
    "manifest of another version": (MANIFEST, lambda f: _edit_manifest(
        f, lambda m: m.update(version=1))),
    "manifest with an unknown form": (MANIFEST, lambda f: _edit_manifest(
        f, lambda m: m["arrays"]["rgb"].update(form="jpeg"))),
    "manifest shape unlike the file": ("depth.bin", lambda f: _edit_manifest(
        f, lambda m: m["arrays"]["depth"].update(shape=[4, 1, 8, 9]))),
    "meta truncated": (META_FILE, lambda f: _truncate(f / META_FILE, 30)),
    "meta of another length": (META_FILE, lambda f: (f / META_FILE).write_text("[{}]")),
    "array truncated": ("depth.bin", lambda f: _truncate(f / "depth.bin", 100)),
    "array missing": ("rgb.bin", lambda f: (f / "rgb.bin").unlink()),
    "scale missing": ("audio.scale.bin", lambda f: (f / "audio.scale.bin").unlink()),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_cache_is_named_and_rebuilt(tmp_path, source, corruption):
    cache = open_or_build(tmp_path / "cache", "fake", PARAMS, 4, source)
    bad_file, damage = CORRUPTIONS[corruption]
    damage(cache.folder)
    with pytest.raises(DataError) as error:                  # detected on opening
        SampleCache(cache.folder, PARAMS, 4)
    assert Path(error.value.path) == cache.folder / bad_file and "\n" not in str(error.value)

    with pytest.warns(UserWarning, match=f"{bad_file}: .*; rebuilding the cache"):
        rebuilt = open_or_build(tmp_path / "cache", "fake", PARAMS, 4, source)
    assert len(source.calls()) == 8                          # built twice
    for i in range(4):
        assert_within_bounds(rebuilt[i], fake_sample(i))
    assert cache_folders(tmp_path / "cache") == [cache.folder.name]   # nothing left beside it
    open_or_build(tmp_path / "cache", "fake", PARAMS, 4, source)
    assert len(source.calls()) == 8                          # sound again: reused


def test_failed_build_leaves_nothing_to_reuse(tmp_path, source):
    def dies_midway(i: int) -> Sample:
        if i == 2:
            raise KeyboardInterrupt
        return source(i)

    with pytest.raises(KeyboardInterrupt):
        open_or_build(tmp_path / "cache", "fake", PARAMS, 4, dies_midway)
    assert cache_folders(tmp_path / "cache") == []
    cache = open_or_build(tmp_path / "cache", "fake", PARAMS, 4, source)
    assert len(cache) == 4 and (cache.folder / MANIFEST).is_file()


def test_full_disk_is_one_line_error(tmp_path, source, monkeypatch):
    def no_space(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(DataError, match=r"no space left for the cache fake-\w+: audio.bin needs"):
        open_or_build(tmp_path / "cache", "fake", PARAMS, 4, source)
    assert cache_folders(tmp_path / "cache") == []


def test_unwritable_cache_dir_is_one_line_error(tmp_path, source):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(DataError, match="cannot write the cache folder"):
        open_or_build(tmp_path / "file" / "cache", "fake", PARAMS, 4, source)


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _leftover(folder: Path, host: str, pid: int) -> Path:
    tmp = folder.with_name(f"{folder.name}{TMP_MARK}{host}-{pid}-0badc0de")
    tmp.mkdir(parents=True)
    (tmp / "audio.bin").write_bytes(b"half a build")
    return tmp


def test_next_build_removes_leftovers_of_killed_builds(tmp_path, source):
    folder = cache_folder(tmp_path / "cache", "fake", PARAMS, 4)
    here = socket.gethostname()
    dead = _leftover(folder, here, _dead_pid())
    live = _leftover(folder, here, os.getpid())     # a live pid, but not building: no lock held
    other_host = _leftover(folder, "node-7.cluster", 12)
    other_cache = _leftover(cache_folder(tmp_path / "cache", "fake", PARAMS, 5), here, 1)
    open_or_build(tmp_path / "cache", "fake", PARAMS, 4, source)
    assert not dead.exists() and not live.exists() and not other_host.exists()
    assert other_cache.exists()                     # another cache's business


def test_without_locks_only_dead_builders_of_this_host_are_removed(tmp_path, source,
                                                                   monkeypatch):
    def cannot_lock(handle, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", cannot_lock)
    folder = cache_folder(tmp_path / "cache", "fake", PARAMS, 4)
    here = socket.gethostname()
    dead = _leftover(folder, here, _dead_pid())
    live = _leftover(folder, here, os.getpid())     # may be a live build: kept
    other_host = _leftover(folder, "node-7.cluster", 12)
    with pytest.warns(UserWarning, match="cannot lock"):
        cache = open_or_build(tmp_path / "cache", "fake", PARAMS, 4, source)
    assert not dead.exists() and live.exists() and other_host.exists()
    assert_within_bounds(cache[3], fake_sample(3))


def _build_slowly(cache_dir: Path, log: Path) -> None:
    open_or_build(cache_dir, "fake", PARAMS, 4, LoggedSource(log, delay_s=60))


def test_sigkilled_build_is_cleaned_up_by_the_next_one(tmp_path, source):
    """kill -9 during a build: the lock dies with the process, the next build removes its folder."""
    cache_dir = tmp_path / "cache"
    log = tmp_path / "killed.log"
    process = mp.get_context("fork").Process(target=_build_slowly, args=(cache_dir, log))
    process.start()
    try:
        deadline = time.monotonic() + 30
        while not log.exists():                    # the first sample is being loaded
            assert process.is_alive() and time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        process.kill()                             # SIGKILL
        process.join()
    assert process.exitcode == -signal.SIGKILL
    (leftover,) = cache_folders(cache_dir)
    assert f"{TMP_MARK}{socket.gethostname()}-{process.pid}-" in leftover
    cache = open_or_build(cache_dir, "fake", PARAMS, 4, source)
    assert cache_folders(cache_dir) == [cache.folder.name]
    assert_within_bounds(cache[0], fake_sample(0))


def test_cached_dataset_pickles_for_workers(tmp_path, v2_root):
    dataset = BatvisionV2Dataset(v2_root, "test", image_size=SIZE, cache_dir=tmp_path / "cache")
    dataset[0]                                     # maps the arrays in this process
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < 100_000    # memory maps are not copied into the pickle
    assert torch.equal(clone[0]["depth"], dataset[0]["depth"])


# --------------------------------------------------------------------------------------------
# Two processes

def _rank_opens_cache(rank: int, tmp_path: Path, world_size: int) -> None:
    """One torchrun-like rank: join a gloo group, open the cache at the same moment as the
    others, save what it reads."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}",
                            rank=rank, world_size=world_size)
    try:
        dist.barrier()                            # start together: the builds would overlap
        source = LoggedSource(tmp_path / "calls.log", delay_s=0.1)
        cache = open_or_build(tmp_path / "cache", "fake", PARAMS, source.length, source)
        torch.save([cache[i] for i in range(len(cache))], tmp_path / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_build_once_and_both_read(tmp_path):
    # fork, as DataLoader workers: the children inherit the imports (spawn re-imports torch).
    mp.start_processes(_rank_opens_cache, args=(tmp_path, 2), nprocs=2, start_method="fork")
    calls = LoggedSource(tmp_path / "calls.log").calls()
    assert sorted(i for _, i in calls) == list(range(6))    # each sample loaded once
    assert len({pid for pid, _ in calls}) == 1              # by one process
    for rank in (0, 1):
        samples = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for i, sample in enumerate(samples):
            assert_within_bounds(sample, fake_sample(i))


def test_a_build_names_the_older_format_caches_it_will_never_read(tmp_path, source):
    cache_dir = tmp_path / "cache"
    for folder, version in (("fake-old", CACHE_FORMAT_VERSION - 1), ("other-old", 1),
                            ("fake-current", CACHE_FORMAT_VERSION)):
        (cache_dir / folder).mkdir(parents=True)
        (cache_dir / folder / MANIFEST).write_text(json.dumps({"version": version}))
        (cache_dir / folder / "depth.bin").write_bytes(bytes(2 ** 20))
    with pytest.warns(UserWarning) as warned:
        cache = open_or_build(cache_dir, "fake", PARAMS, 4, source)
    message, = [str(w.message) for w in warned]
    assert message.startswith(f"{cache_dir}: 1 fake cache(s) of an older format ("
                              "1.0 MiB: fake-old) are no longer read")
    assert (cache_dir / "fake-old").is_dir()                 # left to the user
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_or_build(cache_dir, "fake", PARAMS, 4, source).folder == cache.folder
