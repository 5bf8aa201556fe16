"""Every bad input gives a one-line DataError naming the offending file; never a silent sample.

Also: the same line from DataLoader workers, the damage found by fuzzing, label sanity, and
``--dataset auto`` (detects a layout, never writes into a folder the project did not make).
"""
from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch
from scipy.io import wavfile
from torch.utils.data import DataLoader

from datasets import BatvisionV1Dataset, BatvisionV2Dataset, DataError, batvision
from datasets.batvision import check_labels
from common.errors import UsageError
from datasets.registry import detect_dataset, resolve_dataset
from training.data import resolve_data_root
from training.device import DistContext

SIZE = 32


def assert_names(error: pytest.ExceptionInfo, path: Path) -> None:
    message = str(error.value)
    assert str(path) in message and "\n" not in message


def drop_column(csv_path: Path, column: str) -> None:
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    fields = [c for c in rows[0] if c != column]
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def first_record(dataset):
    return dataset.records[0]


@pytest.mark.parametrize("reader", [BatvisionV1Dataset, BatvisionV2Dataset])
def test_missing_root(tmp_path, reader):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as error:
        reader(root, "train")
    assert_names(error, root)


def test_missing_split_csv_v1(v1_root):
    (v1_root / "val.csv").unlink()
    with pytest.raises(DataError) as error:
        BatvisionV1Dataset(v1_root, "val")
    assert_names(error, v1_root / "val.csv")


def test_location_folder_without_split_csv_v2(v2_root):
    (v2_root / "Attic_A" / "test.csv").unlink()
    with pytest.raises(DataError) as error:
        BatvisionV2Dataset(v2_root, "test")
    assert_names(error, v2_root / "Attic_A" / "test.csv")
    # Filtering the broken location out is fine.
    assert len(BatvisionV2Dataset(v2_root, "test", locations=["Salle_B", "Corridor_C"])) == 2


@pytest.mark.parametrize("column", ["depth file name", "audio path", "index"])
def test_missing_column_v2(v2_root, column):
    csv_path = v2_root / "Corridor_C" / "train.csv"
    drop_column(csv_path, column)
    with pytest.raises(DataError, match=column) as error:
        BatvisionV2Dataset(v2_root, "train")
    assert_names(error, csv_path)


def test_missing_column_v1(v1_root):
    drop_column(v1_root / "train.csv", "audio path right")
    with pytest.raises(DataError, match="audio path right") as error:
        BatvisionV1Dataset(v1_root, "train")
    assert_names(error, v1_root / "train.csv")


def test_v1_rgb_without_camera_column(v1_root):
    drop_column(v1_root / "train.csv", "camera path left")
    assert len(BatvisionV1Dataset(v1_root, "train")) == 6      # fine without rgb
    with pytest.raises(DataError, match="camera path left") as error:
        BatvisionV1Dataset(v1_root, "train", use_rgb=True)
    assert_names(error, v1_root / "train.csv")


def test_non_integer_index(v2_root):
    csv_path = v2_root / "Salle_B" / "val.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    lines[1] = "x" + lines[1]
    csv_path.write_text("".join(lines))
    with pytest.raises(DataError, match="index") as error:
        BatvisionV2Dataset(v2_root, "val")
    assert_names(error, csv_path)


@pytest.mark.parametrize("which", ["audio", "depth", "camera"])
def test_missing_file_v2(v2_root, which):
    dataset = BatvisionV2Dataset(v2_root, "train", image_size=SIZE, use_rgb=True)
    record = first_record(dataset)
    path = {"audio": record.audio_paths[0], "depth": record.depth_path,
            "camera": record.camera_path}[which]
    path.unlink()
    with pytest.raises(DataError, match="not found") as error:
        dataset[0]
    assert_names(error, path)


