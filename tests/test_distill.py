"""Distillation terms: zero on agreement, positive otherwise, equal to hand-computed values;
adapters learn; schedules ramp; a stopped and resumed distillation equals an uninterrupted one."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Tuple

import pytest
import torch

import train_binaural_attention
import train_distillation
import train_rgb_depth
from models import build_model
from training.checkpoint import LAST_CHECKPOINT, load_checkpoint, save_checkpoint
from training.identity import checkpoint_fingerprint
from training.distill import (
    MATCHINGS,
    DistillationTask,
    FeatureAdapters,
    depth_kd_loss,
    feature_kd_loss,
    hardest_pixels,
    schedule_factor,
    teacher_confidence,
    teacher_gate,
    untrained_twin,
)


def _features(seed: int, channels: int = 8, size: int = 8) -> torch.Tensor:
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_depth_kd_zero_on_agreement_positive_otherwise(kind: str) -> None:
    teacher = torch.rand(2, 1, 8, 8) * 10
    assert depth_kd_loss(teacher.clone(), teacher, max_depth=10.0, kind=kind).item() == 0.0
    assert depth_kd_loss(teacher + 0.5, teacher, max_depth=10.0, kind=kind).item() > 0.0


def test_depth_kd_is_in_normalised_units() -> None:
    teacher = torch.full((1, 1, 4, 4), 2.0)
    assert depth_kd_loss(teacher + 1.0, teacher, max_depth=10.0).item() == pytest.approx(0.1)
    scaled = teacher * 3
    assert depth_kd_loss(scaled + 3.0, scaled, max_depth=30.0).item() == pytest.approx(0.1)


def test_depth_kd_covers_pixels_without_ground_truth() -> None:
    # The student is only wrong where GT would be missing; depth KD still sees it.
    teacher = torch.ones(1, 1, 4, 4)
    student = teacher.clone()
    student[..., 0, 0] = 3.0
    assert depth_kd_loss(student, teacher, max_depth=4.0).item() > 0.0


@pytest.mark.parametrize("matching", MATCHINGS)
def test_feature_kd_zero_on_agreement_positive_otherwise(matching: str) -> None:
    teacher = _features(0)
    agree = feature_kd_loss(teacher.clone(), teacher, matching).item()
    assert agree == pytest.approx(0.0, abs=1e-6)
    assert feature_kd_loss(_features(1), teacher, matching).item() > 1e-3


def test_feature_kd_rejects_unknown_matching() -> None:
    with pytest.raises(ValueError, match="matching"):
        feature_kd_loss(_features(0), _features(1), "l7")


@pytest.mark.parametrize("matching", MATCHINGS)
def test_adapters_receive_gradients(matching: str) -> None:
    student = {"d1": _features(2, channels=4, size=4), "d2": _features(3, channels=6, size=8)}
    teacher = {"d1": _features(4, channels=16, size=4), "d2": _features(5, channels=8, size=8)}
    adapters = FeatureAdapters.from_features(student, teacher, ["d1", "d2"])
    losses = adapters(student, teacher, matching)
    assert set(losses) == {"d1", "d2"}
    sum(losses.values()).backward()
    for level in ("d1", "d2"):
        conv = adapters.adapters[level]
        assert conv.weight.shape[:2] == (teacher[level].shape[1], student[level].shape[1])
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_adapters_reject_unknown_level() -> None:
    with pytest.raises(ValueError, match="d9"):
        FeatureAdapters({"d9": 4}, {"d9": 4}, ["d9"])


def test_feature_kd_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differ"):
        feature_kd_loss(_features(0, size=8), _features(1, size=4), "cosine")


def test_schedules_ramp_from_zero_to_one() -> None:
    for schedule in ("constant", "confidence", "gated"):
        assert schedule_factor(schedule, 0.0, ramp=10) == 1.0
    assert schedule_factor("linear", 0.0, ramp=10) == 0.0
    assert schedule_factor("linear", 5.0, ramp=10) == pytest.approx(0.5)
    assert schedule_factor("cosine", 5.0, ramp=10) == pytest.approx(0.5)
    quarter = 0.5 * (1 - math.cos(math.pi / 4))
    assert schedule_factor("cosine", 2.5, ramp=10) == pytest.approx(quarter)
    for schedule in ("linear", "cosine"):
        assert schedule_factor(schedule, 25.0, ramp=10) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        schedule_factor("step", 1.0)


def test_confidence_trusts_an_exact_teacher_and_fills_holes_with_the_image_mean() -> None:
    gt = torch.tensor([[[[2.0, 4.0], [0.0, 2.0]]]])
    valid = gt > 0
    teacher = torch.tensor([[[[2.0, 4.0 * 1.2], [7.0, 2.0]]]])  # exact, 20 % off, hole, exact
    weight = teacher_confidence(teacher, gt, valid, tau=0.2)
    expected_off = math.exp(-1.0)
    assert weight[0, 0, 0, 0].item() == pytest.approx(1.0)
    assert weight[0, 0, 0, 1].item() == pytest.approx(expected_off)
    assert weight[0, 0, 1, 0].item() == pytest.approx((2.0 + expected_off) / 3)
    no_gt = torch.zeros_like(gt)
    assert torch.equal(teacher_confidence(teacher, no_gt, no_gt > 0), torch.ones_like(gt))


def test_gate_keeps_the_pixels_where_the_teacher_beats_the_student() -> None:
    gt = torch.tensor([[[[2.0, 4.0], [0.0, 3.0]]]])
    valid = gt > 0
    teacher = torch.tensor([[[[2.1, 5.0], [7.0, 3.5]]]])
    student = torch.tensor([[[[2.5, 4.5], [1.0, 2.5]]]])  # worse, better, hole, tie
    gate = teacher_gate(teacher, student, gt, valid)
    assert gate.flatten().tolist() == pytest.approx([1.0, 0.0, 1.0 / 3, 0.0])
    no_gt = torch.zeros_like(gt)
    assert torch.equal(teacher_gate(teacher, student, no_gt, no_gt > 0), torch.ones_like(gt))


def test_gated_depth_kd_is_zero_where_the_student_is_exact() -> None:
    task = _task(depth_weight=1.0, schedule="gated").eval()
    batch = _tiny_batch()
    batch["depth"] = batch["depth"] + 1.0  # no holes: every pixel is checked
    batch["valid"] = torch.ones_like(batch["valid"])
    with torch.no_grad():
        exact = task.kd_terms(batch["depth"], {}, batch)["kd_depth"]
        off = task.kd_terms(batch["depth"] + 5.0, {}, batch)["kd_depth"]
    assert exact.item() == 0.0
    assert off.item() > 0.0


# --------------------------------------------------------------------------------------------
# The distillation task and train_distillation.py

IMAGE = 16
BASE = 4


def _tiny_batch(seed: int = 0, batch_size: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    depth = torch.rand(batch_size, 1, IMAGE, IMAGE, generator=g) * 20 + 1
    depth[..., :3, :] = 0.0  # a band of holes, as the real ground truth has
    return {"audio": torch.rand(batch_size, 2, IMAGE, IMAGE, generator=g),
            "rgb": torch.rand(batch_size, 3, IMAGE, IMAGE, generator=g),
            "depth": depth, "valid": depth > 0}


def _task(**kwargs) -> DistillationTask:
    torch.manual_seed(0)
    teacher = build_model("rgb_depth", base_channels=BASE, max_depth=30.0)
    student = build_model("binaural_attention", base_channels=BASE, max_depth=30.0)
    return DistillationTask(student, teacher, 30.0, IMAGE, **kwargs)


@pytest.mark.parametrize("schedule", ["constant", "confidence", "gated", "hard_pixels", "holes"])
def test_one_step_trains_student_and_adapters_and_leaves_the_teacher_alone(schedule: str) -> None:
    task = _task(depth_weight=1.0, feature_weight=0.5, feature_levels=["d2", "x3"],
                 schedule=schedule)
    teacher_before = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in task.model.state_dict().items()}
    adapters_before = {k: v.clone() for k, v in task.adapters.state_dict().items()}
    parameters = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-2)

    task.train()
    assert not task.teacher.training
    depth, losses = task(_tiny_batch())
    assert set(losses) == {"l1", "kd_depth", "kd_d2", "kd_x3", "total"}
    assert depth.shape == (2, 1, IMAGE, IMAGE)
    optimizer.zero_grad()
    losses["total"].backward()
    optimizer.step()

    assert all(not p.requires_grad for p in task.teacher.parameters())
    for name, value in task.teacher.state_dict().items():  # parameters AND BatchNorm buffers
        assert torch.equal(value, teacher_before[name]), name
    assert any(not torch.equal(v, student_before[k]) for k, v in task.model.state_dict().items())
    adapters_after = task.adapters.state_dict()
    assert all(not torch.equal(v, adapters_before[k]) for k, v in adapters_after.items())
    assert task.step == 1


def _standardised_by_hand(x: torch.Tensor) -> torch.Tensor:
    """Per sample: (x - mean) / sqrt(var + 1e-5) over (C, H, W), var without Bessel's factor."""
    flat = x.flatten(1)
    mean = flat.mean(dim=1).view(-1, 1, 1, 1)
    var = flat.var(dim=1, unbiased=False).view(-1, 1, 1, 1)
    return (x - mean) / torch.sqrt(var + 1e-5)


