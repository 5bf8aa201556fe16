"""training.engine: exact resume, finite or nothing (loss, gradient, weights, validation), a run
folder locked while it trains, plug-in tasks, the weight EMA, fp16 loss scaling, channels-last and
torch.compile.

Every test but one trains end to end (marked slow); resume refusals are in test_run, the run
folder's checkpoint files in test_saver."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

import evaluate
import train_binaural_attention
import train_rgb_depth
from datasets.sample import RGB
from models import build_model
from tests.conftest import stop_message, train_argv
from training import cli, losses
from training.checkpoint import (
    BEST_CHECKPOINT, LAST_CHECKPOINT, RUN_LOCK, load_checkpoint, non_finite_tensors,
    run_folder_lock,
)
from training.data import build_data
from training.engine import Trainer, fit
from training.run import Run, start_run
from training.tasks import DepthTask, with_total

# What a checkpoint holds; --ema_decay adds EMA_KEYS.
CHECKPOINT_KEYS = {"format_version", "model_name", "model_config", "model_state", "extra_states",
                   "optimizer_state", "scheduler_state", "scaler_state", "epoch", "global_step",
                   "best_score", "best_epoch", "metrics", "history", "rng", "args", "identity"}
EMA_KEYS = {"train_model_state", "ema_updates"}


@pytest.mark.slow
@pytest.mark.parametrize("ema", [[], ["--ema_decay", "0.9"]], ids=["plain", "ema"])
def test_stop_and_resume_equals_uninterrupted_run(data_root: Path, tmp_path: Path,
                                                  ema: List[str]) -> None:
    schedule = ["--scheduler", "cosine", "--warmup_epochs", "0.5", "--mirror_augment",
                "--grad_clip", "1.0", *ema]
    train_rgb_depth.main(train_argv(data_root, tmp_path, "straight", *schedule))
    train_rgb_depth.main(
        train_argv(data_root, tmp_path, "killed", *schedule, "--stop_after_epochs", "1"))
    assert load_checkpoint(tmp_path / "killed" / LAST_CHECKPOINT)["epoch"] == 1
    # "latest": the run written last under --checkpoint_dir, i.e. "killed" (examples preset 5).
    train_rgb_depth.main(["--resume", "latest", "--checkpoint_dir", str(tmp_path),
                          "--num_workers", "0"])

    straight = load_checkpoint(tmp_path / "straight" / LAST_CHECKPOINT)
    resumed = load_checkpoint(tmp_path / "killed" / LAST_CHECKPOINT)
    assert resumed["epoch"] == straight["epoch"] == 2
    assert resumed["global_step"] == straight["global_step"]
    assert set(resumed) == set(straight) == CHECKPOINT_KEYS | (EMA_KEYS if ema else set())
    weights = ("model_state", "train_model_state") if ema else ("model_state",)
    for name in weights:
        for key, value in straight[name].items():
            assert torch.equal(resumed[name][key], value), (name, key)
    if ema:
        assert resumed["ema_updates"] == straight["ema_updates"] == straight["global_step"]
        assert not torch.equal(straight["model_state"]["head.conv.weight"],
                               straight["train_model_state"]["head.conv.weight"])
    for key, state in straight["optimizer_state"]["state"].items():
        for name, value in state.items():
            assert torch.equal(resumed["optimizer_state"]["state"][key][name], value), (key, name)
    assert resumed["scheduler_state"]["last_epoch"] == straight["scheduler_state"]["last_epoch"]
    assert resumed["best_score"] == straight["best_score"]
    assert [r["val"] for r in resumed["history"]] == [r["val"] for r in straight["history"]]


@pytest.mark.slow
def test_the_student_with_the_phase_difference_trains_from_the_cache_with_mirroring(
        data_root: Path, tmp_path: Path) -> None:
    train_binaural_attention.main(train_argv(
        data_root, tmp_path, "ipd", "--nb_epochs", "1", "--attention_levels", "4,5",
        "--audio_format", "spectrogram_ipd", "--input_features", "ild_ipd", "--mirror_augment",
        "--cache_dir", str(tmp_path / "cache")))
    saved = load_checkpoint(tmp_path / "ipd" / LAST_CHECKPOINT)
    assert saved["model_config"]["input_features"] == "ild_ipd"
    # The phase channels are signed: the cache keeps them in its default float16 form.
    assert saved["identity"]["storage"]["forms"] == {}
    metrics = json.loads((tmp_path / "ipd" / "metrics.json").read_text())
    assert math.isfinite(metrics["history"][-1]["val"]["rmse"])


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    training_calls = {"n": 0}
    steps_per_epoch = 2  # 8 training samples, batch 4

    def l1_then_nan(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                    count: losses.Count) -> torch.Tensor:
        """L1 during epoch 1, NaN from the first training step of epoch 2 on."""
        training_calls["n"] += pred.requires_grad
        loss = losses.masked_l1(pred, target, valid, count)
        return loss * float("nan") if training_calls["n"] > steps_per_epoch else loss

    monkeypatch.setitem(losses.CRITERIA, "l1", l1_then_nan)
    with pytest.raises(SystemExit) as error:
        train_rgb_depth.main(train_argv(data_root, tmp_path, "diverges"))
    message = str(error.value.code)
    assert message == ("error: non-finite loss at epoch 2, step 3 (l1=nan, total=nan); stopped, "
                       f"the last good checkpoint is {tmp_path / 'diverges' / LAST_CHECKPOINT} "
                       "(epoch 1)")
    kept = load_checkpoint(tmp_path / "diverges" / LAST_CHECKPOINT)
    assert kept["epoch"] == 1
    weights = [v for v in kept["model_state"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in weights)
    assert load_checkpoint(tmp_path / "diverges" / BEST_CHECKPOINT)["epoch"] == 1


class PoisonedGradient(torch.autograd.Function):
    """Identity forward; backward, a gradient of ``value`` everywhere: NaN (a finite loss with a
    non-finite gradient) or infinity (what an fp16 overflow produces)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, value: float) -> torch.Tensor:
        ctx.value = value
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:
        return torch.full_like(grad, ctx.value), None


