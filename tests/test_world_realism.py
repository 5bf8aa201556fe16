"""Realism of the simulated world, on by default: the depth camera's sensor-like holes (each cause
on a hand-built scene), the realistic room families, the statistics they reach against the real
V2 reference, and the classic world of earlier versions left as it was."""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import pytest

from datasets.stats import WITHIN, compare, depth_statistics, load_reference, summarise
from datasets.synthetic.acoustics import EchoSimulator
from datasets.synthetic.camera import EDGE_JUMP_M, GRAZING_COS, DepthCamera
from datasets.synthetic.scene import (FAMILIES, REALISTIC_FAMILIES, RIG_CLEARANCE_M, Box, RigPose,
                                      Scene, clearance_m, distance_to_segments, location_name,
                                      point_in_polygon, sample_location_style, sample_scene)
from datasets.synthetic.world import CLASSIC_WORLD, REALISM_VERSION, WorldConfig, generate_world

REFERENCE = Path(__file__).resolve().parents[1] / "datasets" / "reference" / "batvision_v2_real.json"
# WorldConfig(...).to_dict() of the worlds cached before the realism fields existed.
CLASSIC_CONFIG = {"format": "v2", "locations": 3, "samples": 400, "seed": 0, "height": 128,
                  "width": 128, "ears": "cardioid", "ear_angle_deg": 35.0, "ear_spacing_m": 0.2,
                  "max_order": 3, "snr_db": 50.0, "hfov_deg": 90.0, "max_range_m": None}


def plain_room(length: float, width: float, boxes: Tuple[Box, ...] = (),
               specular: Optional[dict] = None, texture: float = 1.0, albedo: float = 0.6,
               rig: RigPose = RigPose(position=(0.5, 1.0), height=1.0, yaw=0.0)) -> Scene:
    """A ``length`` x ``width`` x 3 m box room seen from ``rig``: fully textured, matt, mid-grey
    surfaces (no sensor hole but the geometric ones), except the ``specular`` {surface: share}."""
    floor = np.array([[0.0, 0.0], [length, 0.0], [length, width], [0.0, width]])
    n = 6 + 6 * len(boxes)
    shares = np.zeros(n)
    for surface, share in (specular or {}).items():
        shares[surface] = share
    return Scene(family="Test", floor=floor, height=3.0, boxes=boxes, absorption=np.full(n, 0.2),
                 albedo=np.full((n, 3), albedo), rig=rig, specular=shares, texture=np.full(n, texture))


def sensor_depth(scene: Scene, size: int = 64, max_range_m: float = 30.0, seed: int = 0) -> np.ndarray:
    """The sensor model's depth map (mm, 0 = hole) of ``scene``."""
    camera = DepthCamera(size, size, max_range_m=max_range_m, holes="sensor")
    return camera.render(scene, np.random.default_rng(seed))[0]


# --- each cause of the sensor's holes -----------------------------------------------------------

def test_beyond_the_range_is_a_hole_and_far_returns_thin_out():
    # Facing the far wall of a 20 m room with a 10 m camera: the far wall is lost, the near floor kept.
    scene = plain_room(20.5, 6.0, rig=RigPose(position=(0.5, 3.0), height=1.0, yaw=0.0))
    depth, surface, _ = DepthCamera(64, 64).raycast(scene)
    sensor = sensor_depth(scene, max_range_m=10.0)
    assert np.all(sensor[depth > 10.0] == 0) and (depth > 10.0).sum() > 100
    assert (sensor[depth < 2.0] > 0).mean() > 0.9
    # Inside the range, the farther band loses more than the nearer one.
    lost = lambda low, high: (sensor[(depth > low) & (depth < high)] == 0).mean()  # noqa: E731
    assert lost(6.0, 10.0) > lost(1.0, 3.0) + 0.1


def test_a_wall_seen_at_grazing_incidence_loses_its_pixels():
    # A side wall 0.3 m to the left, running along the heading to a far wall 6 m ahead: near the
    # far corner it is seen almost edge-on, at the image's left edge at about 45 degrees.
    scene = plain_room(6.5, 3.0, rig=RigPose(position=(0.5, 2.7), height=1.0, yaw=0.0))
    camera = DepthCamera(64, 64)
    _, surface, normal = camera.raycast(scene)
    rays = camera.ray_directions(scene).reshape(64, 64, 3)
    cos = np.abs(np.einsum("hwk,hwk->hw", normal, rays)) / np.linalg.norm(rays, axis=-1)
    sensor = sensor_depth(scene)
    side_wall = surface == 2
    grazing, facing = side_wall & (cos < GRAZING_COS[0]), side_wall & (cos > 0.5)
    assert grazing.sum() > 20 and facing.sum() > 20
    assert np.all(sensor[grazing] == 0)
    assert (sensor[facing] > 0).mean() > 0.9


