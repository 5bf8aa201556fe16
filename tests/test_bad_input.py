"""Every bad input gives a one-line DataError naming the offending file; never a silent sample."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

from datasets import BatvisionV1Dataset, BatvisionV2Dataset, DataError

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
