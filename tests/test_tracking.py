"""training.tracking: W&B only on request, offline without a key, and what it is sent."""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

import train_rgb_depth
from tests.conftest import train_argv
from training.tracking import Tracker


class FakeWandbRun:
    def __init__(self) -> None:
        self.logged: List[Dict[str, Any]] = []

    def log(self, values: Dict[str, Any], step: Optional[int] = None) -> None:
        self.logged.append(values)

    def finish(self) -> None:
        pass


@pytest.mark.slow
def test_training_without_use_wandb_does_not_import_it(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules fails imports: the run would stop if training imported wandb.
    monkeypatch.setitem(sys.modules, "wandb", None)
    train_rgb_depth.main(train_argv(data_root, tmp_path, "no_wandb", "--nb_epochs", "1"))
    assert (tmp_path / "no_wandb" / "metrics.json").is_file()


def test_wandb_is_offline_without_a_key_and_logs_each_epochs_numbers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a wandb login either
    inits: List[Dict[str, Any]] = []
    run = FakeWandbRun()
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: inits.append(kwargs) or run  # type: ignore[attr-defined]
    fake.errors = types.SimpleNamespace(CommError=ConnectionError)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    tracker = Tracker(tmp_path / "run", True, {"valid_threshold": 0.0}, use_wandb=True,
                      run_name="exp", config={"seed": 0})
    assert os.environ["WANDB_MODE"] == "offline"
    assert inits[0]["id"] == inits[0]["name"] == "exp" and inits[0]["config"] == {"seed": 0}
    record = {"epoch": 1, "global_step": 5, "lr": 1e-3, "train": {"l1": 0.5, "total": 0.5},
              "val": {"rmse": 1.0, "abs_rel": None}, "val_loss": {}}
    (tmp_path / "run").mkdir()
    tracker.log_epoch([record], {"epoch": 1, "rmse": 1.0})
    assert run.logged == [
        {"epoch": 1, "lr": 1e-3, "train/l1": 0.5, "train/total": 0.5, "val/rmse": 1.0}]
