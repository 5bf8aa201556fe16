"""``python -m datasets.stats``: audio and depth statistics on hand-made signals and maps with
known answers, the comparison with a reference, the command line on tiny trees, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datasets import stats
from datasets.stats import Expected, Reference

SR = 44_100
REPO = Path(__file__).resolve().parent.parent
SHIPPED_REFERENCE = REPO / "datasets" / "reference" / "batvision_v2_real.json"


def impulse(frames: int, at: int, amplitude: float = 0.9) -> np.ndarray:
    audio = np.zeros((2, frames))
    audio[:, at] = amplitude
    return audio


def decaying_noise(rt60_s: float, seconds: float, seed: int = 0) -> np.ndarray:
    """Both ears: white noise of amplitude exp(-6.9 t / RT60), i.e. energy down 60 dB at RT60."""
    t = np.arange(int(seconds * SR)) / SR
    return np.random.default_rng(seed).normal(size=(2, t.size)) * np.exp(-6.9 * t / rt60_s)


# --- audio ------------------------------------------------------------------------------------

@pytest.mark.parametrize("delay_ms", [3.0, 14.7, 40.0])
def test_an_impulse_gives_its_delay_as_onset_and_peak(delay_ms):
    audio = impulse(20_000, round(delay_ms * SR / 1000))
    envelope = stats.energy_envelope(audio, SR)
    assert envelope.max() == 0.0
    assert stats.onset_ms(envelope, SR) == pytest.approx(delay_ms, abs=1.0)
    assert stats.peak_ms(envelope, SR) == pytest.approx(delay_ms, abs=1.0)
    levels = stats.envelope_levels(envelope, SR)
    assert levels["170"] is None or levels["170"] < -100     # silence long after the impulse
    assert stats.envelope_levels(envelope[:1000], SR)["50"] is None   # shorter than 50 ms


def test_onset_is_the_first_crossing_of_minus_20_db_not_the_peak():
    audio = impulse(20_000, 4410)                  # peak at 100 ms
    audio[:, 441] = 0.9 * 10 ** (-15 / 20)         # a -15 dB click at 10 ms comes first
    audio[:, 220] = 0.9 * 10 ** (-30 / 20)         # a -30 dB one at 5 ms is below the threshold
    envelope = stats.energy_envelope(audio, SR)
    assert stats.onset_ms(envelope, SR) == pytest.approx(10.0, abs=1.0)
    assert stats.peak_ms(envelope, SR) == pytest.approx(100.0, abs=1.0)


@pytest.mark.parametrize("rt60", [0.3, 0.5])
def test_schroeder_rt60_of_exponentially_decaying_noise(rt60):
    assert stats.schroeder_rt60(decaying_noise(rt60, 1.0), SR) == pytest.approx(rt60, rel=0.1)


def test_schroeder_rt60_survives_a_noise_floor_and_refuses_no_decay():
    rng = np.random.default_rng(1)
    audio = decaying_noise(0.5, 1.0) + rng.normal(scale=10 ** (-50 / 20), size=(2, SR))
    assert stats.schroeder_rt60(audio, SR) == pytest.approx(0.5, rel=0.1)
    stationary = rng.normal(scale=0.1, size=(2, 20_000))
    assert stats.schroeder_rt60(stationary, SR) is None
    assert stats.schroeder_rt60(np.zeros((2, 20_000)), SR) is None
    assert stats.schroeder_rt60(impulse(20_000, 300), SR) is None   # nothing decays


def test_late_energy_share_counts_the_samples_from_the_cut_on():
    cut = stats.echo_window_samples(30.0)
    assert cut == 7_782
    assert stats.echo_window_samples(12.0) == int(2 * 12.0 / 340 * SR)
    audio = impulse(20_000, 100, amplitude=0.1)
    audio[:, cut + 10] = 0.2                       # energy 0.01 before the cut, 0.04 after
    assert stats.late_energy_share(audio, cut) == pytest.approx(0.8)
    assert stats.late_energy_share(impulse(20_000, cut - 1), cut) == 0.0
    assert stats.late_energy_share(impulse(20_000, cut), cut) == 1.0
    assert stats.late_energy_share(np.zeros((2, 100)), cut) is None


def test_ild_and_spectral_centroid():
    t = np.arange(SR) / SR
    tone = np.sin(2 * np.pi * 2000.0 * t)
    audio = np.stack([tone, 0.5 * tone])           # left 6 dB louder
    assert stats.ild_db(audio) == pytest.approx(10 * np.log10(4.0), abs=1e-6)
    assert stats.spectral_centroid_hz(audio, SR) == pytest.approx(2000.0, rel=0.01)
    assert stats.ild_db(np.stack([tone, 0 * tone])) is None


# --- depth ------------------------------------------------------------------------------------

def hand_made_depth() -> np.ndarray:
    """20×20 mm map: 0.5 m left of column 10, 3 m from it on; 16 holes (4 in the border)."""
    depth = np.full((20, 20), 500.0)
    depth[:, 10:] = 3000.0
    depth[0, 0:4] = 0.0                            # border holes, flat 0.5 m surface
    depth[8:12, 9:11] = np.nan                     # a band of holes over the 0.5 → 3 m jump
    depth[15:17, 14:16] = np.inf                   # inside holes, flat 3 m surface
    depth[16, 15] = -np.inf
    return depth


def test_depth_statistics_of_a_hand_made_map():
    found = stats.depth_statistics(hand_made_depth())
    assert found["valid_share"] == pytest.approx(384 / 400)
    assert found["median_depth_m"] == pytest.approx(1.75)   # 192 pixels at 0.5 m, 192 at 3 m
    assert found["max_depth_m"] == pytest.approx(3.0)
    # The 1-pixel frame of a 20×20 image holds 76 pixels, the inside 324.
    assert found["hole_share"]["border"] == pytest.approx(4 / 76)
    assert found["hole_share"]["inside"] == pytest.approx(12 / 324)
    assert found["holes_near_boundary"] == pytest.approx(8 / 16)   # only the band
    assert found["holes_by_nearest_depth_m"] == pytest.approx(
        {"0-1": 0.5, "1-2": 0.0, "2-4": 0.5, "4+": 0.0})


def test_holes_next_to_a_jump_between_valid_pixels_count_as_near_a_boundary():
    depth = np.full((20, 20), 1500.0)
    depth[:, 10:] = 1900.0                          # a 0.4 m step between valid neighbours
    depth[5, 12] = 0                                # 2 px from the step
    depth[5, 16] = 0                                # 6 px from it
    found = stats.depth_statistics(depth.astype(np.uint16))
    assert found["holes_near_boundary"] == pytest.approx(0.5)
    depth[:, 10:] = 1700.0                          # 0.2 m: not an occlusion
    depth[5, [12, 16]] = 0
    assert stats.depth_statistics(depth)["holes_near_boundary"] == 0.0


def test_depth_statistics_without_holes_or_without_valid_pixels():
    full = stats.depth_statistics(np.full((10, 10), 2000, dtype=np.uint16))
    assert full["valid_share"] == 1.0 and full["holes_near_boundary"] is None
    empty = stats.depth_statistics(np.full((10, 10), np.nan))
    assert empty["valid_share"] == 0.0 and empty["median_depth_m"] is None
    assert empty["hole_share"] == {"border": 1.0, "inside": 1.0}


def test_summarise_and_flatten():
    assert stats.summarise([4.0, None, 1.0, 3.0, 2.0, float("nan"), 5.0]) == {
        "median": 3.0, "q25": 2.0, "q75": 4.0, "n": 5}
    assert stats.summarise([None])["median"] is None
    assert stats.flatten({"a": 1, "b": {"5": 2, "c": {"d": None}}}) == {
        "a": 1, "b.5": 2, "b.c.d": None}


# --- comparison -------------------------------------------------------------------------------

def test_compare_verdicts():
    reference = Reference(path=Path("ref.json"), ranges={}, statistics={
        "a": Expected(10.0, abs_tol=2.0), "b": Expected(10.0, abs_tol=2.0),
        "c": Expected(0.01, factor=2.0), "d": Expected(0.01, factor=2.0),
        "e": Expected(1.0, abs_tol=1.0), "f": Expected(1.0, abs_tol=1.0)})
    ours = {"a": {"median": 11.5, "q25": 11.0, "q75": 12.0}, "b": {"median": 12.5},
            "c": {"median": 0.019}, "d": {"median": 0.0049}, "e": {"median": None}}
    verdicts = {row.name: row.verdict for row in stats.compare(ours, reference)}
    assert verdicts == {"a": "within", "b": "outside", "c": "within", "d": "outside",
                        "e": "not measured", "f": "not measured"}
    line = stats.compare(ours, reference)[0].line()
    assert "11.5" in line and "11 .. 12" in line and "10" in line and "within" in line


def test_shipped_reference_loads_with_the_required_entries():
    reference = stats.load_reference(SHIPPED_REFERENCE)
    required = {"onset_ms", "peak_ms", "late_energy_share", "valid_share", "median_depth_m",
                *(f"envelope_db_at_ms.{t}" for t in stats.ENVELOPE_TIMES_MS)}
    assert required <= set(reference.statistics)
    assert reference.statistics["late_energy_share"] == Expected(0.0139, factor=2.0)
    assert reference.statistics["envelope_db_at_ms.50"] == Expected(-23.9, abs_tol=5.0)
    assert reference.statistics["peak_ms"] == Expected(14.7, abs_tol=2.0)
    assert reference.ranges["rt60_s"] == (0.4, 0.8)
    assert "rt60_s" not in reference.statistics
    note = json.loads(SHIPPED_REFERENCE.read_text())["note"]
    assert "ONE real" in note and "not a distribution" in note
    # Every name it checks is one the command measures.
    measured = stats.flatten({**stats.audio_statistics(impulse(20_000, 300), SR, 7_782),
                              **stats.depth_statistics(hand_made_depth())})
    assert set(reference.statistics) | set(reference.ranges) <= set(measured)


@pytest.mark.parametrize("text, problem", [
    ("{not json", "not JSON"),
    ('{"statistics": {"a": {"value": 1}}}', "exactly one"),
    ('{"statistics": {"a": {"value": -1, "factor": 2}}}', "factor"),
    ('{"note": "nothing"}', "statistics"),
])
def test_a_bad_reference_is_one_line_naming_it(tmp_path, text, problem):
    path = tmp_path / "ref.json"
    path.write_text(text)
    with pytest.raises(stats.DataError) as error:
        stats.load_reference(path)
    assert str(path) in str(error.value) and problem in str(error.value)
    assert "\n" not in str(error.value)


# --- command line -----------------------------------------------------------------------------

def run(capsys, *argv):
    status = stats.main([*map(str, argv), "--no_progress"])
    return status, capsys.readouterr().out


def test_command_on_a_v2_tree_writes_json_and_picture(tmp_path, write_v2_tree, capsys,
                                                      monkeypatch):
    root = write_v2_tree(tmp_path / "bv2", counts={"train": 2, "val": 1, "test": 1})
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    monkeypatch.chdir(tmp_path)
    status, out = run(capsys, root, "--max_samples", 5, "--picture", tmp_path / "s.png")
    assert status == 0
    report = json.loads((tmp_path / "stats.json").read_text())   # the default --out
    assert report["dataset"] == "batvisionv2" and report["samples"] == 5
    assert report["root"] == str(root) and report["echo_window_samples"] == 7_782
    assert set(report["statistics"]["valid_share"]) == {"median", "q25", "q75", "n"}
    assert report["statistics"]["envelope_db_at_ms.50"]["n"] == 5
    # The tree's noise has no decay: no RT60; its depth has 20 % holes.
    assert report["statistics"]["rt60_s"]["n"] == 0
    assert report["statistics"]["valid_share"]["median"] == pytest.approx(0.8, abs=0.05)
    assert (tmp_path / "s.png").stat().st_size > 0
    assert "5 of 12 samples" in out and "valid_share" in out
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before   # read only


def test_command_on_a_v1_tree_and_one_split(tmp_path, write_v1_tree, capsys):
    root = write_v1_tree(tmp_path / "bv1")
    status, _ = run(capsys, root, "--split", "val", "--out", tmp_path / "v1.json",
                    "--max_depth", 6)
    report = json.loads((tmp_path / "v1.json").read_text())
    assert status == 0 and report["dataset"] == "batvisionv1" and report["samples"] == 4
    assert report["echo_window_samples"] == int(2 * 6 / 340 * SR)
    assert report["statistics"]["envelope_db_at_ms.170"]["n"] == 0   # 5,000 samples: 113 ms


def test_a_single_v2_location_folder_is_measured_alone(tmp_path, write_v2_tree):
    root = write_v2_tree(tmp_path / "bv2", counts={"train": 2, "val": 1, "test": 0})
    tree = stats.open_tree(root / "Attic_A")
    assert tree.detected == "batvisionv2 location" and len(tree.records) == 3
    assert {record.location for record in tree.records} == {"Attic_A"}
    assert len(stats.open_tree(root, split="val").records) == 3   # every location
    with pytest.raises(stats.DataError, match="'test' has no samples"):
        stats.open_tree(root, split="test")


def test_compare_and_strict_exit_status(tmp_path, write_v2_tree, capsys):
    root = write_v2_tree(tmp_path / "bv2", locations=("Room",),
                         counts={"train": 2, "val": 0, "test": 0})
    within = {"valid_share": {"value": 0.8, "abs_tol": 0.1}}
    reference = tmp_path / "ref.json"
    reference.write_text(json.dumps({"statistics": within}))
    argv = [root, "--out", tmp_path / "s.json", "--compare", reference]
    assert run(capsys, *argv, "--strict")[0] == 0
    reference.write_text(json.dumps({"statistics": {
        **within, "median_depth_m": {"value": 1.0, "factor": 2.0}, "nothing": {
            "value": 1.0, "abs_tol": 1.0}}}))
    status, out = run(capsys, *argv)
    assert status == 0
    assert "valid_share: ours" in out and ": within" in out
    assert "median_depth_m: ours" in out and ": outside" in out   # noise depth: ~18 m
    assert "nothing: ours not measured" in out
    assert out.rstrip().endswith("1 of 3 statistics within tolerance")
    assert run(capsys, *argv, "--strict")[0] == 1


def test_a_missing_folder_or_a_folder_of_something_else_is_one_line(tmp_path):
    for root, problem in ((tmp_path / "nowhere", "no such folder"),
                          (tmp_path, "not a BatVision tree")):
        with pytest.raises(SystemExit) as exit_info:
            stats.main([str(root), "--out", str(tmp_path / "s.json")])
        message = str(exit_info.value.code)
        assert str(root) in message and problem in message and "\n" not in message
    assert not (tmp_path / "s.json").exists()


def test_flags_are_documented_and_misuse_exits_2(tmp_path, capsys):
    help_text = stats.build_parser().format_help()
    for flag in ("--split", "--max_samples", "--max_depth", "--out", "--picture", "--compare",
                 "--strict"):
        assert flag in help_text
    for argv in (["--strict"], ["--max_samples", "0"], ["--out", str(tmp_path / "no" / "s.json")]):
        with pytest.raises(SystemExit) as exit_info:
            stats.main([str(tmp_path), *argv])
        assert exit_info.value.code == 2
