"""The experiment runner: the reference rows' priors, and a 1-seed smoke run on a tiny world."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import run_experiments
from run_experiments import EXPERIMENTS, REFERENCES, depth_priors, evaluate_prior, summarise


def _sample(location: str, depth: float) -> dict:
    gt = torch.full((1, 4, 4), depth)
    gt[0, 0, 0] = 0.0  # a hole
    return {"depth": gt, "valid": gt > 0, "meta": {"location": location}}


def test_priors_are_per_pixel_means_of_valid_ground_truth() -> None:
    train = [_sample("A", 2.0), _sample("A", 4.0), _sample("B", 8.0)]
    overall, by_location = depth_priors(train, batch_size=2)
    assert torch.allclose(overall[0, 1:, 1:], torch.tensor(14.0 / 3))
    assert torch.allclose(by_location["A"][0, 3, 3], torch.tensor(3.0))
    # A pixel never valid takes the overall mean valid depth, not 0.
    assert by_location["B"][0, 0, 0].item() == pytest.approx(14.0 / 3)

    test = [_sample("A", 3.0), _sample("B", 8.0)]
    exact = evaluate_prior(test, lambda location: by_location[location], batch_size=2)
    blind = evaluate_prior(test, lambda location: overall, batch_size=2)
    assert exact["rmse"] == pytest.approx(0.0, abs=1e-6) and exact["n_images"] == 2
    assert blind["rmse"] > 1.0


def test_summary_gives_mean_and_sample_std_over_seeds() -> None:
    rows = [{"experiment": "audio_only", "label": "audio", "rmse": r, **{m: 0.0 for m in
             ("abs_rel", "log10", "mae", "delta1", "delta2", "delta3")}} for r in (1.0, 2.0, 3.0)]
    (entry,) = summarise(rows)
    assert entry["n"] == 3
    assert entry["rmse"] == pytest.approx(2.0) and entry["rmse_std"] == pytest.approx(1.0)


@pytest.mark.slow
def test_one_seed_smoke_run_writes_table_and_pictures_and_then_reuses_everything(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "results"
    argv = ["--preset", "quick", "--seeds", "1", "--out", str(out),
            "--data_root", str(tmp_path / "world"), "--synthetic_locations", "2",
            "--synthetic_samples", "10", "--synthetic_size", "16", "--image_size", "16",
            "--base_channels", "4", "--student_base_channels", "4", "--batch_size", "4",
            "--teacher_epochs", "1", "--student_epochs", "1", "--num_pictures", "2",
            "--device", "cpu"]
    run_experiments.main(argv)

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["experiment"] for r in rows] == [e.name for e in EXPERIMENTS] + list(REFERENCES)
    assert all(float(r["rmse"]) > 0 for r in rows)
    table = (out / "results.md").read_text()
    assert "| RGB teacher (upper bound) | 1 |" in table and "Metric protocol: gt > 0.0 m" in table
    for picture in ("rmse.png", "pictures.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    checkpoints = sorted((out / "runs").glob("seed0/*/last_model.pth"))
    assert len(checkpoints) == len(EXPERIMENTS)
    written = [p.stat().st_mtime_ns for p in checkpoints]
    capsys.readouterr()
    run_experiments.main(argv)
    assert capsys.readouterr().out.count("[skip]") == len(EXPERIMENTS)
    assert [p.stat().st_mtime_ns for p in checkpoints] == written
