"""The scripts end to end on a tiny synthetic world: both trainers, evaluate.py (the run's own
valid threshold, fingerprints of what it scored), predict.py, --help, and bad inputs (one-line
error, non-zero exit; a checkpoint with non-finite weights)."""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np
import pytest
import torch

import evaluate
import predict
import train_binaural_attention
import train_rgb_depth
from datasets.sample import AUDIO
from datasets.synthetic.world import WorldConfig, ensure_synthetic_world
from training.checkpoint import (
    BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint, load_model, save_checkpoint,
)
from training.data import resolve_data_root, split_fingerprint
from training.device import DistContext
from training.tasks import MirrorAveraged
from training.identity import checkpoint_fingerprint
from training.metrics import METRIC_NAMES

REPO = Path(__file__).resolve().parent.parent
WORLD = {"synthetic_locations": 2, "synthetic_samples": 8, "synthetic_size": 32}
SCRIPTS = {"rgb_depth": train_rgb_depth, "binaural_attention": train_binaural_attention}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core CPU run far faster on one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder holding a tiny synthetic world (2 locations x 8 samples, 32x32), as the
    scripts' --data_root; they reuse it instead of generating their own."""
    root = tmp_path_factory.mktemp("world")
    ensure_synthetic_world(root, WorldConfig(locations=2, samples=8, height=32, width=32),
                           progress=False)
    return root


def world_argv(world: Path) -> List[str]:
    return ["--dataset", "synthetic", "--data_root", str(world),
            *[x for k, v in WORLD.items() for x in (f"--{k}", str(v))]]