def test_kd_terms_equal_hand_computed_weights_schedule_and_total() -> None:
    """lambda_depth 2, lambda_feat 0.6 over 2 levels, linear ramp over 4 steps: at step 1 the
    schedule factor is 1/4, so kd_depth = 2 * 1/4 * mean|s - t| / 30 and each kd_<level> =
    0.6 / 2 * 1/4 * MSE of the standardised maps; at step 0 both are 0."""
    task = _task(depth_weight=2.0, feature_weight=0.6, feature_levels=["d2", "d3"],
                 schedule="linear", ramp_steps=4)
    task.eval()
    batch = _tiny_batch()
    with torch.no_grad():
        student, student_features = task.model(batch["audio"], return_features=True)
        teacher, teacher_features = task.teacher(batch["rgb"], return_features=True)
        adapted = {level: task.adapters.adapters[level](student_features[level])
                   for level in ("d2", "d3")}
        _, at_start = task(batch)
        task.step = 1
        _, quarter = task(batch)

    valid = batch["valid"]
    l1 = ((student - batch["depth"]).abs()[valid].sum() / valid.sum() / 30.0).item()
    kd_depth = 2.0 * 0.25 * ((student - teacher).abs().mean() / 30.0).item()
    kd_levels = {f"kd_{level}": 0.6 / 2 * 0.25 * (
        _standardised_by_hand(adapted[level])
        - _standardised_by_hand(teacher_features[level])).pow(2).mean().item()
        for level in ("d2", "d3")}
    expected = {"l1": l1, "kd_depth": kd_depth, **kd_levels,
                "total": l1 + kd_depth + sum(kd_levels.values())}
    assert {k: v.item() for k, v in quarter.items()} == pytest.approx(expected, rel=1e-5)
    assert kd_depth > 1e-4 and min(kd_levels.values()) > 1e-4  # nothing trivially zero
    zero_kd = {"l1": l1, "kd_depth": 0.0, "kd_d2": 0.0, "kd_d3": 0.0, "total": l1}
    assert {k: v.item() for k, v in at_start.items()} == pytest.approx(zero_kd, rel=1e-5)
    assert task.step == 1  # eval forwards are not training steps


