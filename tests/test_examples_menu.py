"""run_rgb_depth_examples.sh: the presets' commands parse, the menu, errors and the exit code."""
from __future__ import annotations

import os
import pty
import shlex
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest

import train_rgb_depth

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "run_rgb_depth_examples.sh"


def run_menu(*args: str, env: Optional[Dict[str, str]] = None, stdin: int = subprocess.DEVNULL
             ) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          stdin=stdin, env={**os.environ, **(env or {})}, timeout=60)


def dry_run_argv(*args: str) -> List[str]:
    result = run_menu("--dry-run", *args)
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


@pytest.mark.parametrize("preset", [str(n) for n in range(1, 9)])
def test_every_preset_is_a_valid_training_command(preset: str) -> None:
    argv = dry_run_argv(preset)
    assert argv[:2] == ["python", "train_rgb_depth.py"]
    train_rgb_depth.build_parser().parse_args(argv[2:])  # every flag exists; exits 2 otherwise


def test_presets_say_what_they_promise() -> None:
    assert "--use_wandb" in dry_run_argv("2")
    assert dry_run_argv("3")[dry_run_argv("3").index("--base_channels") + 1] == "32"
    assert dry_run_argv("5")[2:] == ["--resume", "latest"]
    label_scarce, teacher = dry_run_argv("7"), dry_run_argv("6")
    assert label_scarce[label_scarce.index("--labelled_fraction") + 1] == "0.1"
    # Ten times the epochs on a tenth of the samples: the fully labelled teacher's steps.
    parsed = train_rgb_depth.build_parser().parse_args(teacher[2:])
    assert label_scarce[label_scarce.index("--nb_epochs") + 1] == str(10 * parsed.nb_epochs)
    warmup = float(label_scarce[label_scarce.index("--warmup_epochs") + 1])
    assert warmup == 10 * parsed.warmup_epochs
    assert "synthetic" in dry_run_argv("8")
    with_data = dry_run_argv("1")
    assert with_data[with_data.index("--data_root") + 1] == "data/BatvisionV2"
    # Extra flags are appended; $DATA_ROOT with a space survives the quoting.
    result = run_menu("--dry-run", "1", "--nb_epochs", "3", env={"DATA_ROOT": "/my data"})
    argv = shlex.split(result.stdout)
    assert argv[argv.index("--data_root") + 1] == "/my data" and argv[-2:] == ["--nb_epochs", "3"]


def test_unknown_preset_and_missing_preset_fail() -> None:
    result = run_menu("9")
    assert result.returncode != 0 and "unknown preset '9'" in result.stderr
    result = run_menu()  # stdin is not a terminal: menu and an error, no waiting
    assert result.returncode != 0
    assert "8) quick check on the synthetic world" in result.stderr
    assert "stdin is not a terminal" in result.stderr


def test_menu_reads_the_preset_from_a_terminal() -> None:
    controller, terminal = pty.openpty()
    try:
        os.write(controller, b"5\n")
        result = run_menu("--dry-run", stdin=terminal)
    finally:
        os.close(controller)
        os.close(terminal)
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout.splitlines()[-1])[-2:] == ["--resume", "latest"]


def test_exit_status_is_the_training_commands(tmp_path: Path) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho \"ran $*\"\nexit 7\n")
    fake_python.chmod(0o755)
    result = run_menu("8", env={"PYTHON": str(fake_python)})
    assert result.returncode == 7
    assert result.stdout.startswith("ran train_rgb_depth.py --config configs/synthetic/teacher.yaml")