@pytest.fixture(scope="module")
def runs(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """One short epoch of each training script; returns their run folders."""
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    for name, script in SCRIPTS.items():
        script.main([*world_argv(world), "--image_size", "32", "--base_channels", "4",
                     "--batch_size", "4", "--nb_epochs", "1", "--num_workers", "0",
                     "--num_val_images", "2", "--checkpoint_dir", str(checkpoints),
                     "--experiment_name", name])
    return {name: checkpoints / name for name in SCRIPTS}


@pytest.mark.slow
@pytest.mark.parametrize("model_name", list(SCRIPTS))
def test_one_short_epoch_writes_the_run_folder(runs: Dict[str, Path], model_name: str) -> None:
    run = runs[model_name]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("last_model.pth", "best_model.pth", "config.json", "metrics.json",
                 "val_last.png", "val_best.png"):
        assert (run / name).is_file(), name
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    config = json.loads((run / "config.json").read_text())
    parser = SCRIPTS[model_name].build_parser()
    every_flag = {a.dest for a in parser._actions if a.dest != "help"}
    assert every_flag <= set(config["args"])
    assert config["model"]["name"] == model_name
    assert config["model"]["config"]["base_channels"] == 4
    assert config["args"]["max_depth"] == config["model"]["config"]["max_depth"] == 15.0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["protocol"]["valid_threshold"] == 0.0
    (epoch,) = metrics["history"]
    assert set(epoch["train"]) == {"l1", "total"}
    assert epoch["val"]["n_images"] + epoch["val"]["n_skipped"] == 2  # 1 val sample per location
    assert load_checkpoint(run / LAST_CHECKPOINT)["model_name"] == model_name


@pytest.mark.slow
def test_evaluate_writes_metrics_and_per_image_csv(
        runs: Dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    evaluate.main(["--checkpoint", str(runs["binaural_attention"]), "--out", str(tmp_path),
                   "--num_workers", "0"])
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert set(METRIC_NAMES) | {"n_images", "n_skipped"} <= set(result)
    assert result["split"] == "test" and result["model_name"] == "binaural_attention"
    with open(tmp_path / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result["n_images"] + result["n_skipped"] == 2
    scored = [float(r["rmse"]) for r in rows if r["rmse"]]
    assert np.mean(scored) == pytest.approx(result["rmse"], abs=1e-5)
    table = capsys.readouterr().out
    assert "rmse" in table and "delta3" in table


@pytest.mark.slow
def test_evaluate_uses_the_runs_valid_threshold_and_records_what_it_scored(
        runs: Dict[str, Path], tmp_path: Path) -> None:
    saved = load_checkpoint(runs["binaural_attention"] / BEST_CHECKPOINT)
    saved["args"]["valid_threshold"] = 2.0
    path = tmp_path / "threshold_2.pth"
    save_checkpoint(path, saved)
    evaluate.main(["--checkpoint", str(path), "--out", str(tmp_path / "own"),
                   "--num_workers", "0"])
    evaluate.main(["--checkpoint", str(path), "--out", str(tmp_path / "given"),
                   "--num_workers", "0", "--valid_threshold", "0.5", "--ground_truth", "official"])
    own = json.loads((tmp_path / "own" / "metrics.json").read_text())
    given = json.loads((tmp_path / "given" / "metrics.json").read_text())
    assert own["protocol"]["valid_threshold"] == 2.0
    assert given["protocol"]["valid_threshold"] == 0.5
    assert (own["ground_truth"], given["ground_truth"]) == (saved["args"]["recipe"], "official")
    evaluate.main(["--checkpoint", str(path), "--out", str(tmp_path / "mirrored"),
                   "--num_workers", "0", "--mirror_average"])
    mirrored = json.loads((tmp_path / "mirrored" / "metrics.json").read_text())
    assert (own["mirror_average"], mirrored["mirror_average"]) == (False, True)
    assert mirrored["n_images"] == own["n_images"] and mirrored["rmse"] != own["rmse"]
    by_depth = own["by_depth"]
    assert [(r["min_m"], r["max_m"]) for r in by_depth] == [
        (0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 5.0), (5.0, None)]
    assert sum(r["share"] or 0.0 for r in by_depth) == pytest.approx(1.0)

    assert own["checkpoint_fingerprint"] == checkpoint_fingerprint(saved)
    assert own["identity_fingerprint"] == saved["identity"]["fingerprint"]
    args = argparse.Namespace(**saved["args"])
    root = resolve_data_root(args, DistContext())
    assert own["data_fingerprint"] == split_fingerprint(args, root, "test")
    assert own["data_fingerprint"] != split_fingerprint(args, root, "val")


@pytest.mark.slow
def test_evaluate_on_the_dense_truth_scores_the_holes_too(
        runs: Dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = runs["binaural_attention"]
    for truth in ("sensor", "dense"):
        evaluate.main(["--checkpoint", str(run), "--out", str(tmp_path / truth),
                       "--num_workers", "0", "--truth", truth])
    sensor, dense = (json.loads((tmp_path / t / "metrics.json").read_text())
                     for t in ("sensor", "dense"))
    assert (sensor["truth"], dense["truth"]) == ("sensor", "dense") and "holes" not in sensor
    assert dense["data_fingerprint"] != sensor["data_fingerprint"]
    assert dense["rmse"] != sensor["rmse"]
    holes = dense["holes"]
    assert holes["n_images"] >= 1 and holes["rmse"] > 0
    assert "inside the sensor's holes" in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_on_the_dense_truth_of_real_data_stops_in_one_line(
        runs: Dict[str, Path], tmp_path: Path, write_v2_tree: Any) -> None:
    real = write_v2_tree(tmp_path / "real", depth_shape=(32, 32))
    with pytest.raises(SystemExit) as error:
        evaluate.main(["--checkpoint", str(runs["binaural_attention"]), "--out",
                       str(tmp_path / "e"), "--num_workers", "0", "--truth", "dense",
                       "--dataset", "batvisionv2", "--data_root", str(real)])
    message = str(error.value.code)
    assert message.startswith("error: ") and "\n" not in message and "depth_dense" in message
    assert not (tmp_path / "e").exists()


@pytest.mark.slow
def test_evaluate_never_regenerates_another_world_as_the_runs(
        runs: Dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    ensure_synthetic_world(other, WorldConfig(locations=2, samples=8, height=32, width=32,
                                              seed=9), progress=False)
    manifest = (other / "v2.world.json").read_text()
    with pytest.raises(SystemExit) as error:
        evaluate.main(["--checkpoint", str(runs["binaural_attention"]), "--data_root", str(other),
                       "--out", str(tmp_path / "e"), "--num_workers", "0"])
    message = str(error.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "holds another synthetic world (seed 9 (asked: 0))" in message
    assert (other / "v2.world.json").read_text() == manifest and not (tmp_path / "e").exists()


@pytest.mark.slow
def test_evaluate_and_predict_refuse_non_finite_weights(
        runs: Dict[str, Path], world: Path, tmp_path: Path) -> None:
    saved = load_checkpoint(runs["binaural_attention"] / BEST_CHECKPOINT)
    saved["model_state"]["head.conv.bias"] = saved["model_state"]["head.conv.bias"] * float("nan")
    path = tmp_path / "diverged.pth"
    torch.save(saved, path)  # bypasses save_checkpoint, as an older version could have
    wav = sorted((world / "v2").glob("*/audio/*.wav"))[0]
    for main, argv in ((evaluate.main, ["--num_workers", "0", "--out", str(tmp_path / "e")]),
                       (predict.main, ["--wav", str(wav), "--out", str(tmp_path / "p")])):
        with pytest.raises(SystemExit) as error:
            main(["--checkpoint", str(path), *argv])
        assert str(error.value.code) == (
            f"error: {path}: holds non-finite weights (head.conv.bias): the run had diverged; "
            "use a checkpoint from before")
    assert not (tmp_path / "e").exists() and not (tmp_path / "p").exists()


@pytest.mark.slow
def test_predict_from_a_wav_and_refuses_the_wrong_input(
        runs: Dict[str, Path], world: Path, tmp_path: Path) -> None:
    wav = sorted((world / "v2").glob("*/audio/*.wav"))[0]
    predict.main(["--checkpoint", str(runs["binaural_attention"]), "--wav", str(wav),
                  "--out", str(tmp_path)])
    depth = np.load(tmp_path / f"{wav.stem}_depth.npy")
    assert depth.shape == (32, 32) and depth.dtype == np.float32
    assert np.isfinite(depth).all() and depth.min() >= 0 and depth.max() <= 15.0
    assert (tmp_path / f"{wav.stem}_depth.png").is_file()
    predict.main(["--checkpoint", str(runs["binaural_attention"]), "--wav", str(wav),
                  "--out", str(tmp_path), "--name", "mirrored", "--mirror_average"])
    saved = load_checkpoint(runs["binaural_attention"] / BEST_CHECKPOINT)
    averaged = MirrorAveraged(load_model(saved), AUDIO)
    audio, _ = predict.model_input(argparse.Namespace(wav=str(wav), left=None, right=None),
                                   saved["args"], saved["model_name"])
    with torch.no_grad():
        expected = averaged(audio[None])[0, 0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "mirrored_depth.npy"), expected, atol=1e-5)
    with pytest.raises(SystemExit) as error:
        predict.main(["--checkpoint", str(runs["binaural_attention"]), "--left", str(wav),
                      "--right", str(wav), "--out", str(tmp_path)])
    assert str(error.value.code) == (
        "error: this model was trained on V2 recordings: pass --wav (only)")


@pytest.mark.parametrize("module", [train_rgb_depth, train_binaural_attention, evaluate, predict])
def test_help_documents_every_flag_with_its_default(
        module: Any, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    flags = [a for a in module.build_parser()._actions if a.dest != "help"]
    assert all(a.help and a.option_strings[0] in text for a in flags)
    assert text.count("(default:") == len(flags)


def _one_line_error(argv: List[str]) -> str:
    with pytest.raises(SystemExit) as error:
        train_rgb_depth.main(argv)
    message = str(error.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_bad_inputs_give_one_line_errors(
        tmp_path: Path, write_v1_tree: Any, capsys: pytest.CaptureFixture) -> None:
    common = ["--checkpoint_dir", str(tmp_path / "checkpoints"), "--num_workers", "0"]
    message = _one_line_error(["--dataset", "batvisionv2", *common])
    assert "--data_root is required" in message
    # V1 without a camera column: the RGB model cannot train, and the CSV is named.
    v1 = write_v1_tree(tmp_path / "bv1", depth_shape=(32, 32))
    for split in ("train", "val", "test"):
        with open(v1 / f"{split}.csv") as f:
            rows = [{k: v for k, v in row.items() if k != "camera path left"}
                    for row in csv.DictReader(f)]
        with open(v1 / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    message = _one_line_error(["--dataset", "batvisionv1", "--data_root", str(v1),
                               "--image_size", "32", *common])
    assert "train.csv" in message and "camera path left" in message
    with pytest.raises(SystemExit) as error:  # a flag error: one line too, exit status 2
        train_rgb_depth.main(["--dataset", "batvision3"])
    assert error.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "invalid choice: 'batvision3'" in stderr
    assert not (tmp_path / "checkpoints").exists()


# The one test of what a real interpreter prints and returns (a fresh one imports torch:
# several seconds on a busy 2-core machine); test_cli checks its cases in-process.
@pytest.mark.slow
def test_missing_data_root_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_root"
    result = subprocess.run(
        [sys.executable, "train_rgb_depth.py", "--dataset", "batvisionv2", "--data_root",
         str(missing), "--checkpoint_dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 1
    assert result.stderr == f"error: {missing}: dataset root not found\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("edges", ["1,x", "2,1", "0,1", "1,1"])
def test_evaluate_refuses_bad_depth_ranges_in_one_line(
        edges: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as error:
        evaluate.main(["--checkpoint", "unused.pth", "--depth_ranges", edges])
    assert error.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "--depth_ranges" in stderr
