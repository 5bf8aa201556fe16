"""The experiment table (training/experiments/): priors, summaries, goal arithmetic, the
reuse decision, and end to end on a tiny world: runs reused only on a matching identity, and a
standard-shaped smoke run."""
from __future__ import annotations

import csv
import dataclasses
import json
import runpy
import sys
from pathlib import Path
import threading
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pytest
import torch

from common.errors import UsageError
from training import device
from training.checkpoint import BEST_CHECKPOINT, FORMAT_VERSION, LAST_CHECKPOINT
from training.cli import parse_script_argv
from training.errors import TrainingError
from training.experiments import presets, report, runs
from training.experiments.main import build_parser, main, make_setup
from training.experiments.presets import (
    AUDIO_ONLY, OFFICIAL_TUNED, OFFICIAL_UNET, REFERENCES, STUDENT_OFFICIAL, TEACHER,
    is_audio_row, is_kd_row,
)
from training.experiments.report import goal_lines
from training.experiments.runs import NEW, RESUME, RETRAIN, REUSE, decide
from training.experiments.scoring import depth_priors, evaluate_prior, summarise
from training.metrics import METRIC_NAMES

REPO = Path(__file__).resolve().parent.parent
# Tiny recipes: every model at width 4 (the student attends at its two coarsest levels).
TINY_CONFIGS = {
    "teacher": "base_channels: 4\n",
    "student": "base_channels: 4\nattention_levels: [4, 5]\n",
    "kd": "base_channels: 4\nattention_levels: [4, 5]\nlambda_depth: 1\n",
    "official_unet": "model: official_unet\nbase_channels: 4\nrecipe: official\n",
    "official_unet_tuned": "model: official_unet\nbase_channels: 4\nhead_init_depth: median\n"
                           "mirror_augment: true\nema_decay: 0.9\n",
    "student_official_recipe": "base_channels: 4\nattention_levels: [4, 5]\nrecipe: official\n",
}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core CPU run far faster on one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sample(location: str, depth: float) -> dict:
    gt = torch.full((1, 4, 4), depth)
    gt[0, 0, 0] = 0.0  # a hole
    return {"depth": gt, "valid": gt > 0, "meta": {"location": location}}


def test_priors_are_per_pixel_means_of_valid_ground_truth_scored_under_both_protocols() -> None:
    train = [_sample("A", 2.0), _sample("A", 4.0), _sample("B", 8.0)]
    overall, by_location = depth_priors(train, batch_size=2)
    assert torch.allclose(overall[0, 1:, 1:], torch.tensor(14.0 / 3))
    assert torch.allclose(by_location["A"][0, 3, 3], torch.tensor(3.0))
    # A pixel never valid takes the overall mean valid depth, not 0.
    assert by_location["B"][0, 0, 0].item() == pytest.approx(14.0 / 3)

    test = [_sample("A", 3.0), _sample("B", 8.0)]
    exact, n_images = evaluate_prior(test, lambda location: by_location[location], batch_size=2)
    assert n_images == 2 and set(exact) == {"official", "bv2_min0.5"}
    assert exact["official"]["rmse"] == pytest.approx(0.0, abs=1e-6)
    blind, _ = evaluate_prior(test, lambda location: overall, batch_size=2)
    # Per image |gt - 14/3|: 5/3 m (A) and 10/3 m (B), mean 2.5 m. Every valid pixel is
    # >= 0.5 m, so the second protocol scores the same pixels.
    assert blind["official"]["mae"] == pytest.approx(2.5)
    assert blind["bv2_min0.5"]["mae"] == pytest.approx(2.5)


def test_second_protocol_drops_ground_truth_below_half_a_metre() -> None:
    near = _sample("A", 0.4)   # 15 pixels at 0.4 m: scored by gt > 0 only
    near["depth"][0, 3, 3] = 2.0
    results, _ = evaluate_prior([near], lambda location: torch.full((1, 4, 4), 2.0), 1)
    # gt > 0: 14 pixels off by 1.6 m and one exact; gt >= 0.5: only the exact pixel.
    assert results["official"]["mae"] == pytest.approx(14 * 1.6 / 15)
    assert results["bv2_min0.5"]["mae"] == pytest.approx(0.0)


def test_summary_gives_mean_and_sample_std_over_seeds() -> None:
    rows = [{"experiment": AUDIO_ONLY, "label": "audio", "rmse": r, "train_seconds": 10.0 * r,
             "params": 7} for r in (1.0, 2.0, 3.0)]
    (entry,) = summarise(rows, [AUDIO_ONLY, "absent"])
    assert entry["n"] == 3 and entry["params"] == 7
    assert entry["rmse"] == pytest.approx(2.0) and entry["rmse_std"] == pytest.approx(1.0)
    assert entry["train_seconds"] == pytest.approx(20.0)
    assert entry["abs_rel"] is None and entry["rmse@bv2_min0.5"] is None  # never scored


