"""The realistic acoustic model: latency, band limits, specular and diffuse reflections, the rig's
echo, a tail at the room's RT60 and the diffuse field's level, determinism, calibration against
the real V2 reference, and an ideal default that stays as it was."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict

import numpy as np
import pyroomacoustics as pra
import pytest
from scipy.special import gammainc

from datasets import stats
from datasets.synthetic.acoustics import (ACOUSTIC_MODELS, SPEED_OF_SOUND, EchoSimulator, Realism,
                                          room_acoustics, reverberant_tail)
from datasets.synthetic.scene import (Box, RigPose, Scene, sample_location_style,
                                      sample_scene)
from datasets.synthetic.world import CLASSIC_WORLD, WorldConfig, generate_world
from datasets.synthetic.writer import SAMPLE_RATE

REFERENCE = Path(__file__).resolve().parents[1] / "datasets" / "reference" / "batvision_v2_real.json"
# Room noise so far below the echoes that a waveform's first arrival stands out.
SILENT = dict(room_noise_db=300.0)
# No tail either: a response's single paths stand alone.
DRY = dict(room_noise_db=300.0, tail_level_db=-300.0)


def shoebox(size: tuple, absorption: float, boxes: tuple = ()) -> Scene:
    """A box room ``size`` = (x, y, height) metres, one absorption everywhere, rig near a corner."""
    floor = np.array([[0.0, 0.0], [size[0], 0.0], [size[0], size[1]], [0.0, size[1]]])
    n = 6 + 6 * len(boxes)
    return Scene(family="Test", floor=floor, height=size[2], boxes=boxes,
                 absorption=np.full(n, absorption), albedo=np.ones((n, 3)),
                 rig=RigPose(position=(1.3, 1.1), height=1.0, yaw=0.3))


def facing_wall(distance: float, absorption: float) -> Scene:
    """A 6 x 5 x 3 m room whose every surface absorbs all but the wall at x = 0 (``absorption``),
    which the rig faces from ``distance`` metres, halfway up the room."""
    floor = np.array([[0.0, 0.0], [6.0, 0.0], [6.0, 5.0], [0.0, 5.0]])
    absorptions = np.ones(6)
    absorptions[3] = absorption  # the wall along the floor's fourth edge, x = 0
    return Scene(family="Test", floor=floor, height=3.0, boxes=(), absorption=absorptions,
                 albedo=np.ones((6, 3)), rig=RigPose(position=(distance, 2.5), height=1.5, yaw=np.pi))


def window_energy(response: np.ndarray, path_m: float, half: int = 20) -> float:
    """Energy of a (L,) impulse response within ``half`` samples of a path's arrival."""
    centre = int(round(path_m / SPEED_OF_SOUND * SAMPLE_RATE))
    return float(np.sum(response[centre - half: centre + half] ** 2))


def hash_tree(root: Path) -> Dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_classic_world_keeps_its_config_dict_and_a_bad_model_is_named():
    # Manifests and cached worlds' folder names digest to_dict(): the classic world's must not
    # move, so worlds made before the realism existed are still found.
    legacy = {"format", "locations", "samples", "seed", "height", "width", "ears", "ear_angle_deg",
              "ear_spacing_m", "max_order", "snr_db", "hfov_deg", "max_range_m"}
    assert set(WorldConfig(**CLASSIC_WORLD).to_dict()) == legacy
    assert WorldConfig(acoustics="realistic").to_dict()["acoustics"] == "realistic"
    with pytest.raises(ValueError, match="ideal.*realistic.*'echoey'"):
        WorldConfig(acoustics="echoey")
    assert ACOUSTIC_MODELS["ideal"] is None


