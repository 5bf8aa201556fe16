"""Checkpoint format: atomic writes (with the umask's permissions), weights-only loading, finite
or nothing, clearing a run folder, finding runs, random states, checkpoints holding a weight
average."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.errors import DataError
from models import build_model
from training import checkpoint as ckpt
from training.errors import TrainingError


def _checkpoint(model: torch.nn.Module, epoch: int = 1) -> ckpt.Checkpoint:
    return ckpt.Checkpoint(
        format_version=ckpt.FORMAT_VERSION, model_name=model.model_name, model_config=model.config,
        model_state=model.state_dict(), extra_states={}, optimizer_state={}, scheduler_state={},
        scaler_state={}, epoch=epoch, global_step=3 * epoch, best_score=float("inf"), best_epoch=0,
        metrics={"rmse": None, "n_images": 0}, history=[], rng=ckpt.capture_rng_state(),
        args={"seed": 0},
    )


@pytest.fixture
def model() -> torch.nn.Module:
    return build_model("rgb_depth", base_channels=4, max_depth=12.0)


def test_round_trip_rebuilds_the_model(tmp_path: Path, model: torch.nn.Module) -> None:
    path = tmp_path / "run" / ckpt.LAST_CHECKPOINT
    ckpt.save_checkpoint(path, _checkpoint(model))
    loaded = ckpt.load_checkpoint(path)
    rebuilt = ckpt.load_model(loaded, expected_name="rgb_depth", path=path)
    assert rebuilt.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_killed_save_leaves_previous_checkpoint_loadable(
        tmp_path: Path, model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / ckpt.LAST_CHECKPOINT
    ckpt.save_checkpoint(path, _checkpoint(model, epoch=1))

    def dies_half_way(obj: object, target: Path) -> None:
        Path(target).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # what a kill during the write looks like to Python

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(path, _checkpoint(model, epoch=2))
    assert ckpt.load_checkpoint(path)["epoch"] == 1
    assert list(tmp_path.iterdir()) == [path]


class Payload:
    """An arbitrary class: unpickling it could run code, so weights-only loading refuses it."""


def test_loading_refuses_code_and_bad_files(tmp_path: Path) -> None:
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model_name": "rgb_depth", "model_state": Payload()}, unsafe)
    with pytest.raises(DataError, match="unsafe.pth: unreadable checkpoint"):
        ckpt.load_checkpoint(unsafe)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="garbage.pth"):
        ckpt.load_checkpoint(garbage)
    with pytest.raises(DataError, match="missing.pth: checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pth")


def test_wrong_model_is_refused(tmp_path: Path, model: torch.nn.Module) -> None:
    path = tmp_path / "teacher.pth"
    ckpt.save_checkpoint(path, _checkpoint(model))
    with pytest.raises(DataError, match="holds a 'rgb_depth' model, expected 'binaural_attention'"):
        ckpt.load_model(ckpt.load_checkpoint(path), expected_name="binaural_attention", path=path)


def test_resolve_run_folder_file_and_latest(tmp_path: Path, model: torch.nn.Module) -> None:
    with pytest.raises(DataError, match="no run"):
        ckpt.resolve_checkpoint_path(ckpt.LATEST, tmp_path)
    for age, name in ((100, "older"), (10, "newer"), (50, "middle")):
        path = tmp_path / name / ckpt.LAST_CHECKPOINT
        ckpt.save_checkpoint(path, _checkpoint(model))
        stamp = path.stat().st_mtime - age
        os.utime(path, (stamp, stamp))
    latest = ckpt.resolve_checkpoint_path(ckpt.LATEST, tmp_path)
    assert latest == tmp_path / "newer" / ckpt.LAST_CHECKPOINT
    assert ckpt.resolve_checkpoint_path(str(tmp_path / "older"), tmp_path) == (
        tmp_path / "older" / ckpt.LAST_CHECKPOINT)
    with pytest.raises(DataError, match="checkpoint not found"):
        ckpt.resolve_checkpoint_path(str(tmp_path / "nowhere"), tmp_path)


def test_random_states_survive_weights_only_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "rng.pth"
    torch.save({"rng": ckpt.capture_rng_state()}, path)
    draws = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.restore_rng_state(torch.load(path, weights_only=True)["rng"])
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert draws[0] == again[0] and draws[1] == again[1] and torch.equal(draws[2], again[2])


def test_json_is_strict(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    ckpt.write_json(path, {"rmse": float("nan"), "best": float("inf"), "n": [1.5]})
    assert path.read_text() == '{\n  "rmse": null,\n  "best": null,\n  "n": [\n    1.5\n  ]\n}\n'


def test_non_finite_tensors_are_named_wherever_they_sit() -> None:
    tree = {"a": torch.tensor([1.0, float("inf")]), "b": [torch.tensor([0]), torch.tensor([0.5]),
            {"c": torch.tensor([float("nan")])}], "d": float("nan"), "e": torch.ones(0)}
    assert ckpt.non_finite_tensors(tree) == ["a", "b.2.c"]  # Python floats are not tensors
    assert ckpt.describe_names(["a", "b.2.c", "f"]) == "a and 2 more"


def test_save_refuses_non_finite_tensors_and_writes_nothing(
        tmp_path: Path, model: torch.nn.Module) -> None:
    checkpoint = _checkpoint(model)
    checkpoint["optimizer_state"] = {"state": {0: {"exp_avg": torch.tensor([1.0, float("nan")])}}}
    path = tmp_path / ckpt.LAST_CHECKPOINT
    with pytest.raises(TrainingError) as error:
        ckpt.save_checkpoint(path, checkpoint)
    assert str(error.value) == (
        f"{path}: not written: non-finite values in optimizer_state.state.0.exp_avg")
    assert list(tmp_path.iterdir()) == []


def test_load_model_refuses_non_finite_weights(tmp_path: Path, model: torch.nn.Module) -> None:
    checkpoint = _checkpoint(model)
    checkpoint["model_state"] = {k: v * float("inf") if k.startswith("head.") else v
                                 for k, v in model.state_dict().items()}
    path = tmp_path / "diverged.pth"
    torch.save(checkpoint, path)  # bypasses save_checkpoint, as an older version could have
    with pytest.raises(DataError) as error:
        ckpt.load_model(ckpt.load_checkpoint(path), path=path)
    assert str(error.value) == (f"{path}: holds non-finite weights (head.conv.weight and 1 more): "
                                "the run had diverged; use a checkpoint from before")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_new_files_follow_the_umask(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        ckpt.write_json(tmp_path / "config.json", {"a": 1})
    finally:
        os.umask(previous)
    assert (tmp_path / "config.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_clear_run_folder_removes_the_projects_files_only(tmp_path: Path) -> None:
    run = tmp_path / "run"
    ours = [*ckpt.RUN_FILES, ".last_model.pth.a1b2c3.tmp", ".metrics.json.x.tmp",
            "eval_test/metrics.json", "eval_test/per_image.csv", "eval_val/metrics.json"]
    theirs = ["notes.txt", ".notes.txt.a1.tmp", "eval_val/my_plot.png", "wandb/run.log"]
    for name in ours + theirs:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("x")
    removed = ckpt.clear_run_folder(run)
    assert sorted(str(p.relative_to(run)) for p in removed) == sorted(ours)
    remaining = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert remaining == sorted(theirs)
    assert not (run / "eval_test").exists()  # emptied, so removed; eval_val keeps my_plot.png


def test_an_averaged_checkpoint_loads_its_average_and_resumes_its_trained_weights(
        tmp_path: Path, model: torch.nn.Module) -> None:
    plain = _checkpoint(model)
    assert ckpt.training_weights(plain) is plain["model_state"]  # no average: one set of weights
    average = {key: value + 1 if value.is_floating_point() else value
               for key, value in model.state_dict().items()}
    path = tmp_path / ckpt.LAST_CHECKPOINT
    ckpt.save_checkpoint(path, ckpt.Checkpoint(
        **{**plain, "model_state": average, "train_model_state": model.state_dict(),
           "ema_updates": 3}))
    loaded = ckpt.load_checkpoint(path)
    rebuilt = ckpt.load_model(loaded, path=path)  # what evaluate.py and predict.py use
    for key, value in average.items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt.training_weights(loaded)[key], value), key

    loaded["train_model_state"]["head.conv.bias"].fill_(float("nan"))
    with pytest.raises(TrainingError, match="train_model_state.head.conv.bias"):
        ckpt.save_checkpoint(path, loaded)  # finite or nothing covers the trained weights too