def _entry(name: str, rmse: float, std: "float | None" = None, seconds: float = 100.0,
           n: int = 3, val: "float | None" = None) -> Dict[str, object]:
    """A summary row; its validation RMSE is its test RMSE unless ``val`` says otherwise."""
    return {"experiment": name, "label": name, "rmse": rmse, "rmse_std": std,
            "val_rmse": rmse if val is None else val, "train_seconds": seconds, "n": n}


def test_quick_goal_line_compares_the_best_audio_row_with_the_official_unet() -> None:
    summary = [_entry("rgb_teacher", 0.2), _entry(OFFICIAL_UNET, 0.655),
               _entry(AUDIO_ONLY, 0.700), _entry("kd", 0.612),
               _entry("location_mean_depth_map", 0.650)]
    lines = goal_lines(summary, "quick")
    # The teacher (0.2) is not an audio row; the best audio row is the KD one.
    assert lines[0] == ("- Best audio row beats the official U-Net row of the same run: yes "
                        "(0.612 vs 0.655 m test RMSE; best audio row: kd, chosen by validation "
                        "RMSE 0.612 m).")
    assert lines[1] == "- Audio rows below the per-location mean depth map (0.650 m): 1 of 2."
    summary[3] = _entry("kd", 0.660)
    assert goal_lines(summary, "quick")[0].startswith(
        "- Best audio row beats the official U-Net row of the same run: no (0.660 vs 0.655")


def test_best_rows_are_chosen_by_validation_not_by_test() -> None:
    """The KD row has the lower test RMSE but the higher validation RMSE: the audio-only row is
    the one chosen, and it is reported on test."""
    summary = [_entry(OFFICIAL_UNET, 0.655), _entry(AUDIO_ONLY, 0.700, val=0.60),
               _entry("kd", 0.612, val=0.65)]
    assert goal_lines(summary, "quick")[0] == (
        "- Best audio row beats the official U-Net row of the same run: no (0.700 vs 0.655 m "
        "test RMSE; best audio row: audio_only, chosen by validation RMSE 0.600 m).")
    summary = [_entry(OFFICIAL_UNET, 0.800, 0.01), _entry(AUDIO_ONLY, 0.700, 0.01),
               _entry("kd", 0.640, 0.01, val=0.70), _entry("kd_gated", 0.680, 0.01, val=0.69)]
    lines = goal_lines(summary, "standard")
    assert lines[2] == ("- Best KD RMSE <= 0.80 x the official U-Net's: not met (0.680 vs 0.800 "
                        "m, ratio 0.850; best KD: kd_gated, chosen by validation RMSE 0.690 m).")
    assert lines[3].startswith("- KD gain larger than 2 x the larger seed std: not met (gain "
                               "0.700 - 0.680 = 0.020 m vs 0.020 m")


def test_standard_goal_lines_on_hand_made_numbers() -> None:
    summary = [_entry(OFFICIAL_UNET, 0.800, 0.01, seconds=400.0),
               _entry(AUDIO_ONLY, 0.700, 0.020, seconds=500.0),
               _entry("kd_depth_features", 0.650, 0.010), _entry("kd", 0.660, 0.001)]
    lines = goal_lines(summary, "standard")
    assert lines[:4] == [
        # 0.700 / 0.800 = 0.875 <= 0.90
        "- Audio-only RMSE <= 0.90 x the U-Net's with its better recipe (official_unet, chosen "
        "by validation RMSE 0.800 m): met (0.700 vs 0.800 m, ratio 0.875).",
        # 500 / 400 = 1.25 <= 1.5
        "- Audio-only training time <= 1.5 x that U-Net's: met (500 vs 400 s, ratio 1.25).",
        # best KD = kd_depth_features: 0.650 / 0.800 = 0.8125 > 0.80
        "- Best KD RMSE <= 0.80 x the official U-Net's: not met (0.650 vs 0.800 m, ratio 0.812; "
        "best KD: kd_depth_features, chosen by validation RMSE 0.650 m).",
        # gain 0.05 > 2 x max(0.020, 0.010) = 0.04
        "- KD gain larger than 2 x the larger seed std: met (gain 0.700 - 0.650 = 0.050 m vs "
        "0.040 m, 3 seeds; best KD: kd_depth_features, chosen by validation RMSE 0.650 m).",
    ]
    # kd's control is the audio-only row: 0.040 m gain against a bar of 2 x 0.020.
    assert lines[4] == ("- kd: beats its controls by more than 2 x the larger seed std: no (vs "
                        "audio_only: 0.700 - 0.660 = +0.040 m, bar 0.040 m).")
    summary[1] = _entry(AUDIO_ONLY, 0.740, 0.030, seconds=700.0)  # 0.925 x; 1.75 x; 0.09 > 0.06
    lines = goal_lines(summary, "standard")
    assert lines[0].startswith("- Audio-only RMSE <= 0.90 x the U-Net's with its better recipe "
                               "(official_unet, chosen by validation RMSE 0.800 m): not met")
    assert lines[1].startswith("- Audio-only training time <= 1.5 x that U-Net's: not met")
    assert "met (gain 0.740 - 0.650 = 0.090 m vs 0.060 m" in lines[3]
    summary[1] = _entry(AUDIO_ONLY, 0.700, 0.040)  # gain 0.05 < 2 x 0.040
    assert "not met (gain" in goal_lines(summary, "standard")[3]
    one_seed = [_entry(OFFICIAL_UNET, 0.8, n=1), _entry(AUDIO_ONLY, 0.7, n=1),
                _entry("kd", 0.6, n=1)]
    assert goal_lines(one_seed, "standard")[-2] == (
        "- KD gain larger than 2 x the seed spread: not measurable with one seed (gain 0.100 m).")
    assert goal_lines(one_seed, "standard")[-1].endswith("not measurable with one seed (vs "
                                                         "audio_only: 0.700 - 0.600 = +0.100 m).")


