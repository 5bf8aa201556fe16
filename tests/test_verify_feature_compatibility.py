"""verify_feature_compatibility.py: table and exit 0 on a match, JSON, exit 1 with a reason."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import verify_feature_compatibility as verify
from models import FEATURE_KEYS, create_binaural_attention_model

SCRIPT = Path(verify.__file__)
SMALL = ["--base_channels", "16", "--image_size", "32"]


def test_match_prints_table_and_exits_0(capsys: pytest.CaptureFixture) -> None:
    assert verify.main(SMALL + ["--attention_levels", "1,2,3,4,5"]) == 0
    table = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in table if line.split()[0] in FEATURE_KEYS]
    assert [row[0] for row in rows] == list(FEATURE_KEYS)
    assert all(row[-1] == "yes" for row in rows)
    assert table[-1].startswith("parameters: teacher ")


# A fresh interpreter that imports torch: several seconds on a busy 2-core machine.
@pytest.mark.slow
def test_json_from_the_command_line() -> None:
    process = subprocess.run([sys.executable, str(SCRIPT), *SMALL, "--json"],
                             capture_output=True, text=True, cwd=SCRIPT.parent)
    assert process.returncode == 0, process.stderr
    report = json.loads(process.stdout)
    assert report["match"] is True and report["reason"] == ""
    assert report["attention_levels"] == [2, 3, 4, 5]
    assert [level["level"] for level in report["levels"]] == list(FEATURE_KEYS)
    assert report["levels"][0]["teacher"] == report["levels"][0]["student"] == [1, 16, 32, 32]
    assert 0 < report["teacher_params"] < report["student_params"]


def test_mismatch_exits_1_with_a_one_line_reason(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    def wider_student(base_channels: int, **options):
        return create_binaural_attention_model(2 * base_channels, **options)

    monkeypatch.setattr(verify, "create_binaural_attention_model", wider_student)
    assert verify.main(SMALL + ["--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["match"] is False
    assert all(not level["match"] for level in report["levels"])
    assert report["reason"].startswith("9 of 9 feature levels differ; first x1:")
    assert captured.err.count("\n") == 1 and report["reason"] in captured.err


@pytest.mark.parametrize("argv", [["--base_channels", "8", "--image_size", "128", "--decoder", "query"],
                                  ["--image_size", "64", "--decoder", "query", "--input_features", "ild"]])
def test_student_options_match(argv: list, capsys: pytest.CaptureFixture) -> None:
    assert verify.main(argv + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["match"] is True and report["decoder"] == "query"
    assert [level["level"] for level in report["levels"]] == list(FEATURE_KEYS)


@pytest.mark.parametrize("argv", [["--image_size", "40"], ["--attention_levels", "2,6"],
                                  ["--decoder", "transformer"]])
def test_bad_arguments_exit_with_usage_error(argv: list) -> None:
    with pytest.raises(SystemExit) as exit_info:
        verify.main(argv)
    assert exit_info.value.code == 2
