"""benchmarks/student_ablations.py: every row is a valid command line of its script, and the row
names of a group are unique (they name run folders)."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import student_ablations
from training.cli import parse_script_argv
from training.experiments import runs
from training.experiments.runs import NEW, RESUME, RETRAIN


@pytest.mark.parametrize("group", student_ablations.GROUPS)
def test_every_row_parses_as_its_script_would_parse_it(group: str, tmp_path: Path) -> None:
    args = student_ablations.parse_args(["--data_root", str(tmp_path), "--out", str(tmp_path),
                                         "--group", group, "--epochs", "2"])
    rows = [row for row in student_ablations.ROWS if row.group == group]
    assert len({row.name for row in rows}) == len(rows)
    for row in rows:
        parsed = parse_script_argv(row.kind, student_ablations.run_argv(row, 1, args))
        assert (parsed.seed, parsed.nb_epochs, parsed.image_size) == (1, 2, 64)
        assert parsed.experiment_name == f"{row.name}_s1"
        if row.kind == "kd":
            assert parsed.teacher_checkpoint == str(tmp_path / "teacher_s0" / "best_model.pth")


def test_an_unknown_row_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stopped:
        student_ablations.main(["--data_root", str(tmp_path), "--rows", "student,nope"])
    assert str(stopped.value) == "error: --rows: no row nope in group levers"


@pytest.mark.parametrize("action, differing", [
    (RESUME, []), (RETRAIN, ["--seed: 0 -> 1"]), (NEW, [])])
def test_a_run_is_resumed_when_cut_short_and_retrained_when_it_differs(
        action: str, differing: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = student_ablations.parse_args(["--data_root", str(tmp_path), "--out", str(tmp_path)])
    row = next(r for r in student_ablations.ROWS if r.name == "student")
    if action != NEW:
        (tmp_path / "student_s0").mkdir()
    commands = []
    identity = {"fingerprint": "same"}
    monkeypatch.setattr(runs, "expected_identity", lambda kind, argv: identity)
    monkeypatch.setattr(runs, "decide", lambda run_dir, wanted: (action, differing))
    monkeypatch.setattr(runs, "load_checkpoint", lambda path: {"identity": identity})
    monkeypatch.setattr(runs, "run_script",
                        lambda script, argv, log: commands.append([script, *argv]))
    student_ablations.bring_up_to_date(row, 0, args)
    (command,) = commands
    assert command[0] == "train_binaural_attention.py"
    if action == RESUME:
        assert command[-2:] == ["--resume", str(tmp_path / "student_s0")]
    assert ("--resume" in command) == (action == RESUME)
    assert ("--overwrite" in command) == (action == RETRAIN)
