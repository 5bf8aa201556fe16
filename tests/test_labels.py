"""Partially labelled training (training/labels.py, --labelled_fraction): the subset is seeded,
stratified per location and taken from the train split only; no depth of an unlabelled sample
reaches a loss; a run of another subset is another run."""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Dict, Tuple

import pytest
import torch

import train_distillation
import train_rgb_depth
from datasets.batvision import _BatvisionDataset
from common.errors import UsageError
from datasets.sample import DEPTH, VALID
from tests.conftest import parse, stop_message, train_argv, write_v2_tree
from training.checkpoint import LAST_CHECKPOINT, load_checkpoint
from training.cli import parse_script_argv
from training.data import build_data, median_valid_depth
from training.device import DistContext
from training.experiments import presets, runs
from training.labels import WithoutDepth, labelled_indices, subset_fingerprint
from training.run import expected_identity

LOCATIONS = ["b"] * 7 + ["a"] * 13 + ["c"] * 20


def test_the_subset_is_seeded_and_stratified_per_location() -> None:
    kept = labelled_indices(LOCATIONS, 0.25, seed=3)
    assert kept == labelled_indices(LOCATIONS, 0.25, seed=3)
    assert kept != labelled_indices(LOCATIONS, 0.25, seed=4)
    # round(0.25 * n) per location: 7 -> 2, 13 -> 3, 20 -> 5
    assert Counter(LOCATIONS[i] for i in kept) == {"b": 2, "a": 3, "c": 5}
    assert kept == sorted(set(kept))
    # Every location keeps one sample however small the fraction; 0 keeps none, 1 all.
    assert Counter(LOCATIONS[i] for i in labelled_indices(LOCATIONS, 0.01, 0)) == {
        "a": 1, "b": 1, "c": 1}
    assert labelled_indices(LOCATIONS, 0.0, 0) == []
    assert labelled_indices(LOCATIONS, 1.0, 0) == list(range(len(LOCATIONS)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        labelled_indices(LOCATIONS, 1.5, 0)


def test_the_fingerprint_names_the_subset_not_its_order() -> None:
    names = [f"{loc}/{i}" for i, loc in enumerate(LOCATIONS)]
    assert subset_fingerprint(names, [0, 5, 9]) == subset_fingerprint(names, [9, 0, 5])
    assert subset_fingerprint(names, [0, 5, 9]) != subset_fingerprint(names, [0, 5, 10])


def test_unlabelled_samples_lose_their_depth_whatever_it_holds() -> None:
    poisoned = [{DEPTH: torch.full((1, 2, 2), float("nan")), VALID: torch.ones(1, 2, 2).bool(),
                 "audio": torch.ones(2, 2, 2)} for _ in range(3)]
    data = WithoutDepth(poisoned, labelled=[1])
    assert len(data) == 3
    assert torch.equal(data[0][DEPTH], torch.zeros(1, 2, 2)) and not data[0][VALID].any()
    assert torch.equal(data[0]["audio"], poisoned[0]["audio"])
    assert data[1] is poisoned[1]  # a labelled sample is untouched


def _built(root: Path, kind: str, *flags: str) -> Tuple[object, object]:
    args = parse(kind, ["--dataset", "batvisionv2", "--data_root", str(root), "--image_size",
                        "16", "--num_workers", "0", *flags])
    data = build_data(args, DistContext(), use_rgb=kind == "kd")
    return args, data


def test_only_the_train_split_loses_labels(tmp_path: Path) -> None:
    root = write_v2_tree(tmp_path / "bv2", counts={"train": 8, "val": 2, "test": 1})
    _, full = _built(root, "kd")
    _, kd = _built(root, "kd", "--labelled_fraction", "0.25")
    _, student = _built(root, "student", "--labelled_fraction", "0.25")
    train_size = len(full.train_loader.dataset)
    labelled = [i for i in range(train_size) if kd.train_loader.dataset[i][VALID].any()]
    assert len(kd.train_loader.dataset) == train_size          # distillation reads them all
    assert len(labelled) == len(student.train_loader.dataset) == 2 * 3  # 2 of 8 per location
    assert len(kd.val_loader.dataset) == len(full.val_loader.dataset)
    assert all(kd.val_dataset[i][VALID].any() for i in range(len(kd.val_dataset)))
    # The subset is part of the data fingerprint; all-labelled runs keep their old one.
    assert kd.data_fingerprint != full.data_fingerprint
    assert student.data_fingerprint == kd.data_fingerprint


def test_the_head_starts_at_the_labelled_samples_median_in_every_script(tmp_path: Path) -> None:
    root = write_v2_tree(tmp_path / "bv2", counts={"train": 20, "val": 2, "test": 1})
    _, kd = _built(root, "kd", "--labelled_fraction", "0.1")
    _, student = _built(root, "student", "--labelled_fraction", "0.1")
    # Few picks over every sample would find about 10 % of them labelled: the distillation
    # student would start its head elsewhere than its audio-only control.
    assert median_valid_depth(kd.train_loader.dataset, max_samples=8) == median_valid_depth(
        student.train_loader.dataset, max_samples=8)
    _, none = _built(root, "kd", "--labelled_fraction", "0")
    with pytest.raises(UsageError, match="no valid depth pixel in 0 labelled training samples"):
        median_valid_depth(none.train_loader.dataset)


def test_no_labelled_sample_is_refused_outside_distillation(tmp_path: Path) -> None:
    root = write_v2_tree(tmp_path / "bv2")
    message = stop_message(train_argv(root, tmp_path / "runs", "t", "--labelled_fraction", "0"))
    assert message == ("error: --labelled_fraction 0.0 leaves no labelled training sample: only "
                       "train_distillation.py learns without labels")


def test_the_fraction_and_its_seed_are_the_runs_identity(tmp_path: Path) -> None:
    root = write_v2_tree(tmp_path / "bv2")
    base = ["--dataset", "batvisionv2", "--data_root", str(root), "--image_size", "16"]
    full = expected_identity("student", base)
    explicit = expected_identity("student", base + ["--labelled_fraction", "1"])
    quarter = expected_identity("student", base + ["--labelled_fraction", "0.25"])
    reseeded = expected_identity("student", base + ["--labelled_fraction", "0.25",
                                                    "--labelled_seed", "1"])
    assert explicit["fingerprint"] == full["fingerprint"]  # runs from before the flag still match
    assert len({full["fingerprint"], quarter["fingerprint"], reseeded["fingerprint"]}) == 3


@pytest.mark.slow
def test_resuming_with_another_fraction_stops(tmp_path: Path) -> None:
    root = write_v2_tree(tmp_path / "bv2", depth_shape=(32, 32))
    argv = train_argv(root, tmp_path / "runs", "t", "--labelled_fraction", "0.5",
                      "--stop_after_epochs", "1")
    train_rgb_depth.main(argv)
    run = tmp_path / "runs" / "t"
    before = load_checkpoint(run / LAST_CHECKPOINT)["history"]
    message = stop_message(["--resume", str(run), "--num_workers", "0",
                            "--labelled_fraction", "0.25"])
    assert "cannot resume: --labelled_fraction: 0.5 -> 0.25" in message
    assert load_checkpoint(run / LAST_CHECKPOINT)["history"] == before


@pytest.mark.slow
def test_no_depth_of_an_unlabelled_sample_reaches_any_loss(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Distil twice with 25 % of the train split labelled: once with every unlabelled sample's
    depth NaN and its pixels all 'valid', once with zeros and no valid pixel. Training is finite
    and the two students are identical, weight for weight."""
    root = write_v2_tree(tmp_path / "bv2", counts={"train": 8, "val": 2, "test": 1},
                         depth_shape=(32, 32))
    train_rgb_depth.main(train_argv(root, tmp_path, "teacher", "--nb_epochs", "1"))
    teacher = str(tmp_path / "teacher" / LAST_CHECKPOINT)
    original = _BatvisionDataset.__getitem__

    def students(fill: float, valid: bool) -> Dict[str, torch.Tensor]:
        def getitem(self, i):
            sample = original(self, i)
            if self.split != "train" or i in set(labelled_indices(
                    [r.location for r in self.records], 0.25, 0)):
                return sample
            return {**sample, DEPTH: torch.full_like(sample[DEPTH], fill),
                    VALID: torch.full_like(sample[VALID], valid)}

        monkeypatch.setattr(_BatvisionDataset, "__getitem__", getitem)
        name = f"kd_{fill}"
        train_distillation.main(train_argv(root, tmp_path, name, "--teacher_checkpoint", teacher,
                                           "--labelled_fraction", "0.25", "--kd_schedule",
                                           "gated", "--lambda_feat", "0.1"))
        return load_checkpoint(tmp_path / name / LAST_CHECKPOINT)["model_state"]

    poisoned, zeros = students(float("nan"), True), students(0.0, False)
    assert all(torch.isfinite(v).all() for v in poisoned.values() if v.is_floating_point())
    for key, value in zeros.items():
        assert torch.equal(poisoned[key], value), key


def test_the_runner_gives_every_run_the_fraction(tmp_path: Path) -> None:
    preset = dataclasses.replace(presets.PRESETS["quick"], labelled_fraction=0.1)
    setup = runs.Setup(preset=preset, config_dir=Path(presets.__file__).parents[2] / "configs"
                       / "synthetic", data_root=str(tmp_path), cache_dir=tmp_path, device="cpu",
                       runs_dir=tmp_path, on_mismatch="retrain", launch=None)
    for experiment in preset.experiments:  # the strict teacher learns from the same subset
        spec = runs.run_spec(experiment, 0, setup)
        assert parse_script_argv(experiment.kind, spec.argv).labelled_fraction == 0.1
    labelled = dataclasses.replace(setup, preset=presets.PRESETS["quick"])
    assert "--labelled_fraction" not in runs.run_spec(presets.TEACHER_ROW, 0, labelled).argv
