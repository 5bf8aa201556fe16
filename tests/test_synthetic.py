"""The simulated world: echoes carry the geometry, exact V1/V2 files, determinism, world reuse."""
from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pyroomacoustics as pra
import pytest
from PIL import Image
from scipy.io import wavfile
from scipy.signal import correlate, hilbert

from datasets.synthetic import world as world_module
from datasets.synthetic.acoustics import SPEED_OF_SOUND, EchoSimulator
from datasets.synthetic.camera import DepthCamera
from datasets.synthetic.scene import (Box, RigPose, Scene, box_polygons, room_shell_polygons,
                                      sample_location_style, sample_scene)
from datasets.synthetic.world import (CLASSIC_WORLD, WorldConfig, ensure_synthetic_world,
                                      generate_world)
from datasets.synthetic.writer import SAMPLE_RATE, V1_COLUMNS, V2_COLUMNS, V2_WAV_FRAMES

# The generator's mechanics, tested on the classic world (the cheapest; the realistic default's
# own tests: test_world_realism.py, test_acoustics_realism.py).
TINY = dict(locations=3, samples=3, height=16, width=24, **CLASSIC_WORLD)


def open_room(floor: np.ndarray, absorption: Dict[int, float], rig: RigPose) -> Scene:
    """A 10 m high room with absorbing surfaces except the walls listed in ``absorption``."""
    n = len(floor) + 2
    absorb = np.full(n, 0.95)
    for wall, a in absorption.items():
        absorb[wall] = a
    return Scene(family="Test", floor=floor, height=10.0, boxes=(), absorption=absorb,
                 albedo=np.ones((n, 3)), rig=rig)


@pytest.mark.parametrize("distance", [1.5, 4.0])
def test_first_echo_delay_matches_wall_distance(distance):
    # Rig 5 m above the floor facing a reflective wall `distance` ahead; everything else absorbs.
    floor = np.array([[-10.0, -10.0], [distance, -10.0], [distance, 10.0], [-10.0, 10.0]])
    scene = open_room(floor, {1: 0.05}, RigPose(position=(0.0, 0.0), height=5.0, yaw=0.0))
    depth, surface, _ = DepthCamera(9, 9).raycast(scene)
    ahead = depth[4, 4]  # the centre pixel sees the nearest surface straight ahead
    assert surface[4, 4] == 1 and ahead == pytest.approx(distance)

    simulator = EchoSimulator(max_order=1)
    audio = simulator.record(scene, np.random.default_rng(0))
    half_spacing = simulator.ear_spacing_m / 2
    # Speaker at the rig centre, ears half the spacing to the sides: the echo travels from the
    # speaker's mirror image, 2 d ahead, to the ear.
    expected_direct = half_spacing / SPEED_OF_SOUND * SAMPLE_RATE
    expected_echo = np.hypot(2 * ahead, half_spacing) / SPEED_OF_SOUND * SAMPLE_RATE
    for ear in audio:
        envelope = np.abs(hilbert(correlate(ear, simulator.chirp, mode="full")[len(simulator.chirp) - 1:]))
        direct = int(np.argmax(envelope[:100]))
        after = direct + len(simulator.chirp)
        strong = after + int(np.flatnonzero(envelope[after:] > 0.5 * envelope[after:].max())[0])
        echo = strong + int(np.argmax(envelope[strong:strong + 20]))
        assert abs(direct - expected_direct) <= 1
        assert abs((echo - direct) - (expected_echo - expected_direct)) <= 2


def test_obstacles_reflect_sound():
    # A tall box face 2 m ahead in an absorbing room: its echo is there only if the box faces'
    # normals point into the solid (pyroomacoustics mirrors sources only behind a normal).
    floor = np.array([[-10.0, -10.0], [10.0, -10.0], [10.0, 10.0], [-10.0, 10.0]])
    absorption = np.r_[np.full(6, 0.95), np.full(6, 0.05)]
    scene = Scene(family="Test", floor=floor, height=10.0, boxes=(Box((2.5, 0.0), (1.0, 3.0, 9.0), 0.0),),
                  absorption=absorption, albedo=np.ones((12, 3)),
                  rig=RigPose(position=(0.0, 0.0), height=5.0, yaw=0.0))
    rirs = EchoSimulator(max_order=1).impulse_responses(scene)
    echo = int(round(np.hypot(4.0, 0.1) / SPEED_OF_SOUND * SAMPLE_RATE))
    strongest_after_direct = 100 + np.argmax(np.abs(rirs[:, 100:]), axis=1)
    assert np.all(np.abs(strongest_after_direct - echo) <= 1)


def test_directional_ears_hear_their_own_side():
    # One reflective wall 1 m to the rig's left.
    floor = np.array([[-10.0, -10.0], [10.0, -10.0], [10.0, 1.0], [-10.0, 1.0]])
    scene = open_room(floor, {2: 0.05}, RigPose(position=(0.0, 0.0), height=5.0, yaw=0.0))
    after_direct = int(1.0 / SPEED_OF_SOUND * SAMPLE_RATE)

    def echo_energy(ears):
        rirs = EchoSimulator(ears=ears, max_order=1).impulse_responses(scene)
        return np.sum(rirs[:, after_direct:] ** 2, axis=1)

    left, right = echo_energy("cardioid")
    assert left > 5 * right
    left, right = echo_energy("omni")
    assert left == pytest.approx(right, rel=0.5)