def test_teacher_fingerprint_is_that_of_its_checkpoint(tmp_path: Path) -> None:
    task = _task()
    checkpoint = {"model_name": task.teacher.model_name, "model_config": task.teacher.config,
                  "model_state": task.teacher.state_dict()}
    assert task.teacher_fingerprint == checkpoint_fingerprint(checkpoint)
    retrained = build_model("rgb_depth", base_channels=BASE, max_depth=30.0)  # other weights
    other = DistillationTask(build_model("binaural_attention", base_channels=BASE, max_depth=30.0),
                             retrained, 30.0, IMAGE)
    assert other.teacher_fingerprint != task.teacher_fingerprint


def _train_args(root: Path, out: Path, name: str) -> list:
    return ["--dataset", "batvisionv2", "--data_root", str(root), "--image_size", str(IMAGE),
            "--base_channels", str(BASE), "--batch_size", "3", "--nb_epochs", "1",
            "--num_workers", "0", "--checkpoint_dir", str(out), "--experiment_name", name,
            "--num_val_images", "1", "--attention_levels", "4,5"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    """A tiny V2 tree and a one-epoch teacher trained on it: (data root, checkpoint)."""
    from tests.conftest import write_v2_tree

    base = tmp_path_factory.mktemp("kd")
    root = write_v2_tree(base / "bv2")
    args = [a for a in _train_args(root, base / "runs", "teacher")
            if a not in ("--attention_levels", "4,5")]
    train_rgb_depth.main(args)
    return root, base / "runs" / "teacher" / LAST_CHECKPOINT


@pytest.mark.slow
def test_distillation_stopped_and_resumed_equals_an_uninterrupted_run(
        teacher_run, tmp_path: Path) -> None:
    """Two epochs of 3 steps with a linear ramp over 4.5 steps: epoch 2 runs mid-ramp, so a
    resume that lost the schedule step (restarting the ramp) or the adapters (back to their
    initial weights) gives other weights than the uninterrupted run."""
    root, teacher = teacher_run
    kd_flags = ["--teacher_checkpoint", str(teacher), "--lambda_feat", "0.1",
                "--feature_levels", "d1,d4", "--kd_schedule", "linear", "--kd_ramp_epochs", "1.5",
                "--nb_epochs", "2", "--deterministic"]
    train_distillation.main(_train_args(root, tmp_path, "straight") + kd_flags)
    train_distillation.main(_train_args(root, tmp_path, "killed") + kd_flags
                            + ["--stop_after_epochs", "1"])
    killed = tmp_path / "killed" / LAST_CHECKPOINT
    first_epoch = load_checkpoint(killed)
    assert first_epoch["epoch"] == 1 and first_epoch["global_step"] == 3

    # KD flags may not change on resume; the refusal writes nothing.
    with pytest.raises(SystemExit) as error:
        train_distillation.main(["--resume", str(killed.parent), "--num_workers", "0",
                                 "--lambda_depth", "2"])
    assert str(error.value.code) == (f"error: {killed}: cannot resume: --lambda_depth: 1.0 -> "
                                     "2.0 (start a new run or use --overwrite)")
    assert load_checkpoint(killed)["history"] == first_epoch["history"]

    train_distillation.main(["--resume", str(killed.parent), "--num_workers", "0"])
    straight = load_checkpoint(tmp_path / "straight" / LAST_CHECKPOINT)
    resumed = load_checkpoint(killed)
    assert resumed["model_name"] == "binaural_attention"
    assert set(resumed["extra_states"]) == {"adapters"}  # the frozen teacher is not stored
    assert resumed["epoch"] == straight["epoch"] == 2
    assert resumed["global_step"] == straight["global_step"] == 6
    for name in ("model_state", "extra_states"):
        flat_straight = dict(_flatten(straight[name]))
        flat_resumed = dict(_flatten(resumed[name]))
        assert flat_resumed.keys() == flat_straight.keys()
        for key, value in flat_straight.items():
            assert torch.equal(flat_resumed[key], value), (name, key)
    assert not torch.equal(resumed["extra_states"]["adapters"]["adapters.d1.weight"],
                           first_epoch["extra_states"]["adapters"]["adapters.d1.weight"])
    logged = resumed["history"][-1]["train"]
    assert {"l1", "kd_depth", "kd_d1", "kd_d4", "total"} == set(logged)
    assert logged == straight["history"][-1]["train"]
    assert resumed["args"]["teacher_checkpoint"] == str(teacher)
    assert resumed["identity"]["kind"] == "kd"
    assert resumed["identity"]["teacher"] == checkpoint_fingerprint(load_checkpoint(teacher))


@pytest.mark.slow
def test_kd_without_kd_terms_trains_exactly_the_audio_only_student(teacher_run,
                                                                    tmp_path: Path) -> None:
    """With both KD weights at 0 a distillation run is the audio-only run of the same seed,
    weight for weight: loading the teacher draws nothing from the seeded generator, so a KD row
    of a table differs from the audio-only row by the distillation alone, not by its start."""
    root, teacher = teacher_run
    train_binaural_attention.main(_train_args(root, tmp_path, "audio") + ["--deterministic"])
    train_distillation.main(_train_args(root, tmp_path, "kd0") + [
        "--deterministic", "--teacher_checkpoint", str(teacher), "--lambda_depth", "0"])
    audio = load_checkpoint(tmp_path / "audio" / LAST_CHECKPOINT)["model_state"]
    kd = load_checkpoint(tmp_path / "kd0" / LAST_CHECKPOINT)["model_state"]
    assert audio.keys() == kd.keys()
    for key, value in audio.items():
        assert torch.equal(kd[key], value), key


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.slow
def test_teacher_of_the_wrong_model_size_or_range_is_refused(teacher_run,
                                                             tmp_path: Path) -> None:
    root, teacher = teacher_run
    wrong_size = _train_args(root, tmp_path, "a") + ["--teacher_checkpoint", str(teacher)]
    wrong_size[wrong_size.index("--image_size") + 1] = "32"
    with pytest.raises(SystemExit, match=r"trained on 16x16 inputs.*--image_size 32"):
        train_distillation.main(wrong_size)

    with pytest.raises(SystemExit, match=r"predicts depth up to 30.0 m.* max_depth is 12.0 m"):
        train_distillation.main(_train_args(root, tmp_path, "c") + [
            "--teacher_checkpoint", str(teacher), "--max_depth", "12"])

    checkpoint = load_checkpoint(teacher)
    student = build_model("binaural_attention", base_channels=BASE)
    checkpoint.update(model_name=student.model_name, model_config=student.config,
                      model_state=student.state_dict())
    not_a_teacher = tmp_path / "student.pth"
    save_checkpoint(not_a_teacher, checkpoint)
    with pytest.raises(SystemExit, match=r"student.pth: holds a 'binaural_attention' model"):
        train_distillation.main(_train_args(root, tmp_path, "b") + [
            "--teacher_checkpoint", str(not_a_teacher)])
    assert not any((tmp_path / name / LAST_CHECKPOINT).exists() for name in "abc")


# --------------------------------------------------------------------------------------------
# The gate's controls: each keeps the gated term's structure without one part of the teacher


class _FixedTeacher(torch.nn.Module):
    """A "teacher" that predicts a given depth map, so the terms can be checked by hand."""

    model_name = "rgb_depth"

    def __init__(self, depth: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("depth", depth)
        self.config = {"max_depth": 10.0}

    def forward(self, rgb: torch.Tensor, return_features: bool = False):
        return self.depth, {}


def _hand_batch() -> Tuple[dict, torch.Tensor, torch.Tensor]:
    """Ground truth with two holes, a teacher and a student: the teacher is closer on the pixels
    of index 0 and 2 (the gate passes 2 of 6 valid pixels); the student errs most on 5 and 4."""
    gt = torch.tensor([[[[2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 0.0, 0.0]]]])
    teacher = torch.tensor([[[[2.1, 3.9, 4.1, 5.2], [3.5, 0.5, 1.0, 9.0]]]])
    student = torch.tensor([[[[2.5, 3.5, 3.0, 5.1], [8.0, 4.0, 2.0, 2.0]]]])
    batch = {"audio": torch.zeros(1, 2, 2, 4), "rgb": torch.zeros(1, 3, 2, 4), "depth": gt,
             "valid": gt > 0}
    return batch, teacher, student


def _kd_gradient(schedule: str) -> Tuple[torch.Tensor, torch.Tensor]:
    batch, teacher, student = _hand_batch()
    task = DistillationTask(build_model("binaural_attention", base_channels=BASE, max_depth=10.0),
                            _FixedTeacher(teacher), 10.0, IMAGE, schedule=schedule)
    student = student.clone().requires_grad_(True)
    kd = task.kd_terms(student, {}, batch)["kd_depth"]
    kd.backward()
    return kd.detach(), student.grad


def test_hardest_pixels_keeps_exactly_that_many_valid_pixels_of_largest_error() -> None:
    batch, _, student = _hand_batch()
    chosen = hardest_pixels(student, batch["depth"], batch["valid"], 2)
    # errors on the valid pixels: 0.5, 0.5, 1.0, 0.1, 2.0, 3.0 -> pixels 5 and 4
    assert chosen.flatten().tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    everything = hardest_pixels(student, batch["depth"], batch["valid"], 100)
    assert torch.equal(everything.bool(), batch["valid"])  # never a hole, whatever the count
    assert hardest_pixels(student, batch["depth"], batch["valid"], 0).sum() == 0


def test_hard_pixel_control_pulls_towards_the_ground_truth_on_the_gates_share() -> None:
    """The gate passes pixels 0 and 2 (teacher closer); the control spends that share, 2 pixels,
    on the student's worst (4 and 5), with the ground truth as target: the gradient there is
    sign(s - g) / (8 pixels x 10 m) and zero everywhere else, holes included."""
    loss, grad = _kd_gradient("hard_pixels")
    assert loss.item() == pytest.approx((2.0 + 3.0) / 10.0 / 8)
    expected = torch.zeros(8)
    expected[4], expected[5] = 1.0 / 80, -1.0 / 80
    assert grad.flatten().tolist() == pytest.approx(expected.tolist())


def test_gated_kd_on_valid_pixels_is_the_ground_truths_gradient_where_it_passes() -> None:
    """The reason the control exists: where the gate passes, the L1 gradient towards the teacher
    equals the one towards the ground truth (same sign)."""
    _, grad = _kd_gradient("gated")
    batch, _, student = _hand_batch()
    passed = torch.tensor([1, 0, 1, 0, 0, 0], dtype=torch.bool)
    valid_grad = grad.flatten()[:6]
    towards_gt = torch.sign(student - batch["depth"]).flatten()[:6] / 80
    assert torch.equal(valid_grad[passed], towards_gt[passed])
    assert (valid_grad[~passed] == 0).all()


def test_hole_only_kd_touches_no_valid_pixel() -> None:
    """The holes get the gate's hole weight (2 of 6 valid pixels passed: 1/3) towards the
    teacher; every valid pixel gets no gradient at all."""
    loss, grad = _kd_gradient("holes")
    assert (grad.flatten()[:6] == 0).all()
    # holes: student 2.0 vs teacher 1.0 (above) and 9.0 (below)
    assert grad.flatten()[6:].tolist() == pytest.approx([1 / 3 / 80, -1 / 3 / 80])
    assert loss.item() == pytest.approx((1.0 + 7.0) / 3 / 10.0 / 8)


def test_hard_pixel_control_reads_no_ground_truth_outside_its_chosen_pixels() -> None:
    batch, teacher, student = _hand_batch()
    task = DistillationTask(build_model("binaural_attention", base_channels=BASE, max_depth=10.0),
                            _FixedTeacher(teacher), 10.0, IMAGE, schedule="hard_pixels")
    clean = task.kd_terms(student, {}, batch)["kd_depth"]
    batch["depth"] = torch.where(batch["valid"], batch["depth"], torch.full_like(student, math.nan))
    assert task.kd_terms(student, {}, batch)["kd_depth"].item() == clean.item()


def test_random_feature_teacher_is_an_untrained_twin_drawn_from_the_seed() -> None:
    torch.manual_seed(0)
    teacher = build_model("rgb_depth", base_channels=BASE, max_depth=30.0)
    state = torch.random.get_rng_state()
    twin, again, other = (untrained_twin(teacher, seed) for seed in (3, 3, 4))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's stream untouched
    assert twin.config == teacher.config and not twin.training
    weights = lambda m: torch.cat([p.flatten() for p in m.parameters()])  # noqa: E731
    assert torch.equal(weights(twin), weights(again))
    assert not torch.equal(weights(twin), weights(other))
    assert not torch.equal(weights(twin), weights(teacher))
    # The task matches the twin's features and keeps the teacher's depth.
    task = _task(depth_weight=1.0, feature_weight=1.0, feature_levels=["d2"])
    control = _task(depth_weight=1.0, feature_weight=1.0, feature_levels=["d2"],
                    feature_teacher=untrained_twin(task.teacher, 3))
    control.adapters.load_state_dict(task.adapters.state_dict())
    batch = _tiny_batch()
    with torch.no_grad():
        depth, features = task.model(batch["audio"], return_features=True)
        ours, theirs = task.kd_terms(depth, features, batch), control.kd_terms(depth, features, batch)
    assert ours["kd_depth"].item() == theirs["kd_depth"].item()
    assert ours["kd_d2"].item() != pytest.approx(theirs["kd_d2"].item(), rel=1e-3)