@pytest.mark.parametrize("ear", [0, 1])
def test_missing_file_v1(v1_root, ear):
    dataset = BatvisionV1Dataset(v1_root, "train", image_size=SIZE)
    path = first_record(dataset).audio_paths[ear]
    path.unlink()
    with pytest.raises(DataError) as error:
        dataset[0]
    assert_names(error, path)


@pytest.mark.parametrize("rate, data, problem", [
    (44_100, np.zeros((20_000, 1), dtype=np.int32), "channel"),
    (44_100, np.zeros((20_000, 4), dtype=np.int32), "channel"),
    (48_000, np.zeros((20_000, 2), dtype=np.int32), "sample rate"),
    (44_100, np.zeros((20_000, 2), dtype=np.int16), "int32"),
])
def test_wrong_wav_format(v2_root, rate, data, problem):
    dataset = BatvisionV2Dataset(v2_root, "train", image_size=SIZE)
    path = first_record(dataset).audio_paths[0]
    wavfile.write(path, rate, data)
    with pytest.raises(DataError, match=problem) as error:
        dataset[0]
    assert_names(error, path)


def test_corrupt_wav(v2_root):
    dataset = BatvisionV2Dataset(v2_root, "train", image_size=SIZE)
    path = first_record(dataset).audio_paths[0]
    path.write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(DataError) as error:
        dataset[0]
    assert_names(error, path)


def test_truncated_wav(v2_root):
    """scipy alone returns the frames it found with a mere warning: not a silent short sample."""
    dataset = BatvisionV2Dataset(v2_root, "train", image_size=SIZE)
    path = first_record(dataset).audio_paths[0]
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(DataError, match="truncated") as error:
        dataset[0]
    assert_names(error, path)


def test_unreadable_csv(v1_root):
    (v1_root / "test.csv").write_bytes(b"\xff\xfe\x00 not utf-8 \x81")
    with pytest.raises(DataError, match="CSV") as error:
        BatvisionV1Dataset(v1_root, "test")
    assert_names(error, v1_root / "test.csv")


def test_v2_audio_too_short(v2_root):
    """Shorter than the 7,782-sample echo window at 30 m: refused, not stretched or padded."""
    dataset = BatvisionV2Dataset(v2_root, "train", image_size=SIZE)
    path = first_record(dataset).audio_paths[0]
    wavfile.write(path, 44_100, np.zeros((5_000, 2), dtype=np.int32))
    with pytest.raises(DataError, match="too short") as error:
        dataset[0]
    assert_names(error, path)


def test_v1_audio_too_short_for_the_stft(tmp_path, write_v1_tree):
    """The official V1 recipe does not cut; the STFT's reflect padding needs 257 samples."""
    root = write_v1_tree(tmp_path / "bv1", frames=200)
    dataset = BatvisionV1Dataset(root, "train", image_size=SIZE, recipe="official")
    with pytest.raises(DataError, match="too short") as error:
        dataset[0]
    assert_names(error, first_record(dataset).audio_paths[0])


def test_v1_unequal_ear_lengths(v1_root):
    dataset = BatvisionV1Dataset(v1_root, "train", image_size=SIZE)
    right = first_record(dataset).audio_paths[1]
    np.save(right, np.zeros(4_000, dtype=np.float32))
    with pytest.raises(DataError, match="left ear") as error:
        dataset[0]
    assert_names(error, right)


@pytest.mark.parametrize("which", ["depth", "left ear"])
def test_corrupt_npy(v1_root, which):
    dataset = BatvisionV1Dataset(v1_root, "train", image_size=SIZE)
    record = first_record(dataset)
    path = record.depth_path if which == "depth" else record.audio_paths[0]
    path.write_bytes(b"\x93NUMPY this is not an array")
    with pytest.raises(DataError, match="corrupt") as error:
        dataset[0]
    assert_names(error, path)


@pytest.mark.parametrize("array", [np.zeros((2, 8, 8), dtype=np.uint16),
                                   np.array(["a", "b"]).reshape(1, 2)])