def test_the_student_is_measured_against_the_unet_with_its_better_recipe() -> None:
    """The recipe-matched U-Net validates better here, so it is the one the goal measures; the
    other recipe is shown, not judged. With the validation reversed, the official one is."""
    summary = [_entry(OFFICIAL_UNET, 0.800, seconds=400.0),
               _entry(OFFICIAL_TUNED, 0.650, seconds=500.0),
               _entry(AUDIO_ONLY, 0.600, seconds=800.0)]
    lines = goal_lines(summary, "standard")
    # 0.600 / 0.650 = 0.923 > 0.90; 800 / 500 = 1.6 > 1.5
    assert lines[:3] == [
        "- Audio-only RMSE <= 0.90 x the U-Net's with its better recipe (official_unet_tuned, "
        "chosen by validation RMSE 0.650 m): not met (0.600 vs 0.650 m, ratio 0.923).",
        "- Audio-only training time <= 1.5 x that U-Net's: not met (800 vs 500 s, ratio 1.60).",
        "- The U-Net by recipe (test RMSE): official_unet 0.800 m, official_unet_tuned 0.650 m."]
    summary[1] = _entry(OFFICIAL_TUNED, 0.650, seconds=500.0, val=0.9)
    assert goal_lines(summary, "standard")[0].startswith(
        "- Audio-only RMSE <= 0.90 x the U-Net's with its better recipe (official_unet, chosen "
        "by validation RMSE 0.800 m): met (0.600 vs 0.800 m, ratio 0.750)")


def test_a_distillation_row_counts_only_past_every_control() -> None:
    """kd_gated's controls are the gated depth alone and the random-teacher features; it beats
    the first by 0.05 (bar 2 x 0.01) and the second by only 0.01: no."""
    summary = [_entry(AUDIO_ONLY, 0.75, 0.01), _entry("kd_gated", 0.60, 0.01),
               _entry("kd_gated_depth", 0.65, 0.01), _entry("kd_hard_pixels", 0.70, 0.005),
               _entry("kd_gated_random_features", 0.61, 0.005)]
    lines = goal_lines(summary, "standard")
    assert ("- kd_gated: beats its controls by more than 2 x the larger seed std: no (vs "
            "kd_gated_depth: 0.650 - 0.600 = +0.050 m, bar 0.020 m; vs "
            "kd_gated_random_features: 0.610 - 0.600 = +0.010 m, bar 0.020 m).") in lines
    assert ("- kd_gated_depth: beats its controls by more than 2 x the larger seed std: yes (vs "
            "kd_hard_pixels: 0.700 - 0.650 = +0.050 m, bar 0.020 m).") in lines
    # A control is never the "best KD", however low its RMSE.
    summary[3] = _entry("kd_hard_pixels", 0.40, 0.005)
    assert "best KD: kd_gated," in goal_lines(summary, "standard")[-3]


def test_every_control_is_a_row_of_the_presets_that_claim_against_it() -> None:
    for preset in presets.PRESETS.values():
        names = {e.name for e in preset.experiments}
        for experiment in preset.experiments:
            assert set(experiment.controls) <= names, (experiment.name, experiment.controls)
            assert all(presets.EXPERIMENTS[c].role in ("control", "student", "kd")
                       for c in experiment.controls)


def test_what_a_row_is_comes_from_its_role_not_its_script() -> None:
    names = [e.name for e in presets.STANDARD_ROWS]
    assert [name for name in names if is_audio_row(name)] == [
        AUDIO_ONLY, STUDENT_OFFICIAL, "kd", *(e.name for e in presets.KD_VARIANTS),
        "kd_gated", "kd_gated_depth", "kd_holes"]
    assert [name for name in names if is_kd_row(name)] == [
        "kd", *(e.name for e in presets.KD_VARIANTS), "kd_gated", "kd_gated_depth", "kd_holes"]
    # The student's script trains the official U-Net, but it is the reference, not ours; the
    # distillation script trains the controls, which are no distillation of ours either.
    assert presets.OFFICIAL_ROW.kind == "student" and presets.OFFICIAL_ROW.role == "baseline"
    assert presets.OFFICIAL_TUNED_ROW.role == "baseline"
    assert not any(is_audio_row(e.name) or is_kd_row(e.name) for e in presets.GATED_ROWS
                   if e.role == "control")
    assert not any(is_audio_row(name) or is_kd_row(name) for name in REFERENCES)
    with pytest.raises(ValueError, match="role must be one of"):
        presets.Experiment("x", "x", "student", "ours", "student")