def _first_parameter_name() -> str:
    model = build_model("rgb_depth", base_channels=4, max_depth=30.0)
    return next(name for name, _ in model.named_parameters())


# Not slow: the run stops at its first step, before any epoch is trained.
def test_non_finite_gradient_stops_before_the_step(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def l1_with_nan_gradient(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                             count: losses.Count) -> torch.Tensor:
        return losses.masked_l1(PoisonedGradient.apply(pred, float("nan")), target, valid, count)

    monkeypatch.setitem(losses.CRITERIA, "l1", l1_with_nan_gradient)
    message = stop_message(train_argv(data_root, tmp_path, "nan_grad"))
    assert message == (f"error: non-finite gradient at epoch 1, step 1 (first in "
                       f"model.{_first_parameter_name()}; total norm nan); stopped, no checkpoint "
                       "has been written yet")
    assert not list((tmp_path / "nan_grad").glob("*.pth"))


@pytest.mark.slow
def test_non_finite_weight_after_a_step_stops_before_anything_is_saved(
        data_root: Path, tmp_path: Path) -> None:
    steps = {"n": 0}

    def inf_after_second_step(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        """The last step of epoch 1 leaves one weight infinite (loss and gradients were finite)."""
        steps["n"] += 1
        if steps["n"] == 2:
            optimizer.param_groups[0]["params"][0].data.view(-1)[0] = float("inf")

    handle = register_optimizer_step_post_hook(inf_after_second_step)
    try:
        message = stop_message(train_argv(data_root, tmp_path, "inf_weight"))
    finally:
        handle.remove()
    assert message == (f"error: non-finite values after epoch 1 (step 2): model_state."
                       f"{_first_parameter_name()}; stopped, no checkpoint has been written yet")
    assert not list((tmp_path / "inf_weight").glob("*.pth"))


@pytest.mark.slow
def test_non_finite_validation_stops_before_saving(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_in_validation(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                          count: losses.Count) -> torch.Tensor:
        loss = losses.masked_l1(pred, target, valid, count)
        return loss if pred.requires_grad else loss * float("nan")

    monkeypatch.setitem(losses.CRITERIA, "l1", nan_in_validation)
    message = stop_message(train_argv(data_root, tmp_path, "nan_val"))
    assert message == ("error: non-finite validation after epoch 1 (l1=nan, total=nan); "
                       "stopped, no checkpoint has been written yet")
    assert not list((tmp_path / "nan_val").glob("*.pth"))


@pytest.mark.slow
def test_diverging_learning_rate_stops_with_one_line_and_nothing_non_finite_on_disk(
        data_root: Path, tmp_path: Path) -> None:
    """The issue's repro: the binaural model at --learning_rate 1e6."""
    with pytest.raises(SystemExit) as error:
        train_binaural_attention.main(train_argv(data_root, tmp_path, "lr", "--nb_epochs", "3",
                                                 "--learning_rate", "1e6"))
    message = str(error.value.code)
    assert message.startswith("error: non-finite ") and "\n" not in message
    for path in (tmp_path / "lr").glob("*.pth"):
        assert non_finite_tensors(torch.load(path, weights_only=True)) == [], path


@pytest.mark.slow
def test_a_run_folder_being_trained_is_not_touched_by_a_second_run(
        data_root: Path, tmp_path: Path) -> None:
    argv = train_argv(data_root, tmp_path, "run", "--nb_epochs", "1")
    train_rgb_depth.main(argv)
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != RUN_LOCK}
    # Held as a training process holds it (another open of the file: flock then conflicts
    # within one process as between two).
    with run_folder_lock(run):
        message = stop_message([*argv, "--overwrite"])
        assert message == (f"error: {run} is being written by another training process (pid "
                           f"{os.getpid()}): wait for it, stop it, or choose another "
                           "--experiment_name")
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != RUN_LOCK} == before
    train_rgb_depth.main([*argv, "--overwrite"])  # released: the folder is free again


class ProbeTask(DepthTask):
    """A task with a trainable side module and a frozen one, as a distillation task has."""

    def __init__(self, model: nn.Module, max_depth: float) -> None:
        super().__init__(model, RGB, max_depth)
        self.adapter = nn.Conv2d(1, 1, kernel_size=1)
        self.frozen = build_model("rgb_depth", base_channels=4, max_depth=max_depth)
        self.frozen.requires_grad_(False)
        self.frozen_modes: List[bool] = []

    def forward(self, batch: Dict[str, Any]) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        depth = self.model(batch[RGB])
        with torch.no_grad():
            reference = self.frozen(batch[RGB])
        self.frozen_modes.append(self.frozen.training)
        terms = self.supervised_losses(depth, batch)
        terms["match"] = 0.1 * (self.adapter(depth) - reference).abs().mean() / self.max_depth
        return depth, with_total(terms)


@pytest.mark.slow
def test_plug_in_task_trains_extras_and_leaves_frozen_modules_alone(
        data_root: Path, tmp_path: Path) -> None:
    parser = cli.build_parser("teacher", None)
    argv = train_argv(data_root, tmp_path, "probe", "--nb_epochs", "1")
    run = start_run(parser, argv)
    data = build_data(run.args, run.context, use_rgb=True)
    model = build_model("rgb_depth", base_channels=4, max_depth=data.max_depth)
    task = ProbeTask(model, data.max_depth)
    frozen_before = {k: v.clone() for k, v in task.frozen.state_dict().items()}
    adapter_before = task.adapter.weight.detach().clone()
    fit(task, data, run)

    saved = load_checkpoint(tmp_path / "probe" / LAST_CHECKPOINT)
    assert set(saved["extra_states"]) == {"adapter"}  # the frozen module is not stored
    assert not torch.equal(saved["extra_states"]["adapter"]["weight"], adapter_before)
    for key, value in task.frozen.state_dict().items():  # BatchNorm statistics included
        assert torch.equal(value, frozen_before[key]), key
    assert not any(task.frozen_modes)  # eval mode also while the rest trained
    history = saved["history"][0]
    assert set(history["train"]) == {"l1", "match", "total"}
    train = history["train"]
    assert train["total"] == pytest.approx(train["l1"] + train["match"])


@pytest.mark.slow
def test_fp16_loss_scaling_on_cpu_skips_steps_with_infinite_gradients(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under --amp fp16 an infinite gradient is the scaler's business: the step is skipped and the
    scale halved (65536 -> 16384 after the epoch's 2 steps), the run goes on and saves."""
    def l1_with_inf_gradient(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                             count: losses.Count) -> torch.Tensor:
        if pred.requires_grad:
            pred = PoisonedGradient.apply(pred, float("inf"))
        return losses.masked_l1(pred, target, valid, count)

    monkeypatch.setitem(losses.CRITERIA, "l1", l1_with_inf_gradient)
    optimizer_steps = {"n": 0}
    handle = register_optimizer_step_post_hook(
        lambda *_: optimizer_steps.__setitem__("n", optimizer_steps["n"] + 1))
    try:
        train_rgb_depth.main(train_argv(data_root, tmp_path, "fp16", "--nb_epochs", "1",
                                        "--amp", "fp16", "--grad_clip", "1.0"))
    finally:
        handle.remove()
    saved = load_checkpoint(tmp_path / "fp16" / LAST_CHECKPOINT)
    assert saved["global_step"] == 2 and optimizer_steps["n"] == 0
    assert saved["scaler_state"]["scale"] == 65536.0 * 0.5 ** 2
    assert saved["history"][0]["train"]["l1"] > 0  # the loss itself was finite


def _task_for(argv: List[str]) -> Tuple[Run, Any, DepthTask]:
    """What train_rgb_depth.main builds before fitting: (run, data, task)."""
    run = start_run(cli.build_parser("teacher", None), argv)
    data = build_data(run.args, run.context, use_rgb=True)
    return run, data, DepthTask(build_model("rgb_depth", **run.model_config()), RGB, data.max_depth)


def _fit_directly(data_root: Path, tmp_path: Path, name: str, *extra: str) -> Tuple[DepthTask,
                                                                                   Dict[str, Any]]:
    """What train_rgb_depth.main does, keeping the task to look at."""
    run, data, task = _task_for(train_argv(data_root, tmp_path, name, "--nb_epochs", "1", *extra))
    fit(task, data, run)
    return task, load_checkpoint(tmp_path / name / LAST_CHECKPOINT)


def _copy(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in state.items()}


@pytest.mark.slow
def test_the_ema_is_validated_saved_and_evaluated_and_averages_the_model_only(
        data_root: Path, tmp_path: Path) -> None:
    """A task with a trainable adapter, --ema_decay 0.5, one epoch of 2 steps: the saved model is
    the EMA of the weights after each step, by hand (decay 0.1, then 2/11: the warm-up); the
    validation, best_model.pth and evaluate.py all use it; the trained weights and the adapter
    are saved as trained."""
    argv = train_argv(data_root, tmp_path, "ema", "--nb_epochs", "1", "--ema_decay", "0.5",
                      "--learning_rate", "0.01")
    run = start_run(cli.build_parser("teacher", None), argv)
    data = build_data(run.args, run.context, use_rgb=True)
    task = ProbeTask(build_model("rgb_depth", **run.model_config()), data.max_depth)
    weights = [_copy(task.model.state_dict())]
    handle = register_optimizer_step_post_hook(
        lambda *_: weights.append(_copy(task.model.state_dict())))
    try:
        fit(task, data, run)
    finally:
        handle.remove()
    saved = load_checkpoint(tmp_path / "ema" / LAST_CHECKPOINT)
    assert saved["global_step"] == saved["ema_updates"] == 2 and len(weights) == 3
    initial, first, second = weights
    for key, value in saved["model_state"].items():
        if value.is_floating_point():  # parameters and BatchNorm statistics
            after_first = 0.1 * initial[key] + 0.9 * first[key]
            torch.testing.assert_close(value, (2 * after_first + 9 * second[key]) / 11, msg=key)
        else:
            assert torch.equal(value, second[key]), key  # num_batches_tracked: copied
    for key, value in task.model.state_dict().items():
        assert torch.equal(saved["train_model_state"][key], value), key
    assert torch.equal(saved["extra_states"]["adapter"]["weight"], task.adapter.weight)

    best = tmp_path / "ema" / BEST_CHECKPOINT
    for key, value in saved["model_state"].items():
        assert torch.equal(load_checkpoint(best)["model_state"][key], value), key
    validated = saved["history"][0]["val"]["rmse"]
    assert saved["best_score"] == validated
    evaluated = evaluate.evaluate_checkpoint(best, split="val", out_dir=tmp_path / "eval")
    assert evaluated["rmse"] == pytest.approx(validated, rel=1e-6)
    trained = tmp_path / "trained.pth"  # the same checkpoint holding the trained weights
    torch.save(dict(saved, model_state=saved["train_model_state"]), trained)
    evaluated = evaluate.evaluate_checkpoint(trained, split="val", out_dir=tmp_path / "eval")
    assert evaluated["rmse"] != pytest.approx(validated, rel=1e-4)


@pytest.mark.slow
def test_a_step_skipped_by_fp16_loss_scaling_does_not_update_the_ema(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first of two steps overflows: one EMA update (decay 0.1), after the second step."""
    training_calls = {"n": 0}

    def l1_with_inf_gradient_first(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                                   count: losses.Count) -> torch.Tensor:
        if pred.requires_grad:
            training_calls["n"] += 1
            if training_calls["n"] == 1:
                pred = PoisonedGradient.apply(pred, float("inf"))
        return losses.masked_l1(pred, target, valid, count)

    monkeypatch.setitem(losses.CRITERIA, "l1", l1_with_inf_gradient_first)
    run, data, task = _task_for(train_argv(data_root, tmp_path, "fp16", "--nb_epochs", "1",
                                           "--amp", "fp16", "--ema_decay", "0.5"))
    initial = _copy(task.model.state_dict())
    fit(task, data, run)
    saved = load_checkpoint(tmp_path / "fp16" / LAST_CHECKPOINT)
    assert saved["global_step"] == 2 and saved["ema_updates"] == 1
    assert saved["scaler_state"]["scale"] == 65536.0 * 0.5  # one skipped step
    trained = saved["train_model_state"]
    for key, value in saved["model_state"].items():
        expected = 0.1 * initial[key] + 0.9 * trained[key] if value.is_floating_point() else (
            trained[key])
        torch.testing.assert_close(value, expected, msg=key)


@pytest.mark.slow
def test_resume_starts_continues_or_drops_the_ema(
        data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train_rgb_depth.main(train_argv(data_root, tmp_path, "run", "--nb_epochs", "1"))
    run_dir = tmp_path / "run"
    last = run_dir / LAST_CHECKPOINT
    resume = ["--resume", str(run_dir), "--num_workers", "0"]

    def trainer(*flags: str) -> Trainer:
        """The resumed run's trainer, as built before its first epoch (nothing is written)."""
        return Trainer(*reversed(_task_for([*resume, *flags])))  # type: ignore[arg-type]

    def holds(state: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor]) -> bool:
        return all(torch.equal(state[key], value) for key, value in expected.items())

    plain = load_checkpoint(last)
    capsys.readouterr()
    started = trainer("--ema_decay", "0.5")
    assert capsys.readouterr().out == (
        f"--ema_decay 0.5: {last} holds no weight average; one starts from its weights\n")
    assert started.ema is not None and started.ema.updates == 0
    assert holds(started.ema.state_dict(), plain["model_state"])
    assert holds(started.task.model.state_dict(), plain["model_state"])

    train_rgb_depth.main([*resume, "--nb_epochs", "2", "--ema_decay", "0.5"])
    averaged = load_checkpoint(last)
    assert averaged["global_step"] == 4 and averaged["ema_updates"] == 2  # epoch 2's steps
    continued = trainer()  # the run's own --ema_decay 0.5
    assert continued.ema is not None and continued.ema.updates == 2
    assert continued.ema.decay == 0.5
    assert holds(continued.ema.state_dict(), averaged["model_state"])
    assert holds(continued.task.model.state_dict(), averaged["train_model_state"])

    capsys.readouterr()
    dropped = trainer("--ema_decay", "0")
    assert capsys.readouterr().out == (f"--ema_decay 0: training on from {last}'s training "
                                       "weights; its weight average is dropped\n")
    assert dropped.ema is None
    assert holds(dropped.task.model.state_dict(), averaged["train_model_state"])


@pytest.mark.slow
def test_channels_last_trains_like_the_default_layout(data_root: Path, tmp_path: Path) -> None:
    # SGD: its step is proportional to the gradient, so rounding differences of the two layouts'
    # kernels stay rounding-sized (Adam's first step is about lr * sign(g), whatever |g|).
    sgd = ("--optimizer", "sgd", "--learning_rate", "0.1")
    task, channels_last = _fit_directly(data_root, tmp_path, "cl", *sgd, "--channels_last")
    _, default = _fit_directly(data_root, tmp_path, "default", *sgd)
    conv = task.model.encoder.stages[0].block[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert channels_last["history"][0]["train"] == pytest.approx(
        default["history"][0]["train"], rel=1e-4)
    for key, value in default["model_state"].items():
        torch.testing.assert_close(channels_last["model_state"][key], value, rtol=1e-4,
                                   atol=1e-5)


@pytest.mark.slow
def test_compile_compiles_the_network_in_place(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: List[Any] = []

    def no_op_compile(function: Any, *args: Any, **kwargs: Any) -> Any:
        """Records what would be compiled; returns it unchanged (inductor takes minutes)."""
        compiled.append(function)
        return function

    monkeypatch.setattr(torch, "compile", no_op_compile)
    task, saved = _fit_directly(data_root, tmp_path, "compiled", "--compile")
    assert [getattr(f, "__self__", None) for f in compiled] == [task.model]
    assert saved["model_state"].keys() == task.model.state_dict().keys()
    assert not any(key.startswith("_orig_mod") for key in saved["model_state"])
