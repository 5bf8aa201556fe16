"""The shared command line: flag validation at parse time, ``--config`` files, resume kinds."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch

from common.errors import UsageError
from training import cli
from training.checkpoint import FORMAT_VERSION, LAST_CHECKPOINT, RESOLVED_CONFIG_FILE
from training.run import start_run, write_resolved_config

REPO = Path(__file__).resolve().parent.parent


def parse(kind: str, argv: List[str]) -> argparse.Namespace:
    """What start_run parses: the command line after its --config file's flags."""
    parser = cli.build_parser(kind, None)
    return parser.parse_args(cli.with_config(parser, argv))


@pytest.mark.parametrize("argv, message", [
    (["--max_depth", "0"], "--max_depth: must be > 0"),
    (["--num_workers", "-1"], "--num_workers: must be >= 0"),
    (["--learning_rate", "-1"], "--learning_rate: must be > 0"),
    (["--learning_rate", "nan"], "--learning_rate: must be finite"),
    (["--attention_levels", "9"], "--attention_levels: attention_levels must be distinct levels in 1..5"),
    (["--attention_levels", "4,4"], "--attention_levels: attention_levels must be distinct levels in 1..5"),
    (["--image_size", "40"], "--image_size: must be divisible by 16"),
    (["--batch_size", "0"], "--batch_size: must be >= 1"),
    (["--threads", "0"], "--threads: must be >= 1"),
])
def test_out_of_range_flags_are_one_line_parse_errors(
        argv: List[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("student", argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_heads_must_divide_every_attended_width() -> None:
    """base 8: level 4 has 64 channels, which 3 heads do not divide (the run would crash)."""
    command = [sys.executable, "train_binaural_attention.py", "--base_channels", "8",
               "--attention_levels", "4,5", "--num_heads", "3"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert "--num_heads 3" in result.stderr and "level 4 has 64 channels" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("argv", [
    ["--audio_format", "spectrogram_ipd"],
    ["--input_features", "ild_ipd"],
    ["--model", "official_unet", "--audio_format", "spectrogram_ipd"],
])
def test_the_phase_input_and_the_student_that_reads_it_go_together(
        argv: List[str], capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser("student", None)
    with pytest.raises(SystemExit) as exit_info:
        cli.check_model_flags(parser, parser.parse_args(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("--audio_format spectrogram_ipd and the student's "
                                      "--input_features ild_ipd go together") in err
    cli.check_model_flags(parser, parser.parse_args(
        ["--audio_format", "spectrogram_ipd", "--input_features", "ild_ipd"]))


def test_config_file_sets_defaults_and_the_command_line_wins(tmp_path: Path) -> None:
    config = tmp_path / "student.yaml"
    config.write_text("base_channels: 8\nattention_levels: [4, 5]\nmirror_augment: true\n"
                      "learning_rate: 0.002\nscheduler: cosine\nmax_depth: null\n")
    args = parse("student", ["--config", str(config), "--learning_rate", "0.003"])
    assert args.base_channels == 8 and args.attention_levels == [4, 5]
    assert args.mirror_augment is True and args.scheduler == "cosine"
    assert args.learning_rate == 0.003          # the command line overrides the file
    assert args.max_depth is None               # null keeps the parser's default
    assert parse("student", []).base_channels == 64   # no file: the parser's defaults


@pytest.mark.parametrize("text, problem", [
    ("bogus_flag: 1\n", "unknown flag 'bogus_flag'"),
    ("learning_rate: -1\n", "--learning_rate: must be > 0"),
    ("mirror_augment: 3\n", "mirror_augment is an on/off flag"),
    ("- a\n- b\n", "expected a mapping"),
    ("base_channels: [8\n", "not valid YAML"),
    ("kind: kd\n", "unknown flag 'kind'"),
    ("learning_rate: fast\n", "bad.yaml: --learning_rate: expected float, got 'fast'"),
    ("scheduler: fast\n", "bad.yaml: --scheduler: invalid choice 'fast'"),
])
def test_bad_config_files_are_one_line_errors(tmp_path: Path, text: str, problem: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    command = [sys.executable, "train_binaural_attention.py", "--config", str(config)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0
    assert problem in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_resolved_config_repeats_the_run(tmp_path: Path) -> None:
    """config.yaml, as a run writes it, given back to --config gives the same arguments."""
    args = parse("kd", ["--base_channels", "8", "--attention_levels", "4,5", "--lambda_feat",
                        "0.05", "--feature_levels", "d1,x3", "--mirror_augment",
                        "--max_depth", "15", "--teacher_checkpoint", "t.pth"])
    path = tmp_path / RESOLVED_CONFIG_FILE
    write_resolved_config(path, args)
    again = parse("kd", ["--config", str(path)])
    expected = {k: v for k, v in vars(args).items() if k != "config"}
    assert {k: v for k, v in vars(again).items() if k != "config"} == expected


def _fake_checkpoint(path: Path, kind: str, model_name: str) -> None:
    path.parent.mkdir(parents=True)
    torch.save({"format_version": FORMAT_VERSION, "model_name": model_name, "model_config": {},
                "model_state": {}, "args": {}, "identity": {"kind": kind}}, path)


@pytest.mark.parametrize("saved_kind, script_kind", [("kd", "student"), ("student", "kd")])
def test_resuming_a_run_of_another_kind_stops(tmp_path: Path, saved_kind: str,
                                              script_kind: str) -> None:
    run_dir = tmp_path / "run"
    _fake_checkpoint(run_dir / LAST_CHECKPOINT, saved_kind, "binaural_attention")
    with pytest.raises(UsageError, match=f"a {cli.KIND_SCRIPTS[saved_kind]} run; resume it"):
        start_run(cli.build_parser(script_kind, None), ["--resume", str(run_dir)])


def test_every_flag_has_help() -> None:
    for kind in cli.KIND_MODELS:
        for action in cli.build_parser(kind, None)._actions:
            assert action.help, (kind, action.dest)