def test_depth_not_a_numeric_image(v2_root, array):
    dataset = BatvisionV2Dataset(v2_root, "train", image_size=SIZE)
    path = first_record(dataset).depth_path
    np.save(path, array)
    with pytest.raises(DataError, match="depth map") as error:
        dataset[0]
    assert_names(error, path)


def test_corrupt_jpeg(v2_root):
    dataset = BatvisionV2Dataset(v2_root, "train", image_size=SIZE, use_rgb=True)
    path = first_record(dataset).camera_path
    path.write_bytes(path.read_bytes()[:200])        # truncated
    with pytest.raises(DataError, match="corrupt") as error:
        dataset[0]
    assert_names(error, path)
    path.write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match="corrupt") as error:
        dataset[0]
    assert_names(error, path)


def test_stray_file_in_v2_root_is_skipped_with_a_warning(v2_root):
    stray = v2_root / "notes.txt"
    stray.write_text("not a location")
    with pytest.warns(UserWarning, match="notes.txt") as record:
        dataset = BatvisionV2Dataset(v2_root, "train", image_size=SIZE)
    assert str(stray) in str(record[0].message)
    assert len(dataset) == 9 and "notes.txt" not in dataset.locations
    stray.unlink()
    (v2_root / ".ipynb_checkpoints").mkdir()
    with pytest.warns(UserWarning, match="ipynb_checkpoints"):
        assert len(BatvisionV2Dataset(v2_root, "train", image_size=SIZE)) == 9


def test_empty_split_is_an_error(v2_root):
    for location in ("Salle_B", "Attic_A", "Corridor_C"):
        csv_path = v2_root / location / "test.csv"
        csv_path.write_text(csv_path.read_text().splitlines(keepends=True)[0])
    with pytest.raises(DataError, match="no samples") as error:
        BatvisionV2Dataset(v2_root, "test")
    assert_names(error, v2_root)


# --- DataLoader workers --------------------------------------------------------------------

def _read_all(loader: DataLoader) -> None:
    """Every batch of ``loader``; a DataError is raised without the frames it came from. Those
    hold the loader's iterator, and an iterator with workers that the garbage collector frees
    later waits 5 s per worker to stop them: a 10 s stall in whichever test runs then."""
    try:
        list(loader)
    except DataError as error:
        raise error.with_traceback(None)


def test_data_error_from_a_worker_is_the_same_one_line(v2_root):
    """torch re-raises a worker's exception from its traceback text; the line must survive."""
    dataset = BatvisionV2Dataset(v2_root, "train", image_size=SIZE)
    path = dataset.records[5].audio_paths[0]
    path.unlink()
    with pytest.raises(DataError) as in_process:
        list(DataLoader(dataset, batch_size=2, num_workers=0))
    with pytest.raises(DataError) as from_worker:
        _read_all(DataLoader(dataset, batch_size=2, num_workers=2))
    assert str(from_worker.value) == str(in_process.value) == f"{path}: file not found"
    assert from_worker.value.path == str(path) and from_worker.value.problem == "file not found"


def test_data_error_pickles_with_its_fields():
    error = pickle.loads(pickle.dumps(DataError("/data/a: b.wav", "corrupt WAV (x: y)")))
    assert (error.path, error.problem) == ("/data/a: b.wav", "corrupt WAV (x: y)")
    assert str(error) == "/data/a: b.wav: corrupt WAV (x: y)"


def test_data_error_message_is_one_line():
    assert str(DataError("/f.npy", "corrupt .npy (Header is\nnot a dict)")) == \
        "/f.npy: corrupt .npy (Header is not a dict)"