def _write_checkpoint(run_dir: Path, identity: "dict | None", epoch: int, nb_epochs: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = {"format_version": FORMAT_VERSION, "model_name": "rgb_depth", "model_config": {},
                  "model_state": {}, "epoch": epoch, "args": {"nb_epochs": nb_epochs}}
    if identity is not None:
        checkpoint["identity"] = identity
    torch.save(checkpoint, run_dir / LAST_CHECKPOINT)


def test_decide_reuses_resumes_or_retrains_by_identity(tmp_path: Path) -> None:
    settings = {"data": {"image_size": 64}, "optimisation": {"nb_epochs": 4}}
    wanted = {"kind": "teacher", "model": "rgb_depth", "settings": settings, "data": "d",
              "teacher": None, "fingerprint": "A"}
    assert decide(tmp_path / "none", wanted) == (NEW, [])
    _write_checkpoint(tmp_path / "done", wanted, epoch=4, nb_epochs=4)
    assert decide(tmp_path / "done", wanted) == (REUSE, [])
    _write_checkpoint(tmp_path / "cut", wanted, epoch=2, nb_epochs=4)
    assert decide(tmp_path / "cut", wanted) == (RESUME, [])
    other = {**wanted, "settings": {**settings, "data": {"image_size": 32}}, "data": "e",
             "fingerprint": "B"}
    _write_checkpoint(tmp_path / "other", other, epoch=4, nb_epochs=4)
    assert decide(tmp_path / "other", wanted) == (RETRAIN, [
        "--image_size: 32 -> 64",
        "data files changed (split CSVs or the size/mtime of a referenced file)"])
    _write_checkpoint(tmp_path / "old", None, epoch=4, nb_epochs=4)
    action, why = decide(tmp_path / "old", wanted)
    assert action == RETRAIN and "no identity" in why[0]


# --------------------------------------------------------------------------------------------
# End to end on a tiny world, the scripts run in this process


def _write_configs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in TINY_CONFIGS.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


class InProcess:
    """A launcher that runs the scripts in this process (as ``python script argv`` would) and
    records each call as ``(script, experiment or checkpoint folder, resumed?)``."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, str, bool]] = []

    def __call__(self, script: str, argv: Sequence[str], log: Optional[Path] = None) -> None:
        assert log is None  # one job: output to the terminal
        argv = list(argv)
        where = (argv[argv.index("--experiment_name") + 1] if "--experiment_name" in argv
                 else Path(argv[argv.index("--checkpoint") + 1]).parent.name)
        self.calls.append((script, where, "--resume" in argv))
        saved = sys.argv
        sys.argv = [script, *argv]
        try:
            runpy.run_path(str(REPO / script), run_name="__main__")
        finally:
            sys.argv = saved

    def trained(self) -> List[str]:
        return [where for script, where, _ in self.calls if script.startswith("train_")]

    def evaluated(self) -> List[str]:
        return [where for script, where, _ in self.calls if script == "evaluate.py"]


def _run(argv: List[str], monkeypatch: pytest.MonkeyPatch) -> InProcess:
    launcher = InProcess()
    monkeypatch.setattr(runs, "run_script", launcher)
    main(argv)
    return launcher


def _tiny_argv(tmp_path: Path, *extra: str) -> List[str]:
    return ["--out", str(tmp_path / "results"), "--data_root", str(tmp_path / "world"),
            "--config_dir", str(_write_configs(tmp_path / "configs")), "--device", "cpu",
            "--synthetic_locations", "2", "--synthetic_samples", "8", "--synthetic_size", "32",
            "--image_size", "32", "--batch_size", "4", "--teacher_epochs", "1",
            "--student_epochs", "1", "--num_pictures", "2", *extra]


@pytest.mark.slow
def test_runs_are_reused_only_while_their_identity_matches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    argv = _tiny_argv(tmp_path, "--preset", "quick", "--experiments", "kd")
    first = _run(argv, monkeypatch)
    assert first.trained() == ["rgb_teacher", "kd"] and first.evaluated() == first.trained()

    capsys.readouterr()
    again = _run(argv, monkeypatch)
    assert again.trained() == []
    assert "warning" not in capsys.readouterr().out  # the runner agrees with the engine

    # An evaluation is reused once it holds every protocol (added here where evaluate.py wrote
    # only its primary one) for this checkpoint and test split.
    for metrics_file in (tmp_path / "results" / "runs" / "seed0").glob("*/eval_test/metrics.json"):
        result = json.loads(metrics_file.read_text())
        result.setdefault("protocols", {"bv2_min0.5": {m: result[m] for m in METRIC_NAMES}})
        metrics_file.write_text(json.dumps(result))
    assert _run(argv, monkeypatch).calls == []

    # Only the teacher's settings change: the teacher is retrained, so the student's teacher
    # fingerprint changes and the student is retrained too.
    longer_teacher = _run(argv + ["--teacher_epochs", "2"], monkeypatch)
    assert longer_teacher.trained() == ["rgb_teacher", "kd"]
    assert longer_teacher.evaluated() == ["rgb_teacher", "kd"]

    # Another world in the same folder (same --out): every run is retrained.
    bigger_world = _run(argv + ["--teacher_epochs", "2", "--synthetic_samples", "10"],
                        monkeypatch)
    assert bigger_world.trained() == ["rgb_teacher", "kd"]

    # Another image size with --on_mismatch stop: one line naming the difference, no training.
    launcher = InProcess()
    monkeypatch.setattr(runs, "run_script", launcher)
    with pytest.raises(SystemExit) as stopped:
        main(argv + ["--teacher_epochs", "2", "--synthetic_samples", "10",
                                 "--image_size", "16", "--on_mismatch", "stop"])
    message = str(stopped.value)
    assert message.startswith("error: ") and "\n" not in message
    assert "rgb_teacher holds a run trained differently: --image_size: 32 -> 16" in message
    assert launcher.calls == []


@pytest.mark.slow
def test_a_run_cut_short_is_resumed_and_its_evaluation_redone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = _tiny_argv(tmp_path, "--preset", "quick", "--experiments", "rgb_teacher",
                      "--teacher_epochs", "2")
    launcher = InProcess()
    setup = make_setup(build_parser(None).parse_args(argv), launcher)
    spec = runs.run_spec(setup.preset.experiments[0], 0, setup)
    # Stopped after one of its two epochs, as if killed (an operational flag: same identity).
    launcher(spec.script, [*spec.argv, "--stop_after_epochs", "1"])

    resumed = _run(argv, monkeypatch)
    assert resumed.calls == [("train_rgb_depth.py", "rgb_teacher", True),
                             ("evaluate.py", "rgb_teacher", False)]
    assert torch.load(spec.run_dir / LAST_CHECKPOINT, weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_standard_shaped_smoke_run_writes_both_protocols_settings_goals_and_pictures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    launcher = _run(_tiny_argv(tmp_path, "--preset", "standard", "--seeds", "1"), monkeypatch)
    names = [e.name for e in presets.PRESETS["standard"].experiments]
    assert launcher.trained() == names and launcher.evaluated() == names
    # Every kind of row recorded the identity the runner computed for it.
    assert "warning" not in capsys.readouterr().out
    out = tmp_path / "results"
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["experiment"] for r in rows] == names + list(REFERENCES)
    assert all(float(r["rmse"]) > 0 for r in rows)
    assert {f"{m}@bv2_min0.5" for m in METRIC_NAMES} <= set(rows[0])
    by_name = {r["experiment"]: r for r in rows}
    # The official recipe has no model selection: its row is scored at the last epoch.
    assert by_name[OFFICIAL_UNET]["scored"] == "last (epoch 1)"
    # Every row, the official recipe's included, is scored on one ground truth.
    evaluations = list((out / "runs" / "seed0").glob("*/eval_test*/metrics.json"))
    assert len(evaluations) == len(names)
    assert {json.loads(f.read_text())["ground_truth"] for f in evaluations} == {"default"}
    assert by_name[AUDIO_ONLY]["scored"] == "best (epoch 1)"
    assert int(by_name[OFFICIAL_UNET]["params"]) > 0 and float(by_name["kd"]["train_seconds"]) > 0

    table = (out / "results.md").read_text()
    assert "rmse (gt >= 0.5 m)" in table and "`official`: gt > 0.0 m" in table
    assert "- Audio-only RMSE <= 0.90 x the U-Net's with its better recipe (" in table
    assert "- The U-Net by recipe (test RMSE): official U-Net, official recipe" in table
    assert ("- audio + KD gated depth + features x1..x5: beats its controls by more than 2 x the "
            "larger seed std: not measurable with one seed") in table
    assert "World: `--synthetic_seed 0`, a development world" in table
    assert "not measurable with one seed" in table
    # Settings come from the runs' config.json: shared ones once, each row's own beside it.
    assert "Every run: " in table and "image_size=32" in table
    assert "- official U-Net, official recipe (last epoch): " in table
    assert "model=official_unet" in table and "recipe=official" in table
    for picture in ("rmse.png", "pictures.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("preset", sorted(presets.PRESETS))
def test_every_row_of_every_preset_parses_with_the_repository_config_files(
        preset: str, tmp_path: Path) -> None:
    chosen = presets.PRESETS[preset]
    config_dir = REPO / chosen.config_dir
    missing = [e.config for e in chosen.experiments
               if not (config_dir / f"{e.config}.yaml").is_file()]
    if missing:
        pytest.skip(f"{config_dir}: no {', '.join(sorted(set(missing)))}.yaml yet")
    setup = runs.Setup(
        preset=chosen, config_dir=config_dir, data_root=str(tmp_path), cache_dir=tmp_path,
        device="cpu", runs_dir=tmp_path, on_mismatch="retrain", launch=InProcess(),
        companion_root=str(tmp_path / "companion"))
    for experiment in chosen.experiments:
        spec = runs.run_spec(experiment, 0, setup)
        args = parse_script_argv(spec.experiment.kind, spec.argv)
        assert args.image_size == chosen.image_size and args.batch_size == chosen.batch_size
        assert (args.model if experiment.kind == "student" else None) == (
            "official_unet" if experiment.role == "baseline" else
            "binaural_attention" if experiment.kind == "student" else None)
        # Each architecture under our recipe starts at the median and is scored at its best
        # validation; under the official recipe it has neither.
        ours = experiment.name not in (OFFICIAL_UNET, STUDENT_OFFICIAL)
        if experiment.kind == "student":
            assert (experiment.scored == presets.BEST) == ours, experiment.name
        if experiment in presets.RECIPE_ROWS:
            assert (args.head_init_depth == "median") == ours, experiment.name


def _specs(tmp_path: Path, seeds: int, jobs: int) -> Tuple[List[runs.RunSpec], runs.Setup]:
    preset = presets.PRESETS["standard"]
    setup = runs.Setup(
        preset=preset, config_dir=REPO / preset.config_dir, data_root=str(tmp_path),
        cache_dir=tmp_path, device="cpu", runs_dir=tmp_path / "runs", on_mismatch="retrain",
        launch=InProcess(), jobs=jobs, logs_dir=tmp_path / "logs")
    return [runs.run_spec(e, seed, setup) for seed in range(seeds)
            for e in preset.experiments], setup


class FakeRuns:
    """Stands in for train_run/score_run: records when each run trains, and how many at once."""

    def __init__(self, failing: Sequence[str] = ()) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0
        self.finished: List[Tuple[int, str]] = []
        self.started_after: Dict[Tuple[int, str], List[Tuple[int, str]]] = {}
        self.failing = set(failing)

    def train_run(self, spec: runs.RunSpec, setup: runs.Setup) -> None:
        key = (spec.seed, spec.experiment.name)
        with self.lock:
            self.started_after[key] = list(self.finished)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(0.05)
        with self.lock:
            self.running -= 1
            self.finished.append(key)
        if spec.experiment.name in self.failing:
            raise TrainingError(f"{spec.experiment.name} failed")

    def score_run(self, spec: runs.RunSpec, setup: runs.Setup) -> dict:
        return {"experiment": spec.experiment.name, "seed": spec.seed}


@pytest.mark.parametrize("jobs", [1, 3])
def test_runs_train_jobs_at_a_time_and_distillation_waits_for_its_teacher(
        jobs: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    specs, setup = _specs(tmp_path, seeds=2, jobs=jobs)
    fake = FakeRuns()
    monkeypatch.setattr(runs, "train_run", fake.train_run)
    rows = runs.train_and_score(specs, setup, fake.score_run)
    assert [(r["seed"], r["experiment"]) for r in rows] == [
        (s.seed, s.experiment.name) for s in specs]  # the table's order, whatever finished first
    assert fake.most_at_once == jobs
    for spec in specs:
        if spec.experiment.kind == "kd":
            assert (spec.seed, TEACHER) in fake.started_after[
                (spec.seed, spec.experiment.name)]


def test_a_failed_teacher_fails_its_students_and_the_other_runs_still_finish(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    specs, setup = _specs(tmp_path, seeds=1, jobs=2)
    fake = FakeRuns(failing=[TEACHER])
    monkeypatch.setattr(runs, "train_run", fake.train_run)
    with pytest.raises(TrainingError, match="rgb_teacher failed"):
        runs.train_and_score(specs, setup, fake.score_run)
    trained = {name for _, name in fake.finished}
    # Every run of the student's script; no run of the distillation script started.
    assert trained == {TEACHER, *(e.name for e in presets.RECIPE_ROWS)}


@pytest.mark.slow  # starts the scripts in child processes
def test_with_several_jobs_a_failed_script_is_one_line_quoting_its_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "eval.log"
    with pytest.raises(TrainingError) as failed:
        runs.run_script("evaluate.py", ["--checkpoint", str(tmp_path / "missing")], log)
    message = str(failed.value)
    assert "\n" not in message and f"{log}: error: " in message
    assert str(tmp_path / "missing") in log.read_text()


@pytest.mark.parametrize("jobs, threads", [(1, None), (2, 1)])
def test_runs_started_together_on_a_cpu_get_their_share_of_the_cores(
        jobs: int, threads: Optional[int], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "busy_cores", lambda: (0.0, 2))   # a quiet 2-core machine
    monkeypatch.setattr(device, "TORCH_DEFAULT_THREADS", 2)
    monkeypatch.setattr(device, "usable_cpus", lambda: 2)
    args = build_parser(None).parse_args(_tiny_argv(tmp_path, "--jobs", str(jobs)))
    monkeypatch.setattr(runs, "world_root", lambda preset, root: str(tmp_path))
    setup = make_setup(args, InProcess())
    spec = runs.run_spec(presets.PRESETS["quick"].experiments[0], 0, setup)
    given = spec.argv[spec.argv.index("--threads") + 1] if "--threads" in spec.argv else None
    assert given == (None if threads is None else str(threads))
    assert setup.thread_flags() == ([] if threads is None else ["--threads", given])


def test_the_world_of_real_data_is_the_folder_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    full = presets.PRESETS["full"]
    assert runs.world_root(full, "bv2") == str((tmp_path / "bv2").resolve())
    with pytest.raises(UsageError, match="--data_root is required for --dataset batvisionv2"):
        runs.world_root(full, None)


def test_labels_rows_take_equal_steps_and_their_own_teachers(tmp_path: Path) -> None:
    preset = presets.PRESETS["labels"]
    setup = runs.Setup(preset=preset, config_dir=REPO / preset.config_dir,
                       data_root=str(tmp_path / "world"), cache_dir=tmp_path, device="cpu",
                       runs_dir=tmp_path / "runs", on_mismatch="retrain", launch=InProcess(),
                       companion_root=str(tmp_path / "companion"))
    specs = {e.name: runs.run_spec(e, 0, setup) for e in preset.experiments}
    args = {name: parse_script_argv(spec.experiment.kind, spec.argv)
            for name, spec in specs.items()}
    # A run that reads only the labelled tenth trains ten times the epochs; distillation reads
    # every sample and keeps the preset's.
    assert (args["audio_only_f0.1"].nb_epochs, args["rgb_teacher_f0.1"].nb_epochs) == (80, 100)
    assert args["audio_only_f0.05"].nb_epochs == 160
    assert args["kd_strict_f0.1"].nb_epochs == args["kd_rich_f0"].nb_epochs == 8
    assert args["audio_only"].nb_epochs == 8 and args["audio_only"].labelled_fraction == 1.0
    assert args["kd_strict_f0.1"].labelled_fraction == args["rgb_teacher_f0.1"].labelled_fraction
    assert args["kd_rich_f0"].labelled_fraction == 0.0
    # Each distils from its own teacher of the same seed; the teacher-rich one lives in the
    # companion world, the students in the preset's.
    runs_dir = tmp_path / "runs" / "seed0"
    assert args["kd_strict_f0.1"].teacher_checkpoint == str(
        runs_dir / "rgb_teacher_f0.1" / BEST_CHECKPOINT)
    assert args["kd_rich_f0.1"].teacher_checkpoint == str(
        runs_dir / presets.RICH_TEACHER / BEST_CHECKPOINT)
    rich = args[presets.RICH_TEACHER]
    assert rich.data_root == str(tmp_path / "companion")
    assert rich.synthetic_seed == preset.synthetic_seed + presets.COMPANION_WORLD_OFFSET
    assert rich.labelled_fraction == 1.0
    assert args["kd_rich_f0.1"].data_root == str(tmp_path / "world")
    # Asking for a KD row brings its teacher along, and no other.
    chosen = presets.resolve_preset(build_parser(None).parse_args(
        ["--preset", "labels", "--experiments", "kd_rich_f0"]))
    assert [e.name for e in chosen.experiments] == [presets.RICH_TEACHER, "kd_rich_f0"]


def test_the_labels_benchmark_holds_the_goal_rows_with_their_teachers() -> None:
    preset = presets.PRESETS["labels_benchmark"]
    names = [e.name for e in preset.experiments]
    assert {"audio_only_f0.1", "kd_strict_f0.1", "kd_rich_f0.1", AUDIO_ONLY, "kd_rich_f0"} <= set(
        names)
    for e in preset.experiments:
        if e.kind == "kd":  # its teacher comes first, so it is trained before the student
            assert names.index(e.teacher) < names.index(e.name)
    assert (preset.image_size, preset.student_epochs, preset.dense_truth) == (128, 20, True)
    assert preset.goals == "labels"


def test_the_report_preset_is_the_claims_rows_at_the_development_sizes() -> None:
    report, development = presets.PRESETS["report"], presets.PRESETS["development"]
    rows = {e.name for e in report.experiments}
    # Every claimed row and every control it is measured against, and no screening row.
    for e in report.experiments:
        assert set(e.controls) <= rows
    assert {presets.OFFICIAL_UNET, presets.OFFICIAL_TUNED, AUDIO_ONLY, presets.STUDENT_OFFICIAL,
            "kd", "kd_gated"} <= rows
    assert rows < {e.name for e in development.experiments}
    assert not rows & {e.name for e in presets.UNET_SCREEN_ROWS + presets.STUDENT_SCREEN_ROWS}
    assert dataclasses.replace(report, experiments=(), description="") == dataclasses.replace(
        development, experiments=(), description="")


def test_labels_goal_lines_on_hand_made_numbers() -> None:
    summary = [_entry(AUDIO_ONLY, 0.60, 0.01), _entry("audio_only_f0.1", 0.80, 0.02),
               _entry("kd_strict_f0.1", 0.62, 0.02), _entry("kd_rich_f0.1", 0.70, 0.05),
               _entry("kd_rich_f0", 0.78, 0.01)]
    lines = goal_lines(summary, "labels")
    assert lines[0] == ("- kd_strict_f0.1: >= 20% below audio_only_f0.1 and past 2 x the larger "
                        "seed std: met (0.620 vs 0.800 m, 22.5% below; gain 0.180 vs bar 0.040 "
                        "m).")
    assert lines[1] == ("- kd_strict_f0.1: within 1.10 x the fully labelled audio-only student: "
                        "met (0.620 vs 0.600 m, ratio 1.033).")
    assert lines[2].startswith("- kd_rich_f0.1: >= 20% below audio_only_f0.1 and past 2 x the "
                               "larger seed std: not met (0.700 vs 0.800 m, 12.5% below")
    assert lines[4] == ("- kd_rich_f0: within 1.25 x the fully labelled audio-only student: not "
                        "met (0.780 vs 0.600 m, ratio 1.300).")
    # Without dense scoring there is no hole line (the prior line closes the list, if any).
    assert not any("holes" in line for line in lines)
    dense = {"audio_only_f0.1": (1.50, 0.05), "kd_strict_f0.1": (1.20, 0.02),
             "kd_rich_f0.1": (1.45, 0.04)}
    for entry in summary:
        if entry["experiment"] in dense:
            entry["rmse_holes"], entry["rmse_holes_std"] = dense[entry["experiment"]]
    holes = [line for line in goal_lines(summary, "labels") if "holes" in line]
    assert holes == [
        "- Inside the sensor's holes (dense truth), kd_strict_f0.1 beats audio_only_f0.1: met "
        "(1.200 vs 1.500 m; gain 0.300 vs bar 0.100 m).",
        "- Inside the sensor's holes (dense truth), kd_rich_f0.1 beats audio_only_f0.1: not met "
        "(1.450 vs 1.500 m; gain 0.050 vs bar 0.100 m)."]


def test_the_fraction_plot_draws_one_line_per_family() -> None:
    summary = [_entry(name, rmse, 0.01) for name, rmse in [
        (AUDIO_ONLY, 0.6), ("audio_only_f0.1", 0.8), ("kd_strict_f0.1", 0.7),
        ("kd_rich_f0.1", 0.72), ("kd_rich_f0", 0.9), ("kd_strict_f1", 0.61), ("rgb_teacher", 0.3)]]
    lines = report.fraction_lines(summary, presets.PRESETS["labels"])
    assert {name: [f for f, _ in points] for name, points in lines.items()} == {
        "audio only": [0.1, 1.0], "KD, strict teacher": [0.1, 1.0],
        "KD, teacher-rich": [0.0, 0.1]}


@pytest.mark.slow
def test_a_tiny_labels_preset_runs_end_to_end(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    argv = _tiny_argv(tmp_path, "--preset", "labels", "--seeds", "1", "--experiments",
                      "audio_only,audio_only_f0.1,kd_strict_f0.1,kd_rich_f0.1,kd_rich_f0")
    launcher = _run(argv, monkeypatch)
    assert launcher.trained() == ["rgb_teacher_rich", "rgb_teacher_f0.1", "audio_only_f0.1",
                                  "kd_strict_f0.1", "kd_rich_f0.1", "audio_only", "kd_rich_f0"]
    out = tmp_path / "results"
    table = (out / "results.md").read_text()
    assert "- KD from the strict teacher, 10% labelled: >= 20% below" in table
    assert "- KD from the teacher-rich teacher, no depth label: within 1.25 x" in table
    assert "- Inside the sensor's holes (dense truth), KD from the strict teacher" in table
    assert "| rmse (dense truth, inside the sensor's holes) |" in table
    with open(out / "results.csv") as f:
        rows = {row["experiment"]: row for row in csv.DictReader(f)}
    assert float(rows["kd_rich_f0"]["rmse_holes"]) > 0
    assert rows["location_mean_depth_map"]["rmse_dense"] == ""
    assert (out / "rmse_by_fraction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_table_without_the_usual_picture_rows_shows_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = _tiny_argv(tmp_path, "--preset", "development", "--seeds", "1", "--experiments",
                      "audio_only_log1p")
    assert _run(argv, monkeypatch).trained() == ["audio_only_log1p"]
    out = tmp_path / "results"
    assert (out / "pictures.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "audio only, our recipe, default preprocessing" in (out / "results.md").read_text()