@pytest.mark.parametrize("size", [64, 128])
def test_a_depth_edge_gets_a_hole_band_on_its_far_side(size):
    # A box 1.5 m ahead against a wall 4.5 m ahead: the wall pixels beside the box's outline
    # (the occluded side) are holes, the box's own outline is kept.
    box = Box(center=(2.5, 2.0), size=(1.0, 1.0, 1.6), yaw=0.0)
    scene = plain_room(4.5, 4.0, boxes=(box,), rig=RigPose(position=(0.5, 2.0), height=1.0, yaw=0.0))
    depth, _, _ = DepthCamera(size, size).raycast(scene)
    sensor = sensor_depth(scene, size=size)
    band = size // 64
    padded = np.pad(depth, band, constant_values=np.inf)
    far_side, near_side = np.zeros_like(depth, bool), np.zeros_like(depth, bool)
    steps = [(s * a, s * b) for s in range(1, band + 1) for a, b in ((1, 0), (-1, 0), (0, 1), (0, -1))]
    for dy, dx in steps:
        neighbour = padded[band + dy:band + dy + size, band + dx:band + dx + size]
        far_side |= depth - neighbour > EDGE_JUMP_M
        near_side |= neighbour - depth > EDGE_JUMP_M
    assert far_side.sum() > 4 * band * size // 8
    assert np.all(sensor[far_side] == 0)
    assert (sensor[near_side] > 0).mean() > 0.9


def test_specular_and_dark_surfaces_lose_their_pixels():
    rig = RigPose(position=(0.5, 2.0), height=1.0, yaw=0.0)
    _, surface, _ = DepthCamera(64, 64).raycast(plain_room(4.5, 4.0, rig=rig))
    front_wall = surface == 1
    glass = sensor_depth(plain_room(4.5, 4.0, specular={1: 1.0}, rig=rig))
    assert np.all(glass[front_wall] == 0) and (glass[~front_wall] > 0).mean() > 0.9
    matt = sensor_depth(plain_room(4.5, 4.0, rig=rig))
    assert (matt[front_wall] > 0).mean() > 0.9
    # A surface darker than DARK_ALBEDO (0.1) returns too little light: at 0.02, 80 % is lost.
    dark = [sensor_depth(plain_room(4.5, 4.0, albedo=0.02, rig=rig), seed=seed) for seed in range(4)]
    assert np.mean([(m == 0).mean() for m in dark]) > 0.6


def test_a_large_plain_surface_loses_its_inside():
    # A wall 1 m ahead fills the view: plain paint loses a large share of its inside (away from
    # the floor and ceiling outlines), a textured one keeps nearly all of it.
    rig = RigPose(position=(0.5, 2.0), height=1.5, yaw=0.0)
    lost = {}
    for texture in (0.0, 1.0):
        maps = [sensor_depth(plain_room(1.5, 4.0, texture=texture, rig=rig), seed=seed)
                for seed in range(8)]
        lost[texture] = np.mean([(m[16:48, 16:48] == 0).mean() for m in maps])
    assert lost[0.0] > 0.2 and lost[1.0] < 0.05


# --- what the sensor model keeps --------------------------------------------------------------

def realistic_scenes(per_family: int, seed: int = 0):
    """(location, scene, rng after the scene) for ``per_family`` scenes of each realistic family."""
    for location, _ in enumerate(REALISTIC_FAMILIES):
        style = sample_location_style(location, np.random.default_rng([seed, location, 0]), "realistic")
        for k in range(per_family):
            rng = np.random.default_rng([seed, location, 1, k])
            yield location, sample_scene(style, rng), rng


def test_the_complete_depth_has_no_hole_and_is_the_sensor_depth_where_valid():
    camera = DepthCamera(48, 48, max_range_m=15.0, holes="sensor")
    for _, scene, rng in realistic_scenes(per_family=2):
        sensor, complete, _ = camera.render(scene, rng)
        valid = sensor > 0
        assert np.all(complete > 0) and 0 < valid.mean() < 1
        np.testing.assert_array_equal(sensor[valid], complete[valid])
        np.testing.assert_array_equal(complete, camera.complete_depth_mm(scene))


def test_realistic_rooms_with_sensor_holes_match_the_real_recording():
    # The real V2 recording: valid share 0.78 +- 0.1, median depth 1.03 m within a factor 2; the
    # medians over 7 families x 6 scenes (what datasets.stats reports for a world) must agree.
    camera = DepthCamera(64, 64, max_range_m=15.0, holes="sensor")
    values = {"valid_share": [], "median_depth_m": []}
    for _, scene, rng in realistic_scenes(per_family=6):
        stats = depth_statistics(camera.render(scene, rng)[0])
        for name in values:
            values[name].append(stats[name])
    rows = {row.name: row for row in compare({n: summarise(v) for n, v in values.items()},
                                             load_reference(REFERENCE))}
    for name in values:
        assert rows[name].verdict == WITHIN, rows[name].line()