@pytest.mark.slow
def test_training_with_workers_reports_the_bad_file_in_one_line(tmp_path, write_v2_tree):
    """The whole path: DataLoader workers → engine → user_errors, as the user runs it."""
    import train_binaural_attention

    root = write_v2_tree(tmp_path / "bv2", locations=("Loc",), counts={"train": 4, "val": 2,
                                                                      "test": 1})
    path = BatvisionV2Dataset(root, "train").records[2].audio_paths[0]
    path.write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(SystemExit) as exit_info:
        train_binaural_attention.main([
            "--data_root", str(root), "--image_size", "16", "--base_channels", "4",
            "--batch_size", "4", "--nb_epochs", "1", "--num_workers", "2", "--device", "cpu",
            "--num_val_images", "0", "--checkpoint_dir", str(tmp_path / "runs")])
    message = str(exit_info.value.code)
    assert message.startswith(f"error: {path}: corrupt WAV") and "\n" not in message


# --- damage found by fuzzing the readers (see tests/test_fuzz.py) ---------------------------

def _wav_bytes(v2_root: Path) -> Tuple[Path, bytearray]:
    path = first_record(BatvisionV2Dataset(v2_root, "train")).audio_paths[0]
    return path, bytearray(path.read_bytes())


@pytest.mark.filterwarnings("ignore::scipy.io.wavfile.WavFileWarning")
@pytest.mark.parametrize("field, value", [
    ("data chunk id", b"dat\x00"),       # scipy: UnboundLocalError
    ("channel count", b"\x00\x00"),      # scipy: ZeroDivisionError
])
def test_damaged_wav_header(v2_root, field, value):
    path, data = _wav_bytes(v2_root)
    offset = data.index(b"data") if field == "data chunk id" else data.index(b"fmt ") + 10
    data[offset:offset + len(value)] = value
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt WAV") as error:
        BatvisionV2Dataset(v2_root, "train", image_size=SIZE)[0]
    assert_names(error, path)


def test_npy_header_that_breaks_the_tokenizer(v1_root):
    """An unclosed bracket in the header: numpy's Python-2 header fallback raises TokenError."""
    dataset = BatvisionV1Dataset(v1_root, "train", image_size=SIZE)
    path = first_record(dataset).depth_path
    data = bytearray(path.read_bytes())
    at = data.index(b"(", data.index(b"shape"))
    data[at] = ord("[")
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt .npy") as error:
        dataset[0]
    assert_names(error, path)


@pytest.mark.parametrize("array, problem", [
    (np.zeros((0, 40), dtype=np.uint16), "empty depth map"),
    (np.zeros((24, 0), dtype=np.uint16), "empty depth map"),
    (np.ones((24, 40), dtype=np.complex64), "real numeric"),
])
def test_depth_map_without_pixels_or_not_real(v2_root, array, problem):
    dataset = BatvisionV2Dataset(v2_root, "train", image_size=SIZE)
    path = first_record(dataset).depth_path
    np.save(path, array)
    with pytest.raises(DataError, match=problem) as error:
        dataset[0]
    assert_names(error, path)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 3e38])
def test_v1_ear_with_non_finite_or_absurd_samples(v1_root, value):
    """A non-finite or beyond-any-PCM-scale ear names its file; NaN/inf depth stays legal."""
    dataset = BatvisionV1Dataset(v1_root, "train", image_size=SIZE)
    record = first_record(dataset)
    left = np.load(record.audio_paths[0])
    left[1234] = value
    np.save(record.audio_paths[0], left)
    with pytest.raises(DataError, match="NaN or infinite|2\\*\\*31") as error:
        dataset[0]
    assert_names(error, record.audio_paths[0])
    np.save(record.audio_paths[0], np.zeros_like(left))
    depth = np.load(record.depth_path)
    depth[:3] = np.nan
    depth[3:5] = np.inf
    np.save(record.depth_path, depth)
    sample = dataset[0]
    assert torch.isfinite(sample["depth"]).all() and torch.isfinite(sample["audio"]).all()


def test_unequal_ears_name_the_shorter_one(v1_root):
    dataset = BatvisionV1Dataset(v1_root, "train", image_size=SIZE)
    left, right = first_record(dataset).audio_paths
    np.save(left, np.zeros(4_500, dtype=np.float32))
    with pytest.raises(DataError, match=f"4500 samples, but the right ear {right} has 5000") \
            as error:
        dataset[0]
    assert_names(error, left)


