"""training.saver: --overwrite clears the previous run's files and only them; a resumed run
repairs a best_model.pth cut short and drops a stale one; the stop message names the last good
checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import torch

import train_rgb_depth
from tests.conftest import stop_message, train_argv
from training import losses
from training.checkpoint import (
    BEST_CHECKPOINT, FORMAT_VERSION, LAST_CHECKPOINT, RUN_LOCK, VAL_BEST_PICTURE, load_checkpoint,
)
from training.saver import CheckpointSaver, best_file_agrees


@pytest.mark.slow
def test_overwrite_clears_the_previous_run_and_only_it(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    argv = train_argv(data_root, tmp_path, "run", "--nb_epochs", "1", "--num_val_images", "1")
    train_rgb_depth.main(argv)
    run = tmp_path / "run"
    (run / "eval_test").mkdir()
    for name in ("eval_test/metrics.json", "eval_test/per_image.csv", "notes.txt",
                 ".last_model.pth.5f3a9c.tmp", ".notes.txt.1.tmp"):
        (run / name).write_text("x")
    capsys.readouterr()

    # The new run stops at its first step: nothing of the old run may be left beside it.
    monkeypatch.setitem(losses.CRITERIA, "l1", lambda pred, *_: pred.sum() * float("nan"))
    stop_message([*argv, "--overwrite"])
    assert capsys.readouterr().out.splitlines()[0] == (
        "--overwrite: removed the previous run's best_model.pth, config.json, config.yaml, "
        "eval_test/metrics.json, eval_test/per_image.csv, last_model.pth, metrics.json, "
        f"val_best.png, val_last.png from {run}")
    assert sorted(p.name for p in run.iterdir()) == [
        ".notes.txt.1.tmp", RUN_LOCK, "config.json", "config.yaml", "notes.txt"]


@pytest.mark.slow
def test_resume_repairs_a_best_model_cut_short_and_drops_a_stale_one(
        data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train_rgb_depth.main(train_argv(data_root, tmp_path, "run", "--nb_epochs", "1"))
    run = tmp_path / "run"
    best, last = run / BEST_CHECKPOINT, run / LAST_CHECKPOINT
    resume = ["--resume", str(run), "--num_workers", "0"]

    # Killed between the two saves of epoch 1: last_model.pth names epoch 1 as best, and
    # best_model.pth is missing (or older); epoch 1 is last_model.pth itself, so it is rebuilt.
    best.unlink()
    (run / ".best_model.pth.0c1d2e.tmp").write_bytes(b"half a checkpoint")
    capsys.readouterr()
    # --nb_epochs 1 reached: prepares the folder, trains nothing.
    train_rgb_depth.main([*resume, "--num_val_images", "1"])
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{best} did not hold the best epoch 1 that {last} records: rewritten from it")
    rebuilt, record = load_checkpoint(best), load_checkpoint(last)
    assert rebuilt["epoch"] == 1 and rebuilt["history"] == record["history"]
    for key, value in record["model_state"].items():
        assert torch.equal(rebuilt["model_state"][key], value), key
    assert not list(run.glob(".*.tmp"))
    assert (run / "val_best.png").is_file()  # drawn by the rebuilt best model

    # A record whose best epoch (1) is not its last (2), beside a best_model.pth of another run:
    # that epoch cannot be rebuilt, so the stale file goes. (No "identity": a checkpoint of an
    # older version, which still resumes.)
    other = dict(record, history=[dict(record["history"][0], seconds=-1.0)])
    torch.save(other, best)
    record.pop("identity")
    record.update(epoch=2, history=[*record["history"], dict(record["history"][0], epoch=2)])
    torch.save(record, last)
    capsys.readouterr()
    train_rgb_depth.main([*resume, "--nb_epochs", "2"])
    assert capsys.readouterr().out.splitlines()[0] == (
        f"warning: {best} does not hold the best epoch that {last} records (epoch 1, val rmse "
        f"{record['best_score']:.4f}), which cannot be rebuilt; the stale file is deleted; it is "
        "written again at the next new best")
    assert not best.exists() and not (run / "val_best.png").exists()


def _record(epoch: int, best_epoch: int, seconds: float = 1.0) -> Dict[str, Any]:
    """A ``last_model.pth`` of ``epoch`` epochs whose best is ``best_epoch``: a stand-in for a
    trained checkpoint (the saver reads only these fields)."""
    return {"format_version": FORMAT_VERSION, "model_name": "rgb_depth", "model_state": {},
            "epoch": epoch, "best_epoch": best_epoch, "best_score": 1.0,
            "history": [{"epoch": e, "seconds": seconds} for e in range(1, epoch + 1)]}


def test_last_every_epoch_best_on_a_new_best_and_the_stop_message_names_the_last_good(
        tmp_path: Path) -> None:
    saver = CheckpointSaver(tmp_path / "run")
    saver.prepare(False, None, None, draw_best=lambda *_: None)
    assert str(saver.stopped("non-finite loss")) == (
        "non-finite loss; stopped, no checkpoint has been written yet")
    last, best = tmp_path / "run" / LAST_CHECKPOINT, tmp_path / "run" / BEST_CHECKPOINT
    saver.save(_record(1, 1), improved=True)
    saver.save(_record(2, 1), improved=False)
    assert load_checkpoint(last)["epoch"] == 2 and load_checkpoint(best)["epoch"] == 1
    assert best_file_agrees(best, load_checkpoint(last))
    assert str(saver.stopped("non-finite loss")) == (
        f"non-finite loss; stopped, the last good checkpoint is {last} (epoch 2)")
    saver.saved_elsewhere(3)  # what a rank other than 0 records
    assert saver.last_good == (last, 3)


@pytest.mark.parametrize("on_disk, resumed, rebuilt", [
    (None, _record(2, 2), True),                  # killed between the two saves of epoch 2
    (_record(1, 1, seconds=-1.0), _record(2, 2), True),   # another run's best: rebuilt too
    (_record(1, 1), _record(2, 1), None),         # the best epoch 1 itself: kept as it is
    (_record(1, 1, seconds=-1.0), _record(2, 1), False),  # not epoch 1 of this run: deleted
], ids=["missing", "other run, rebuildable", "agrees", "other run, not rebuildable"])
def test_a_resumed_run_makes_the_best_file_hold_the_recorded_best_epoch(
        tmp_path: Path, capsys: pytest.CaptureFixture, on_disk: Optional[Dict[str, Any]],
        resumed: Dict[str, Any], rebuilt: Optional[bool]) -> None:
    """Without training: the decisions of the slow test above on stand-in checkpoints (rebuilt:
    True, rewritten from the resumed record; None, left alone; False, deleted with a warning)."""
    best = tmp_path / BEST_CHECKPOINT
    if on_disk is not None:
        torch.save(on_disk, best)
    drawn: List[Path] = []
    CheckpointSaver(tmp_path).prepare(False, resumed, tmp_path / LAST_CHECKPOINT,
                                      draw_best=lambda _, picture: drawn.append(picture))
    out = capsys.readouterr().out
    if rebuilt is None:
        assert out == "" and load_checkpoint(best) == on_disk and drawn == []
    elif rebuilt:
        assert load_checkpoint(best) == resumed and drawn == [tmp_path / VAL_BEST_PICTURE]
        assert out.startswith(f"{best} did not hold the best epoch 2")
    else:
        assert not best.exists() and drawn == []
        assert out.startswith(f"warning: {best} does not hold the best epoch")
