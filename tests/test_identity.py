"""Run identity: what it records and how a difference is named (training/identity.py), and the
runner's reuse decisions (training/experiments/runs.py) against runs trained for real: a run is
reused only while the identity its command line would record now
(``training.run.expected_identity``) equals the one it recorded, and that expected identity is
exactly what the training scripts record."""
from __future__ import annotations

import csv
import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pytest
import torch

from common.errors import UsageError
from training.checkpoint import BEST_CHECKPOINT, LAST_CHECKPOINT, load_checkpoint
from training.experiments import runs
from training.experiments.runs import RETRAIN, REUSE
from training.identity import differences, digest, run_identity
from training.run import expected_identity

ARGS = {"image_size": 32, "nb_epochs": 2, "cache_dir": "/anywhere", "threads": "auto"}
GROUPS = {"data": ["image_size"], "optimisation": ["nb_epochs"]}
CACHED = {"cache_format": 3, "forms": {"audio": "scaled-uint8"}}


def test_identity_holds_what_decides_the_result_and_not_where_it_runs() -> None:
    identity = run_identity(ARGS, GROUPS, "student", "binaural_attention", "d" * 64)
    assert identity["settings"] == {"data": {"image_size": 32}, "optimisation": {"nb_epochs": 2}}
    # Read from the files: no storage entry, so identities recorded before it existed still match.
    assert "storage" not in identity
    assert identity["fingerprint"] == digest({k: v for k, v in identity.items()
                                              if k != "fingerprint"})


def test_a_flag_introduced_later_counts_only_once_it_is_moved() -> None:
    """A run from before --feature_teacher existed keeps its identity under the default, and
    the control (random) is another identity."""
    groups = {**GROUPS, "distillation": ["feature_teacher"]}
    before = run_identity(ARGS, groups, "kd", "binaural_attention", "d" * 64)
    default = run_identity({**ARGS, "feature_teacher": "teacher"}, groups, "kd",
                           "binaural_attention", "d" * 64)
    control = run_identity({**ARGS, "feature_teacher": "random"}, groups, "kd",
                           "binaural_attention", "d" * 64)
    assert default["fingerprint"] == before["fingerprint"]
    assert control["fingerprint"] != before["fingerprint"]
    assert differences(before, control) == ["--feature_teacher: '<unset>' -> 'random'"]


def test_a_change_of_stored_inputs_is_a_difference_named_in_words() -> None:
    files = run_identity(ARGS, GROUPS, "student", "binaural_attention", "d" * 64)
    cached = run_identity(ARGS, GROUPS, "student", "binaural_attention", "d" * 64, None, CACHED)
    assert cached["storage"] == CACHED and cached["fingerprint"] != files["fingerprint"]
    assert differences(files, cached) == [
        "inputs: read from the files -> cache format 3 (audio scaled-uint8)"]
    assert differences(cached, files, ["optimisation"]) == []  # not a flag group's business
    assert differences(cached, files, ["data"]) == [
        "inputs: cache format 3 (audio scaled-uint8) -> read from the files"]


DATA_CHANGED = "data files changed (split CSVs or the size/mtime of a referenced file)"


@dataclass(frozen=True)
class Trained:
    """The fixture's world and runs.

    Attributes:
        root: the tiny V2 tree.
        argv: kind → the command line the run was trained with.
        run_dirs: kind → its run folder.
    """

    root: Path
    argv: Dict[str, List[str]]
    run_dirs: Dict[str, Path]

    def decide(self, kind: str, *changes: str) -> Tuple[str, List[str]]:
        """:func:`runs.decide` for the run of ``kind`` asked again with ``changes`` appended to
        its command line (a flag given twice: the last wins)."""
        return runs.decide(self.run_dirs[kind],
                           expected_identity(kind, [*self.argv[kind], *changes]))


def in_process(script: str, argv: Sequence[str], log: Optional[Path] = None) -> None:
    """A launcher that runs a training script's ``main`` in this process (no interpreter start)."""
    importlib.import_module(Path(script).stem).main(list(argv))


class Recorder:
    """A launcher that only records what it was asked to run."""

    def __init__(self) -> None:
        self.calls: List[List[str]] = []

    def __call__(self, script: str, argv: Sequence[str], log: Optional[Path] = None) -> None:
        self.calls.append([script, *argv])


def run_argv(kind: str, root: Path, out: Path) -> List[str]:
    """A tiny run: 16x16, width 4, one epoch of 3 full batches (a batch of one cannot train
    BatchNorm at 1x1), through a cache (its storage is identity too)."""
    argv = ["--dataset", "batvisionv2", "--data_root", str(root), "--image_size", "16",
            "--base_channels", "4", "--batch_size", "3", "--nb_epochs", "1", "--device", "cpu",
            "--threads", "1", "--num_workers", "0", "--num_val_images", "0",
            "--cache_dir", str(out / "cache"), "--checkpoint_dir", str(out / "runs"),
            "--experiment_name", kind]
    if kind == "kd":
        argv += ["--attention_levels", "4,5",
                 "--teacher_checkpoint", str(out / "runs" / "teacher" / BEST_CHECKPOINT)]
    return argv