# --- label sanity ----------------------------------------------------------------------------

def _rewrite_depth(dataset, transform) -> None:
    for record in dataset.records:
        np.save(record.depth_path, transform(np.load(record.depth_path)))


def test_labels_all_holes_are_refused_naming_the_split(v2_root):
    dataset = BatvisionV2Dataset(v2_root, "val", image_size=SIZE)
    check_labels(dataset)
    _rewrite_depth(dataset, np.zeros_like)
    with pytest.raises(DataError, match="split 'val': no valid depth pixel .* 6 depth maps "
                                        "checked of 6") as error:
        check_labels(dataset)
    assert str(error.value).startswith(f"{v2_root}: ")


def test_labels_in_metres_are_refused_with_the_evidence(v1_root):
    """V1 float depth written in metres (about 0.2–14) reads as a median of a few mm."""
    dataset = BatvisionV1Dataset(v1_root, "train", image_size=SIZE)
    _rewrite_depth(dataset, lambda depth: depth / 1000.0)
    medians = [np.nanmedian(np.where(np.load(r.depth_path) > 0, np.load(r.depth_path), np.nan))
               for r in dataset.records]
    expected = float(np.median(medians))
    assert 0.2 < expected < 15
    with pytest.raises(DataError, match=f"split 'train': median valid depth is {expected:.3g} mm "
                                        "in the 6 depth maps checked .* stored in metres"):
        check_labels(dataset)


def test_label_check_reads_an_even_spread_of_at_most_max_files(v2_root, monkeypatch):
    dataset = BatvisionV2Dataset(v2_root, "train", image_size=SIZE)     # 9 records
    read = []
    monkeypatch.setattr(batvision, "read_depth_mm",
                        lambda path: read.append(path) or np.full((4, 4), 1000, np.uint16))
    check_labels(dataset, max_files=3)
    assert read == [dataset.records[i].depth_path for i in (0, 4, 8)]