def test_surfaces_follow_pyroomacoustics_conventions():
    floor = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 6.0], [5.0, 6.0], [5.0, 12.0], [0.0, 12.0]])
    extruded = pra.Room.from_corners(floor.T, fs=SAMPLE_RATE)
    extruded.extrude(3.0)
    for ours, theirs in zip(room_shell_polygons(floor, 3.0), extruded.walls):
        assert np.allclose(ours, theirs.corners)

    box = Box(center=(2.0, 3.0), size=(1.0, 2.0, 1.5), yaw=0.3)
    box_centre = np.array([2.0, 3.0, 0.75])
    for face in box_polygons(box):
        wall = pra.wall_factory(face, [0.1], [0.0])
        assert np.dot(wall.normal, box_centre - face.mean(axis=1)) > 0  # into the solid

    scene = sample_scene(sample_location_style(2, np.random.default_rng(0)), np.random.default_rng(1))
    walls = [pra.wall_factory(c, [0.1], [0.0]) for c in scene.surface_polygons()]
    assert set(pra.room.find_non_convex_walls(walls)) <= set(scene.obstructing_surfaces())


def test_camera_sees_obstacle_faces_in_surface_order():
    # A box straight ahead: the centre ray enters its -x face (side 3), a ray looking down the floor.
    floor = np.array([[-5.0, -5.0], [5.0, -5.0], [5.0, 5.0], [-5.0, 5.0]])
    scene = Scene(family="Test", floor=floor, height=3.0, boxes=(Box((2.0, 0.0), (1.0, 1.0, 2.0), 0.0),),
                  absorption=np.full(12, 0.5), albedo=np.ones((12, 3)),
                  rig=RigPose(position=(0.0, 0.0), height=1.0, yaw=0.0))
    depth, surface, normal = DepthCamera(9, 9).raycast(scene)
    assert surface[4, 4] == 4 + 2 + 3 and depth[4, 4] == pytest.approx(1.5)
    assert np.allclose(np.abs(normal[4, 4]), [1.0, 0.0, 0.0])
    assert surface[8, 0] == 4  # bottom-left corner of the image: the floor