def test_latency_delays_the_first_arrival_by_the_configured_amount():
    scene = shoebox((6.0, 5.0, 3.0), 0.3)
    prompt, late = (EchoSimulator(snr_db=300.0, realism=Realism(latency_s=latency, **SILENT))
                    .record(scene, np.random.default_rng(0)) for latency in (0.0, 0.005))
    level = 0.05 * np.abs(prompt).max()
    first = [int(np.flatnonzero(np.abs(audio).max(axis=0) > level)[0]) for audio in (prompt, late)]
    assert first[1] - first[0] == round(0.005 * SAMPLE_RATE)
    assert first[0] < 30  # without latency the direct path, 0.1 m away, comes first


def test_the_speaker_response_attenuates_a_low_tone():
    simulator = EchoSimulator(realism=Realism())
    t = np.arange(SAMPLE_RATE // 10) / SAMPLE_RATE

    def gain_db(hz: float) -> float:
        tone = np.sin(2 * np.pi * hz * t)
        heard = simulator.through_chain(tone)[len(t) // 2: len(t)]  # past the filters' start
        return 10 * np.log10(np.mean(heard ** 2) / np.mean(tone ** 2))

    assert gain_db(80.0) < -15.0   # below the speaker's 300 Hz cut
    assert abs(gain_db(3000.0)) < 1.0
    assert gain_db(20_000.0) < -8.0  # above the microphones' 12 kHz roll-off
    assert EchoSimulator().through_chain(t) is t  # the ideal chain is flat


@pytest.mark.parametrize("location", [0, 1, 2])
def test_the_tail_decays_at_the_rt60_assigned_to_its_room(location):
    # One room of each family (SmallRoom, Corridor, Hall), measured by Schroeder integration.
    scene = sample_scene(sample_location_style(location, np.random.default_rng(location)),
                         np.random.default_rng(10 + location))
    room = room_acoustics(scene)
    frames = int(2.0 * room.rt60_s * SAMPLE_RATE)  # long enough to fall 120 dB: no truncation
    tail = reverberant_tail(room, frames, 3, 1.0, np.random.default_rng(0))
    assert stats.schroeder_rt60(tail, SAMPLE_RATE) == pytest.approx(room.rt60_s, rel=0.1)


def test_bigger_and_harder_rooms_ring_longer():
    small = room_acoustics(shoebox((4.0, 4.0, 3.0), 0.2))
    assert room_acoustics(shoebox((8.0, 8.0, 4.0), 0.2)).rt60_s > 1.3 * small.rt60_s
    assert room_acoustics(shoebox((4.0, 4.0, 3.0), 0.05)).rt60_s > 2 * small.rt60_s
    # A box standing on the floor takes its volume from the air; it adds its four sides and its
    # top, and hides its footprint of floor.
    box = Box((2.5, 2.5), (1.0, 0.5, 0.8), 0.4)
    furnished = room_acoustics(shoebox((4.0, 4.0, 3.0), 0.2, (box,)))
    assert furnished.volume_m3 == pytest.approx(48.0 - 0.4)
    assert furnished.area_m2 == pytest.approx(80.0 + 2 * (1.0 + 0.5) * 0.8 + 0.5 - 0.5)


def test_the_tail_has_the_level_of_a_full_image_source_simulation():
    # In an empty shoebox, image sources of order 40 hold the whole late field: the stochastic
    # tail (orders above 3, no air absorption) must carry the same energy once order 3 is past.
    size, absorption, source, mic = (5.0, 4.0, 3.0), 0.2, [1.7, 1.3, 1.1], [3.2, 2.9, 1.6]
    room = pra.ShoeBox(list(size), fs=SAMPLE_RATE, materials=pra.Material(absorption),
                       max_order=40)
    room.add_source(source)
    room.add_microphone(np.array(mic)[:, None])
    room.compute_rir()
    images = np.asarray(room.rir[0][0])[pra.constants.get("frac_delay_length") // 2:]
    acoustics = room_acoustics(shoebox(size, absorption), air_absorption_per_m=0.0)
    tail = reverberant_tail(acoustics, len(images), 3, 1.0, np.random.default_rng(0))
    for start, end in ((0.04, 0.08), (0.08, 0.12), (0.12, 0.16)):
        window = slice(int(start * SAMPLE_RATE), int(end * SAMPLE_RATE))
        ratio_db = 10 * np.log10(np.mean(tail[0, window] ** 2) / np.mean(images[window] ** 2))
        assert abs(ratio_db) < 1.5


def test_with_full_scattering_the_tail_holds_every_reflection_past_the_first():
    # Scattered, no reflection stays specular: the tail holds orders 2 and 3 besides those past 3
    # (the first order's diffuse share is cast ray by ray), a share 1 - e^-n (1 + n) of the
    # diffuse field after n mean free paths; without scattering only the share past order 3.
    acoustics = room_acoustics(shoebox((5.0, 4.0, 3.0), 0.2))
    frames = int(0.03 * SAMPLE_RATE)
    t = np.arange(frames) / SAMPLE_RATE
    n = SPEED_OF_SOUND * t / acoustics.mean_free_path_m
    field = (4.0 * np.pi * SPEED_OF_SOUND / (acoustics.volume_m3 * SAMPLE_RATE)
             * np.exp(-6.0 * np.log(10.0) * t / acoustics.rt60_s))
    window = slice(int(0.01 * SAMPLE_RATE), frames)
    for share, left_out in ((1.0, 1.0 - np.exp(-n) * (1.0 + n)), (0.0, gammainc(4, n))):
        tail = reverberant_tail(acoustics, frames, 3, 1.0, np.random.default_rng(0),
                                scattering=share)
        assert np.sum(tail[:, window] ** 2) / 2 == pytest.approx(np.sum((field * left_out)[window]),
                                                                 rel=0.1)
    assert np.sum((field * gammainc(4, n))[window]) < 0.5 * np.sum(
        (field * (1.0 - np.exp(-n) * (1.0 + n)))[window])


def test_image_sources_keep_the_specular_share_of_each_reflection():
    scene = facing_wall(1.0, 0.0)
    plain, scattered = (EchoSimulator(ears="omni", realism=Realism(scattering=share))
                        .impulse_responses(scene) for share in (0.0, 0.4))
    # The direct path stays (pyroomacoustics' zero-phase high-pass smears the rest a little).
    np.testing.assert_allclose(scattered[:, :40], plain[:, :40], atol=1e-3 * np.abs(plain).max())
    wall = window_energy(scattered[0], 2.0) / window_energy(plain[0], 2.0)
    assert wall == pytest.approx(0.6, rel=0.02)
    reflections = EchoSimulator(ears="omni", realism=Realism(scattering=0.0)).impulse_responses(
        scene, direct=False)
    assert np.abs(reflections[:, :40]).max() < 1e-3 * np.abs(plain[:, :40]).max()
    assert window_energy(reflections[0], 2.0) == pytest.approx(window_energy(plain[0], 2.0),
                                                               rel=0.02)


def test_a_wall_scatters_as_a_lambert_surface():
    # Fully scattering, the wall 1 m ahead sends back (1 - absorption) of what it receives as a
    # Lambert source: per m^2, cos^2 / (pi r^4) of it, from r metres away, over the wall's 5 x 3 m.
    distance, absorption = 1.0, 0.2
    simulator = EchoSimulator(ears="omni", ear_spacing_m=0.01, realism=Realism(
        speaker_beam=0.0, scattering=1.0, rig_echo_m=0.0, **DRY))
    u, v = np.meshgrid(np.linspace(-2.5, 2.5, 501), np.linspace(-1.5, 1.5, 301))
    expected = ((1.0 - absorption) / np.pi * np.sum(distance ** 2 / (distance ** 2 + u ** 2
                                                                      + v ** 2) ** 3)
                * (5.0 / 500) * (3.0 / 300))
    first = int(2 * distance / SPEED_OF_SOUND * SAMPLE_RATE)
    energies = []
    for seed in range(20):
        response = simulator.realistic_responses(facing_wall(distance, absorption),
                                                 np.random.default_rng(seed))
        energies.append(np.sum(response[:, 100:] ** 2, axis=1).mean())
        # Nothing comes back before the nearest point of the wall.
        assert np.abs(response[:, 100: first - 2]).max() < 1e-6
    assert np.mean(energies) == pytest.approx(expected, rel=0.08)


@pytest.mark.parametrize("distance", [1.5, 0.6])
def test_the_rig_echoes_the_wall_it_faces_up_to_a_mirrors_gain(distance):
    # The wall's echo reaches the rig at 2 d / c, goes out again and returns at 4 d / c, scaled
    # by the rig's gain over the 2 d metres: 1 m, or d where a plane mirror would send back less.
    simulator = EchoSimulator(ears="omni", ear_spacing_m=0.01, realism=Realism(
        speaker_beam=0.0, scattering=0.0, rig_echo_m=1.0, **DRY))
    response = simulator.realistic_responses(facing_wall(distance, 0.0),
                                             np.random.default_rng(0))[0]
    assert window_energy(response, 2 * distance) == pytest.approx(1 / (2 * distance) ** 2,
                                                                 rel=0.05)
    ratio = np.sqrt(window_energy(response, 4 * distance) / window_energy(response, 2 * distance))
    assert ratio == pytest.approx(min(1.0, distance) / (2 * distance), rel=0.05)


def test_a_realistic_world_is_deterministic_whatever_the_workers(tmp_path):
    tiny = dict(locations=3, samples=3, height=16, width=16, holes="blobs", rooms="classic")
    config = WorldConfig(acoustics="realistic", **tiny)
    generate_world(tmp_path / "a", config, workers=1, progress=False)
    generate_world(tmp_path / "b", config, workers=2, progress=False)
    generate_world(tmp_path / "ideal", WorldConfig(acoustics="ideal", **tiny), workers=1,
                   progress=False)
    reference = hash_tree(tmp_path / "a")
    assert hash_tree(tmp_path / "b") == reference
    wavs = [name for name in reference if name.endswith(".wav")]
    ideal = hash_tree(tmp_path / "ideal")
    assert len(wavs) == 9 and all(reference[name] != ideal[name] for name in wavs)
    assert all(reference[name] == ideal[name] for name in reference if name.endswith(".npy"))


def test_the_realistic_defaults_match_the_real_recording(tmp_path):
    # The measurement world of RGB_DEPTH_README.md's realism section (its audio does not depend
    # on the image size), on seed 1: the constants were fitted on seed 0.
    config = WorldConfig(acoustics="realistic", holes="sensor", rooms="realistic", locations=7,
                         samples=20, height=16, width=16, seed=1)
    generate_world(tmp_path / "v2", config, workers=1, progress=False)
    found = stats.measure(stats.open_tree(tmp_path), progress=False)
    rows = {row.name: row for row in stats.compare(found.statistics,
                                                   stats.load_reference(REFERENCE))}
    audio = ("onset_ms", "peak_ms", "envelope_db_at_ms.5", "envelope_db_at_ms.20",
             "envelope_db_at_ms.50", "envelope_db_at_ms.100", "envelope_db_at_ms.170",
             "late_energy_share")
    for name in audio:
        assert rows[name].verdict == stats.WITHIN, rows[name].line()
    # Closer than the tolerance where constants were fitted (Realism's docstring says to what):
    # the onset and the peak within 1.5 ms, the envelope within 3 dB. Not at 20 ms, where the
    # early reflections only reach the tolerance (about -12 dB against -8.1).
    margins = {"onset_ms": 1.5, "peak_ms": 1.5, "envelope_db_at_ms.5": 3.0,
               "envelope_db_at_ms.50": 3.0, "envelope_db_at_ms.100": 3.0,
               "envelope_db_at_ms.170": 3.0}
    for name, margin in margins.items():
        row = rows[name]
        assert abs(row.median - row.expected.value) <= margin, row.line()
    assert 0.4 <= found.statistics["rt60_s"]["median"] <= 0.8  # typical indoor rooms