def test_sensor_holes_are_a_pure_function_of_the_rng():
    camera = DepthCamera(32, 32, max_range_m=15.0, holes="sensor")
    _, scene, _ = next(realistic_scenes(per_family=1))
    first, again, other = (camera.render(scene, np.random.default_rng(seed))[0] for seed in (3, 3, 4))
    assert first.tobytes() == again.tobytes() and first.tobytes() != other.tobytes()


# --- realistic rooms ----------------------------------------------------------------------------

@pytest.mark.parametrize("location", range(len(REALISTIC_FAMILIES)))
def test_every_realistic_family_yields_valid_scenes_the_acoustics_accept(location):
    family = REALISTIC_FAMILIES[location]
    assert location_name(location, "realistic") == f"{family}_{location:02d}"
    style = sample_location_style(location, np.random.default_rng(location), "realistic")
    simulator = EchoSimulator()
    for seed in range(3):
        scene = sample_scene(style, np.random.default_rng([seed, location]))
        assert scene.family == family
        n = scene.n_surfaces
        for values in (scene.absorption, scene.specular, scene.texture):
            assert values.shape == (n,) and np.all((values >= 0) & (values <= 1))
        assert scene.albedo.shape == (n, 3) and np.all((scene.albedo >= 0) & (scene.albedo <= 1))
        rig = np.asarray(scene.rig.position)[None]
        assert clearance_m(rig, scene.floor, scene.boxes)[0] >= RIG_CLEARANCE_M
        for box in scene.boxes:
            foot = box.footprint()
            assert point_in_polygon(foot, scene.floor).all()
            assert distance_to_segments(foot, scene.floor).min() >= 0.05
            assert 0 < box.size[2] < scene.height
        for a in scene.boxes:  # no corner of a box stands in another's footprint
            for b in scene.boxes:
                assert a is b or clearance_m(a.footprint(), scene.floor, (b,)).min() > 0
        audio = simulator.record(scene, np.random.default_rng(seed))
        assert np.all(np.isfinite(audio)) and 0 < np.abs(audio).max() < 1


def test_realistic_families_are_furnished():
    boxes = {family: [] for family in REALISTIC_FAMILIES}
    for location, scene, _ in realistic_scenes(per_family=4):
        boxes[REALISTIC_FAMILIES[location]].append(len(scene.boxes))
    assert min(boxes["Office"]) >= 2 and min(boxes["Classroom"]) >= 4
    assert min(boxes["ClutteredLab"]) >= 5 and min(boxes["StairwellLanding"]) >= 1


# --- the world's wiring and its default ----------------------------------------------------------

def test_the_classic_world_is_unchanged_and_the_default_has_every_realism():
    assert WorldConfig(**CLASSIC_WORLD).to_dict() == CLASSIC_CONFIG
    # A world with realism records the realism's version: one made by an earlier model of it is
    # another world.
    version = {"realism_version": REALISM_VERSION}
    assert WorldConfig(**{**CLASSIC_WORLD, "holes": "sensor"}).to_dict() == {
        **CLASSIC_CONFIG, "holes": "sensor", **version}
    assert WorldConfig(**{**CLASSIC_WORLD, "rooms": "realistic"}).to_dict() == {
        **CLASSIC_CONFIG, "rooms": "realistic", **version}
    assert WorldConfig().to_dict() == {**CLASSIC_CONFIG, "acoustics": "realistic",
                                       "holes": "sensor", "rooms": "realistic", **version}
    assert [location_name(i) for i in range(4)] == ["SmallRoom_00", "Corridor_01", "Hall_02",
                                                   "SmallRoom_03"]
    assert FAMILIES == ("SmallRoom", "Corridor", "Hall")


@pytest.mark.parametrize("field, value, allowed", [("holes", "speckle", "blobs"),
                                                   ("rooms", "castle", "realistic")])
def test_world_config_names_the_allowed_values(field, value, allowed):
    with pytest.raises(ValueError, match=f"{field} must be one of .*{allowed}"):
        WorldConfig(**{field: value})