def hash_tree(root: Path) -> Dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_csv(path: Path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def test_v2_world_writes_the_exact_format(tmp_path):
    root = tmp_path / "v2"
    stats = generate_world(root, WorldConfig(format="v2", **TINY), workers=1, progress=False)
    assert stats["samples"] == 9 and stats["splits"] == {"train": 3, "val": 3, "test": 3}
    assert 0 < stats["peak"] < 1 and stats["clipped_recordings"] == 0
    assert sorted(p.name for p in root.iterdir()) == ["Corridor_01", "Hall_02", "SmallRoom_00"]
    assert json.loads((tmp_path / "v2.world.json").read_text())["config"]["format"] == "v2"

    holes = []
    for location in root.iterdir():
        indices = []
        for split in ("train", "val", "test"):
            header, rows = read_csv(location / f"{split}.csv")
            assert tuple(header) == V2_COLUMNS and len(rows) == 1
            row = dict(zip(header, rows[0]))
            indices.append(int(row["index"]))
            rate, audio = wavfile.read(root / row["audio path"] / row["audio file name"])
            assert rate == SAMPLE_RATE and audio.dtype == np.int32 and audio.shape == (V2_WAV_FRAMES, 2)
            assert np.all(audio % 256 == 0) and np.abs(audio).max() > 0  # 24-bit data, not silent
            depth = np.load(root / row["depth path"] / row["depth file name"])
            assert depth.dtype == np.uint16 and depth.shape == (16, 24)
            holes.append((depth == 0).mean())
            with Image.open(root / row["camera path"] / row["camera file name"]) as image:
                assert image.format == "JPEG" and image.mode == "RGB" and image.size == (24, 16)
        assert len(set(indices)) == 3
    assert 0 < np.mean(holes) < 0.5


def test_v1_world_writes_the_exact_format(tmp_path):
    root = tmp_path / "v1"
    generate_world(root, WorldConfig(format="v1", **TINY), workers=1, progress=False)
    n_rows = 0
    for split in ("train", "val", "test"):
        header, rows = read_csv(root / f"{split}.csv")
        assert tuple(header) == V1_COLUMNS and len(rows) == 3
        for values in rows:
            row = dict(zip(header, values))
            left, right = (np.load(root / row[f"audio path {ear}"]) for ear in ("left", "right"))
            assert left.dtype == np.float32 and left.shape == right.shape == (V2_WAV_FRAMES,)
            depth = np.load(root / row["depth path"])
            assert depth.dtype == np.float32 and depth.shape == (16, 24)
            assert np.isnan(depth).any() and np.nanmin(depth) > 0
            with Image.open(root / row["camera path left"]) as image:
                assert image.format == "JPEG" and image.size == (24, 16)
            n_rows += 1
    assert n_rows == 9


def test_same_seed_gives_identical_bytes_whatever_the_workers(tmp_path):
    config = WorldConfig(format="v2", **TINY)
    generate_world(tmp_path / "a", config, workers=1, progress=False)
    generate_world(tmp_path / "b", config, workers=2, progress=False)
    generate_world(tmp_path / "c", WorldConfig(format="v2", **{**TINY, "seed": 1}), workers=1,
                   progress=False)
    reference = hash_tree(tmp_path / "a")
    # Per location: 3 CSVs + 3 samples x (wav, depth npy, jpeg, complete depth npy).
    assert len(reference) == 3 * (3 + 3 * 4)
    assert hash_tree(tmp_path / "b") == reference
    assert hash_tree(tmp_path / "c") != reference


@pytest.mark.parametrize("fmt", ["v2", "v1"])
def test_the_complete_depth_is_the_sensor_map_without_its_holes(tmp_path, fmt):
    root = tmp_path / fmt
    generate_world(root, WorldConfig(format=fmt, **TINY), workers=1, progress=False)
    sensor_maps = sorted(root.glob("*/depth/*.npy"))
    assert len(sensor_maps) == 9
    for sensor_path in sensor_maps:
        sensor = np.load(sensor_path)
        complete = np.load(sensor_path.parent.parent / "depth_dense" / sensor_path.name)
        assert complete.dtype == sensor.dtype and complete.shape == sensor.shape
        seen = sensor > 0  # NaN (V1's holes) compares False
        assert np.all(complete > 0), "every ray hits a surface: no hole in the complete depth"
        np.testing.assert_array_equal(complete[seen], sensor[seen])


def test_a_world_made_before_complete_depth_gets_it_added_and_keeps_its_files(tmp_path):
    config = WorldConfig(format="v2", **TINY)
    data = ensure_synthetic_world(tmp_path, config, workers=1, progress=False)
    generated = hash_tree(data)
    for folder in data.glob("*/depth_dense"):
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    manifest = json.loads((tmp_path / "v2.world.json").read_text())
    del manifest["complete_depth"]
    (tmp_path / "v2.world.json").write_text(json.dumps(manifest))
    times = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    assert ensure_synthetic_world(tmp_path, config, workers=1, progress=False) == data
    assert hash_tree(data) == generated
    # The sensor's files are untouched (a run's data fingerprint reads their times).
    assert {p: p.stat().st_mtime_ns for p in times} == times
    assert json.loads((tmp_path / "v2.world.json").read_text())["complete_depth"] is True


def test_generate_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stray.txt").write_text("x")
    with pytest.raises(FileExistsError, match="stray|not empty"):
        generate_world(tmp_path / "out", WorldConfig(**TINY), workers=1, progress=False)


def test_ensure_reuses_a_matching_world_and_regenerates_a_changed_one(tmp_path, monkeypatch):
    config = WorldConfig(format="v2", **TINY)
    data = ensure_synthetic_world(tmp_path, config, workers=1, progress=False)
    assert data == tmp_path / "v2" and sorted(p.name for p in tmp_path.iterdir()) == ["v2", "v2.world.json"]
    first = hash_tree(data)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a matching world was regenerated")

    with monkeypatch.context() as patch:
        patch.setattr(world_module, "generate_world", must_not_run)
        assert ensure_synthetic_world(tmp_path, config) == data

    changed = WorldConfig(format="v2", **{**TINY, "seed": 7})
    assert ensure_synthetic_world(tmp_path, changed, workers=1, progress=False) == data
    assert hash_tree(data) != first
    assert json.loads((tmp_path / "v2.world.json").read_text())["config"]["seed"] == 7

    # An interrupted generation (its manifest has no stats yet) is not reused but replaced.
    manifest = json.loads((tmp_path / "v2.world.json").read_text())
    del manifest["stats"]
    (tmp_path / "v2.world.json").write_text(json.dumps(manifest))
    (data / "partial.txt").write_text("left by a killed generation")
    assert ensure_synthetic_world(tmp_path, changed, workers=1, progress=False) == data
    assert "stats" in json.loads((tmp_path / "v2.world.json").read_text())
    assert not (data / "partial.txt").exists()


def test_cli_writes_a_world_and_rejects_a_non_empty_out(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import make_synthetic_batvision as cli

    out = tmp_path / "cli"
    argv = ["make_synthetic_batvision.py", "--format", "v1", "--out", str(out), "--locations", "1",
            "--samples", "3", "--height", "8", "--width", "8", "--workers", "1", "--no-progress"]
    monkeypatch.setattr(sys, "argv", argv)
    cli.main()
    assert "samples/s" in capsys.readouterr().out and (out / "train.csv").is_file()
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code != 0 and "not empty" in capsys.readouterr().err