def test_training_refuses_depth_in_metres_before_any_epoch(tmp_path, write_v2_tree):
    import train_binaural_attention

    root = write_v2_tree(tmp_path / "bv2", locations=("Loc",), counts={"train": 4, "val": 2,
                                                                      "test": 1})
    _rewrite_depth(BatvisionV2Dataset(root, "train"), lambda depth: depth // 1000)
    with pytest.raises(SystemExit) as exit_info:
        train_binaural_attention.main([
            "--data_root", str(root), "--image_size", "16", "--base_channels", "4",
            "--batch_size", "4", "--nb_epochs", "1", "--num_workers", "0", "--device", "cpu",
            "--checkpoint_dir", str(tmp_path / "runs")])
    assert "split 'train'" in str(exit_info.value.code)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.pth"))


# --- --dataset auto: detect, never write into a user's folder ---------------------------------

def _data_args(*argv: str):
    from training.cli import build_parser

    return build_parser("student", None).parse_args(list(argv))


def _listing(root: Path):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_auto_detects_each_layout_and_records_it(tmp_path, v1_root, v2_root):
    from datasets.synthetic.world import manifest_path

    world = tmp_path / "world"          # the layout ensure_synthetic_world keeps
    (world / "v2").mkdir(parents=True)
    manifest_path(world / "v2").write_text(json.dumps({"version": 1, "config": {}}))
    for root, name in ((v1_root, "batvisionv1"), (v2_root, "batvisionv2"), (world, "synthetic")):
        assert detect_dataset(root) == name
    args = _data_args("--data_root", str(v2_root))
    assert args.dataset == "auto"
    assert resolve_data_root(args, DistContext()) == v2_root and args.dataset == "batvisionv2"
    args = _data_args()
    assert resolve_dataset(args) == "synthetic" and args.data_root is None


@pytest.mark.parametrize("layout", ["empty", "parent of datasets", "v2 location", "missing"])
def test_auto_refuses_what_it_does_not_recognise_and_writes_nothing(tmp_path, v1_root, v2_root,
                                                                    layout):
    root = {"empty": tmp_path / "empty", "parent of datasets": tmp_path,
            "v2 location": v2_root / "Attic_A", "missing": tmp_path / "nowhere"}[layout]
    if layout == "empty":
        root.mkdir()
    before = _listing(tmp_path)
    args = _data_args("--data_root", str(root))
    with pytest.raises(UsageError) as error:
        resolve_data_root(args, DistContext())
    message = str(error.value)
    assert f"--data_root {root}" in message and "\n" not in message
    assert {"empty": "looked for a BatVision V1 root", "parent of datasets": "no dataset",
            "v2 location": "--locations Attic_A", "missing": "no such folder"}[layout] in message
    assert _listing(tmp_path) == before


def test_synthetic_into_a_real_dataset_folder_is_refused(v2_root):
    before = _listing(v2_root)
    args = _data_args("--dataset", "synthetic", "--data_root", str(v2_root))
    with pytest.raises(DataError, match="no synthetic world manifest"):
        resolve_data_root(args, DistContext())
    assert _listing(v2_root) == before


# --- the validator: python -m datasets.check ---------------------------------------------------

def test_validator_lists_every_bad_file_of_every_split(v2_root, capsys):
    from datasets import check

    assert check.main(["--data_root", str(v2_root), "--workers", "2", "--use_rgb"]) == 0
    assert "checked 18 samples (train 9, val 6, test 3); no problem found" in \
        capsys.readouterr().out
    train, val, test = (BatvisionV2Dataset(v2_root, split).records for split in
                        ("train", "val", "test"))
    missing, corrupt, truncated = (train[4].audio_paths[0], val[1].depth_path,
                                   test[2].camera_path)
    missing.unlink()
    corrupt.write_bytes(b"\x93NUMPY broken")
    truncated.write_bytes(truncated.read_bytes()[:150])
    assert check.main(["--data_root", str(v2_root), "--workers", "2", "--use_rgb"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"{missing}: file not found" in lines
    assert any(line.startswith(f"{corrupt}: corrupt .npy") for line in lines)
    assert any(line.startswith(f"{truncated}: corrupt image") for line in lines)
    assert lines[-1].endswith("checked 18 samples (train 9, val 6, test 3); 3 problem(s), "
                              "listed above")
    # Without --use_rgb the camera images are not read; one process reads the same.
    assert check.main(["--data_root", str(v2_root), "--workers", "1", "--splits", "test"]) == 0


def test_validator_reports_csv_and_label_problems_and_goes_on(v1_root, capsys):
    from datasets import check

    (v1_root / "val.csv").unlink()
    _rewrite_depth(BatvisionV1Dataset(v1_root, "test"), np.zeros_like)
    assert check.main(["--dataset", "batvisionv1", "--data_root", str(v1_root),
                       "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert f"{v1_root / 'val.csv'}: split CSV not found" in out
    assert f"{v1_root}: split 'test': no valid depth pixel" in out
    assert "checked 8 samples (train 6, test 2); 2 problem(s)" in out


def test_validator_flags_and_usage_errors(tmp_path, capsys):
    from datasets import check

    help_text = check.build_parser().format_help()
    for flag in ("--dataset", "--data_root", "--splits", "--workers", "--use_rgb", "--recipe",
                 "--max_depth"):
        assert flag in help_text
    with pytest.raises(SystemExit) as exit_info:
        check.main(["--data_root", str(tmp_path)])
    assert exit_info.value.code.startswith("error: --data_root") and \
        "\n" not in exit_info.value.code
    with pytest.raises(SystemExit) as exit_info:
        check.main(["--data_root", str(tmp_path), "--splits", "train,dev"])
    assert exit_info.value.code == 2
