"""The checkpoint files of one run folder: ``last_model.pth`` every epoch, ``best_model.pth`` at
each new best, kept consistent across kills and resumes (timm's ``CheckpointSaver`` is the model).

``best_model.pth`` is saved from the same checkpoint object as ``last_model.pth``, right after
it. A resumed run checks that ``best_model.pth`` holds the epoch that ``last_model.pth`` records
as best: when that epoch is the last one (a kill between the two saves), ``best_model.pth`` is
rewritten from it; otherwise the stale file is deleted with a warning and written again at the
next new best. A run started with ``--overwrite`` first deletes the previous run's files, and
every run deletes the temporary files that killed saves left.
"""
from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Callable, Optional, Tuple

from datasets.errors import DataError
from training.checkpoint import (
    BEST_CHECKPOINT, LAST_CHECKPOINT, RUN_FILES, VAL_BEST_PICTURE, Checkpoint, atomic_write,
    clear_run_folder, load_checkpoint, remove_temporaries, save_checkpoint,
)
from training.errors import TrainingError


def best_file_agrees(path: Path, record: Checkpoint) -> bool:
    """Whether ``path`` holds the epoch that ``record`` (a ``last_model.pth``) names as its best:
    that epoch of the same run (the history up to it, timings included, is identical); with no
    best epoch yet, whether there is no such file."""
    if record["best_epoch"] == 0:
        return not path.exists()
    try:
        best = load_checkpoint(path)
    except DataError:
        return False
    return (best["epoch"] == record["best_epoch"]
            and best["history"] == record["history"][: record["best_epoch"]])


class CheckpointSaver:
    """Writes a run folder's checkpoints and remembers the last good one.

    Args:
        run_dir: the run folder.
        last_good: ``(file, epoch)`` of the checkpoint a resumed run starts from, or ``None``.
    """

    def __init__(self, run_dir: Path, last_good: Optional[Tuple[Path, int]] = None) -> None:
        self.run_dir = run_dir
        self.last_good = last_good

    def prepare(self, overwrite: bool, resumed: Optional[Checkpoint], source: Optional[Path],
                draw_best: Callable[[Checkpoint, Path], None]) -> None:
        """(Rank 0, before the first epoch) Create the folder, delete what killed saves left,
        clear a previous run's files under ``overwrite``, and make ``best_model.pth`` agree with
        the resumed checkpoint.

        Args:
            overwrite: ``--overwrite`` of a run that does not continue its own folder.
            resumed: the checkpoint being resumed, or ``None``.
            source: its file.
            draw_best: draws ``val_best.png`` for a checkpoint into a file (when the best file
                is rebuilt).
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        remove_temporaries(self.run_dir, RUN_FILES)
        if overwrite:
            removed = clear_run_folder(self.run_dir)
            if removed:
                names = sorted({str(path.relative_to(self.run_dir)) for path in removed})
                print(f"--overwrite: removed the previous run's {', '.join(names)} from "
                      f"{self.run_dir}")
        if resumed is not None:
            self._repair_best(resumed, source, draw_best)

    def _repair_best(self, record: Checkpoint, source: Optional[Path],
                     draw_best: Callable[[Checkpoint, Path], None]) -> None:
        """Make ``best_model.pth`` hold the best epoch that ``record`` records: rewritten from it
        when it is that epoch (a kill between the two saves of an epoch, or a run resumed into
        another folder); otherwise a stale file is deleted, with a warning, and
        ``best_model.pth`` is written again at the next new best."""
        best = self.run_dir / BEST_CHECKPOINT
        if best_file_agrees(best, record):
            return
        if record["best_epoch"] == record["epoch"]:
            save_checkpoint(best, record)
            draw_best(record, self.run_dir / VAL_BEST_PICTURE)
            print(f"{best} did not hold the best epoch {record['best_epoch']} that {source} "
                  "records: rewritten from it")
            return
        stale = best.exists()
        best.unlink(missing_ok=True)
        (self.run_dir / VAL_BEST_PICTURE).unlink(missing_ok=True)
        wanted = (f"epoch {record['best_epoch']}, val rmse {record['best_score']:.4f}"
                  if record["best_epoch"] else "none yet")
        print(f"warning: {best} does not hold the best epoch that {source} records ({wanted}), "
              f"which cannot be rebuilt{'; the stale file is deleted' if stale else ''}; it is "
              "written again at the next new best")

    def save(self, checkpoint: Checkpoint, improved: bool) -> None:
        """(Rank 0) ``last_model.pth`` and, on a new best, ``best_model.pth`` right after it
        (see :meth:`_repair_best` for a kill in between)."""
        last = self.run_dir / LAST_CHECKPOINT
        save_checkpoint(last, checkpoint)
        self.last_good = (last, checkpoint["epoch"])
        if improved:
            save_checkpoint(self.run_dir / BEST_CHECKPOINT, checkpoint)

    def saved_elsewhere(self, epoch: int) -> None:
        """(Other ranks) Rank 0 saved ``last_model.pth`` of ``epoch``."""
        self.last_good = (self.run_dir / LAST_CHECKPOINT, epoch)

    def keep_best_picture(self, picture: Path) -> None:
        """Copy a new best epoch's validation picture to ``val_best.png`` (atomically)."""
        atomic_write(self.run_dir / VAL_BEST_PICTURE, functools.partial(shutil.copyfile, picture))

    def stopped(self, what: str) -> TrainingError:
        """The error that stops the run: ``what`` happened, and which checkpoint is the last good
        one."""
        if self.last_good is None:
            kept = "no checkpoint has been written yet"
        else:
            kept = f"the last good checkpoint is {self.last_good[0]} (epoch {self.last_good[1]})"
        return TrainingError(f"{what}; stopped, {kept}")