def test_a_realistic_world_is_deterministic_and_named_by_its_families(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import make_synthetic_batvision as cli

    monkeypatch.setattr(sys, "argv", ["make_synthetic_batvision.py", "--out", str(tmp_path / "x"),
                                      "--rooms", "realistic", "--holes", "sensor"])
    assert cli.parse_args().config == WorldConfig(acoustics="realistic", rooms="realistic",
                                                  holes="sensor") == WorldConfig()
    config = WorldConfig(locations=3, samples=3, height=16, width=16, rooms="realistic", holes="sensor")
    trees = []
    for name in ("a", "b"):
        stats = generate_world(tmp_path / name, config, workers=1, progress=False)
        trees.append({str(p.relative_to(tmp_path / name)): hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in sorted((tmp_path / name).rglob("*")) if p.is_file()})
    assert stats["locations"] == ["Office_00", "Corridor_01", "Classroom_02"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(stats["locations"])
    assert trees[0] == trees[1] and len(trees[0]) == 3 * (3 + 3 * 4)


def test_the_flags_name_the_generators_own_realism_options() -> None:
    """datasets.registry names the options without importing the generator: they must stay the
    generator's, the classic world's (what older worlds are) first, and its default world the
    generator's default."""
    from datasets.registry import DEFAULT_WORLD, WORLD_OPTIONS
    from datasets.synthetic.acoustics import ACOUSTIC_MODELS
    from datasets.synthetic.camera import HOLE_MODELS
    from datasets.synthetic.scene import ROOM_SETS

    assert {name: set(values) for name, values in WORLD_OPTIONS.items()} == {
        "acoustics": set(ACOUSTIC_MODELS), "holes": set(HOLE_MODELS), "rooms": set(ROOM_SETS)}
    assert {name: values[0] for name, values in WORLD_OPTIONS.items()} == CLASSIC_WORLD
    assert {name: getattr(WorldConfig(), name) for name in WORLD_OPTIONS} == DEFAULT_WORLD


def test_training_flags_choose_the_world_and_count_in_identity_only_when_moved() -> None:
    from datasets.registry import synthetic_world_config
    from tests.conftest import parse
    from training.identity import INTRODUCED_LATER

    default = parse("student", ["--dataset", "synthetic"])
    realistic = parse("student", ["--dataset", "synthetic", "--synthetic_acoustics", "realistic",
                                  "--synthetic_holes", "sensor", "--synthetic_rooms", "realistic"])
    classic = parse("student", ["--dataset", "synthetic", "--synthetic_acoustics", "ideal",
                                "--synthetic_holes", "blobs", "--synthetic_rooms", "classic"])
    assert synthetic_world_config(default) == WorldConfig()
    assert synthetic_world_config(classic) == WorldConfig(**CLASSIC_WORLD)
    assert synthetic_world_config(realistic) == WorldConfig(acoustics="realistic",
                                                            holes="sensor", rooms="realistic")
    # Arguments saved before the options existed (an older checkpoint's) read the classic world,
    # the one they were made with, and the identity records an option only where it moved from it.
    old = argparse.Namespace(**{k: v for k, v in vars(default).items()
                                if not k.startswith(("synthetic_acoustics", "synthetic_holes",
                                                     "synthetic_rooms"))})
    assert synthetic_world_config(old) == WorldConfig(**CLASSIC_WORLD)
    for name in ("acoustics", "holes", "rooms"):
        assert INTRODUCED_LATER[f"synthetic_{name}"] == getattr(classic, f"synthetic_{name}")


def test_the_runner_passes_the_world_to_every_run_only_where_it_is_not_the_default(
        tmp_path: Path) -> None:
    from training.experiments import presets, runs
    from training.experiments.main import build_parser
    from training.experiments.report import world_line

    def argv_of(preset_name: str, *flags: str) -> tuple:
        preset = presets.resolve_preset(build_parser(None).parse_args(
            ["--preset", preset_name, *flags]))
        setup = runs.Setup(preset=preset, config_dir=Path("configs/synthetic"),
                           data_root=str(tmp_path), cache_dir=tmp_path, device="cpu",
                           runs_dir=tmp_path / "runs", on_mismatch="retrain", launch=None)
        return runs.run_spec(preset.experiments[1], 0, setup).argv, world_line(preset)

    def world_flags(argv: list) -> list:
        return [(flag, value) for flag, value in zip(argv, argv[1:])
                if flag.startswith(("--synthetic_acoustics", "--synthetic_holes",
                                    "--synthetic_rooms"))]

    # The quick preset is on the default (realistic) world: its runs need no flag.
    plain, plain_line = argv_of("quick")
    assert world_flags(plain) == [] and "Not the default world" not in plain_line
    partly, line = argv_of("quick", "--synthetic_rooms", "classic")
    assert world_flags(partly) == [("--synthetic_rooms", "classic")]
    assert "Not the default world: `--synthetic_rooms classic`." in line
    # The presets whose tables were measured on the classic world stay on it.
    classic, classic_line = argv_of("development")
    assert world_flags(classic) == [("--synthetic_acoustics", "ideal"),
                                    ("--synthetic_holes", "blobs"), ("--synthetic_rooms", "classic")]
    assert "`--synthetic_acoustics ideal`, `--synthetic_holes blobs`" in classic_line
    with pytest.raises(SystemExit):
        build_parser(None).parse_args(["--synthetic_rooms", "palace"])
