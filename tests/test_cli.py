"""The shared command line: flag validation at parse time, ``--config`` files, help."""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Callable, List

import pytest

import train_binaural_attention
from tests.conftest import parse
from training import cli


def command_line(main: Callable[[List[str]], None], argv: List[str],
                 capsys: pytest.CaptureFixture[str]) -> subprocess.CompletedProcess:
    """``main(argv)`` run in this process, as its command line would end: the exit status and
    stderr, where the interpreter prints a ``SystemExit`` message. (A subprocess would import
    torch afresh, several seconds a case on this machine; ``test_scripts`` runs one for real.)"""
    capsys.readouterr()
    try:
        main(argv)
        code: object = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    if code is None or isinstance(code, int):
        return subprocess.CompletedProcess(argv, code or 0, captured.out, captured.err)
    return subprocess.CompletedProcess(argv, 1, captured.out, f"{captured.err}{code}\n")


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


def test_heads_must_divide_every_attended_width(capsys: pytest.CaptureFixture[str]) -> None:
    """base 8: level 4 has 64 channels, which 3 heads do not divide (the run would crash)."""
    command = ["--base_channels", "8", "--attention_levels", "4,5", "--num_heads", "3"]
    result = command_line(train_binaural_attention.main, command, capsys)
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
    # An on/off flag the file turns on, the command line turns off (and the other way round).
    assert parse("student", ["--config", str(config), "--no-mirror_augment"]).mirror_augment is False
    # 'none' undoes a file's head init (the architecture's own start).
    tuned = Path(__file__).resolve().parents[1] / "configs/synthetic/official_unet_tuned.yaml"
    assert parse("student", ["--config", str(tuned), "--head_init_depth", "none"]
                 ).head_init_depth is None
    config.write_text("mirror_augment: false\n")
    assert parse("student", ["--config", str(config)]).mirror_augment is False
    assert parse("student", ["--config", str(config), "--mirror_augment"]).mirror_augment is True


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
def test_bad_config_files_are_one_line_errors(tmp_path: Path, text: str, problem: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    command = ["--config", str(config)]
    result = command_line(train_binaural_attention.main, command, capsys)
    assert result.returncode != 0
    assert problem in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def test_every_flag_has_help() -> None:
    for kind in cli.KIND_MODELS:
        for action in cli.build_parser(kind, None)._actions:
            assert action.help, (kind, action.dest)


def test_a_bad_head_init_names_every_accepted_form() -> None:
    for text, reason in (("banana", "expected float, got 'banana'"), ("-1", "must be > 0.0")):
        with pytest.raises(argparse.ArgumentTypeError,
                           match=f"expected 'median', 'none' or metres > 0; {reason}"):
            cli.head_init_depth(text)