# The tests below read the runs this fixture trains (one teacher, one distillation): slow.
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A tiny V2 tree, a teacher and a student distilled from it, each trained once through
    :func:`runs.bring_up_to_date` (a new folder: trained)."""
    from tests.conftest import write_v2_tree

    out = tmp_path_factory.mktemp("reuse")
    root = write_v2_tree(out / "bv2")
    argv = {kind: run_argv(kind, root, out) for kind in ("teacher", "kd")}
    run_dirs = {kind: out / "runs" / kind for kind in argv}
    threads = torch.get_num_threads()  # --threads 1 sets this process's, as the script's own
    try:
        for kind in argv:
            runs.bring_up_to_date(kind, argv[kind], run_dirs[kind], in_process)
    finally:
        torch.set_num_threads(threads)
    return Trained(root, argv, run_dirs)


@pytest.mark.parametrize("kind", ["teacher", "kd"])
@pytest.mark.slow
def test_the_expected_identity_is_the_one_the_run_recorded(trained: Trained, kind: str) -> None:
    recorded = load_checkpoint(trained.run_dirs[kind] / LAST_CHECKPOINT)["identity"]
    assert expected_identity(kind, trained.argv[kind]) == recorded


@pytest.mark.parametrize("kind", ["teacher", "kd"])
@pytest.mark.slow
def test_the_same_command_line_reuses_the_run(trained: Trained, kind: str) -> None:
    assert trained.decide(kind) == (REUSE, [])
    launcher = Recorder()
    runs.bring_up_to_date(kind, trained.argv[kind], trained.run_dirs[kind], launcher)
    assert launcher.calls == []


@pytest.mark.slow
def test_an_operational_flag_reuses_the_run(trained: Trained, tmp_path: Path) -> None:
    for flag, value in [("--num_workers", "1"), ("--threads", "2"), ("--num_val_images", "2"),
                        ("--cache_dir", str(tmp_path / "cache"))]:
        assert trained.decide("kd", flag, value) == (REUSE, []), flag


@pytest.mark.parametrize("kind, group, flag, value, difference", [
    ("teacher", "data", "--image_size", "32", "--image_size: 16 -> 32"),
    ("teacher", "model", "--base_channels", "8", "--base_channels: 4 -> 8"),
    ("teacher", "optimisation", "--learning_rate", "0.002", "--learning_rate: 0.001 -> 0.002"),
    ("kd", "distillation", "--lambda_depth", "0.5", "--lambda_depth: 1.0 -> 0.5"),
])
@pytest.mark.slow
def test_a_changed_flag_of_each_identity_group_retrains(
        trained: Trained, kind: str, group: str, flag: str, value: str, difference: str) -> None:
    recorded = load_checkpoint(trained.run_dirs[kind] / LAST_CHECKPOINT)["identity"]
    assert flag[2:] in recorded["settings"][group]  # the flag stands for its group
    assert trained.decide(kind, flag, value) == (RETRAIN, [difference])


def _first_train_row(root: Path) -> Tuple[Path, Dict[str, str]]:
    """A split CSV the runs read (a location's train.csv) and its first row."""
    train_csv = sorted(root.glob("*/train.csv"))[0]
    with open(train_csv, newline="") as f:
        return train_csv, next(csv.DictReader(f))


@pytest.mark.parametrize("change", ["touch a referenced file", "rewrite the split CSV"])
@pytest.mark.slow
def test_changed_data_retrains_every_run_that_read_it(trained: Trained, change: str) -> None:
    train_csv, row = _first_train_row(trained.root)
    target = (train_csv if change == "rewrite the split CSV"
              else trained.root / row["depth path"] / row["depth file name"])
    raw, stat = target.read_bytes(), target.stat()
    try:
        if target == train_csv:  # other line endings: the same rows, other bytes
            target.write_bytes(raw.replace(b"\r\n", b"\n") if b"\r\n" in raw
                               else raw.replace(b"\n", b"\r\n"))
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        for kind in ("teacher", "kd"):
            assert trained.decide(kind) == (RETRAIN, [DATA_CHANGED])
    finally:
        target.write_bytes(raw)
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert trained.decide("teacher") == (REUSE, [])


@pytest.mark.slow
def test_another_teacher_retrains_the_student_wherever_the_teacher_file_lies(
        trained: Trained, tmp_path: Path) -> None:
    teacher = load_checkpoint(trained.run_dirs["teacher"] / BEST_CHECKPOINT)
    torch.save(teacher, tmp_path / "moved.pth")  # the same weights elsewhere: same teacher
    assert trained.decide("kd", "--teacher_checkpoint", str(tmp_path / "moved.pth")) == (
        REUSE, [])
    name, weight = next((k, v) for k, v in teacher["model_state"].items()
                        if v.is_floating_point())
    teacher["model_state"][name] = weight + 0.01
    torch.save(teacher, tmp_path / "other.pth")
    assert trained.decide("kd", "--teacher_checkpoint", str(tmp_path / "other.pth")) == (
        RETRAIN, ["teacher checkpoint changed"])


@pytest.mark.slow
def test_a_run_trained_differently_is_retrained_with_overwrite_or_refused(
        trained: Trained) -> None:
    argv = [*trained.argv["teacher"], "--base_channels", "8"]
    launcher = Recorder()
    runs.bring_up_to_date("teacher", argv, trained.run_dirs["teacher"], launcher)
    assert launcher.calls == [["train_rgb_depth.py", *argv, "--overwrite"]]

    refused = Recorder()
    with pytest.raises(UsageError, match="trained differently: --base_channels: 4 -> 8"):
        runs.bring_up_to_date("teacher", argv, trained.run_dirs["teacher"], refused, "stop")
    assert refused.calls == []
