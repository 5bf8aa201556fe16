"""The shared engine: exact resume, finite or nothing (loss, gradient, weights, validation), wrong
model or changed settings on resume, clean run folders (--overwrite, leftover temporaries, best
model repair), plug-in tasks, the weight EMA, schedules, mirror augmentation, W&B."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

import evaluate
import train_binaural_attention
import train_rgb_depth
from datasets.cache import CACHE_FORMAT_VERSION
from datasets.sample import AUDIO, DEPTH, RGB, VALID
from models import build_model
from common.errors import UsageError
from training import cli, losses
from training.checkpoint import (
    BEST_CHECKPOINT, LAST_CHECKPOINT, RUN_LOCK, load_checkpoint, non_finite_tensors,
    run_folder_lock,
)
from training.data import build_data, mirror, mirror_batch
from training.device import amp_dtype, check_device_flags, configure_cuda_kernels
from training.engine import Trainer, fit
from training.optim import lr_factor
from training.run import Run, start_run
from training.tasks import DepthTask, MirrorAveraged, with_total
from training.tracking import Tracker

COUNTS = {"train": 4, "val": 2, "test": 1}  # per location; 2 locations
# What a checkpoint holds; --ema_decay adds EMA_KEYS.
CHECKPOINT_KEYS = {"format_version", "model_name", "model_config", "model_state", "extra_states",
                   "optimizer_state", "scheduler_state", "scaler_state", "epoch", "global_step",
                   "best_score", "best_epoch", "metrics", "history", "rng", "args", "identity"}
EMA_KEYS = {"train_model_state", "ema_updates"}


@pytest.fixture
def data_root(tmp_path: Path, write_v2_tree: Any) -> Path:
    """A tiny V2 tree of noise: 2 locations x (4 train, 2 val, 1 test), 32x32."""
    return write_v2_tree(tmp_path / "bv2", locations=("Loc_B", "Loc_A"), counts=COUNTS,
                         depth_shape=(32, 32))


@pytest.fixture(autouse=True)
def one_thread_and_restored_determinism() -> Any:
    """One intra-op thread (tiny models on a shared 2-core CPU run far faster without thread
    contention), and --deterministic's process-wide flag reset afterwards."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


def train_argv(root: Path, checkpoint_dir: Path, name: str, *extra: str) -> List[str]:
    return ["--dataset", "batvisionv2", "--data_root", str(root), "--image_size", "32",
            "--base_channels", "4", "--batch_size", "4", "--nb_epochs", "2", "--num_workers", "0",
            "--checkpoint_dir", str(checkpoint_dir), "--experiment_name", name,
            "--num_val_images", "0", "--deterministic", *extra]


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


def test_resume_with_another_model_is_refused_and_writes_nothing(
        data_root: Path, tmp_path: Path) -> None:
    train_rgb_depth.main(train_argv(data_root, tmp_path, "teacher", "--nb_epochs", "1"))
    run = tmp_path / "teacher"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(SystemExit) as error:
        train_binaural_attention.main(["--resume", str(run), "--num_workers", "0"])
    message = str(error.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert "train_rgb_depth.py" in message and "not train_binaural_attention.py" in message
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    # A fresh run aimed at the same folder, and a contradicting model flag, are refused too.
    for argv in (train_argv(data_root, tmp_path, "teacher", "--nb_epochs", "1"),
                 ["--resume", str(run), "--base_channels", "8"]):
        with pytest.raises(SystemExit) as error:
            train_rgb_depth.main(argv)
        assert str(error.value.code).startswith("error: ")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    training_calls = {"n": 0}
    steps_per_epoch = 2  # 8 training samples, batch 4

    def l1_then_nan(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """L1 during epoch 1, NaN from the first training step of epoch 2 on."""
        training_calls["n"] += pred.requires_grad
        loss = losses.masked_l1(pred, target, valid)
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


def _stop_message(argv: List[str]) -> str:
    with pytest.raises(SystemExit) as error:
        train_rgb_depth.main(argv)
    message = str(error.value.code)
    assert "\n" not in message
    return message


def test_non_finite_gradient_stops_before_the_step(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def l1_with_nan_gradient(pred: torch.Tensor, target: torch.Tensor,
                             valid: torch.Tensor) -> torch.Tensor:
        return losses.masked_l1(PoisonedGradient.apply(pred, float("nan")), target, valid)

    monkeypatch.setitem(losses.CRITERIA, "l1", l1_with_nan_gradient)
    message = _stop_message(train_argv(data_root, tmp_path, "nan_grad"))
    assert message == (f"error: non-finite gradient at epoch 1, step 1 (first in "
                       f"model.{_first_parameter_name()}; total norm nan); stopped, no checkpoint "
                       "has been written yet")
    assert not list((tmp_path / "nan_grad").glob("*.pth"))


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
        message = _stop_message(train_argv(data_root, tmp_path, "inf_weight"))
    finally:
        handle.remove()
    assert message == (f"error: non-finite values after epoch 1 (step 2): model_state."
                       f"{_first_parameter_name()}; stopped, no checkpoint has been written yet")
    assert not list((tmp_path / "inf_weight").glob("*.pth"))


def test_non_finite_validation_stops_before_saving(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def nan_in_validation(pred: torch.Tensor, target: torch.Tensor,
                          valid: torch.Tensor) -> torch.Tensor:
        loss = losses.masked_l1(pred, target, valid)
        return loss if pred.requires_grad else loss * float("nan")

    monkeypatch.setitem(losses.CRITERIA, "l1", nan_in_validation)
    message = _stop_message(train_argv(data_root, tmp_path, "nan_val"))
    assert message == ("error: non-finite validation after epoch 1 (l1=nan, total=nan); "
                       "stopped, no checkpoint has been written yet")
    assert not list((tmp_path / "nan_val").glob("*.pth"))


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


def test_resume_refuses_other_data_settings_and_non_finite_checkpoints(
        data_root: Path, tmp_path: Path) -> None:
    train_rgb_depth.main(train_argv(data_root, tmp_path, "run", "--nb_epochs", "1"))
    run = tmp_path / "run"
    last = run / LAST_CHECKPOINT
    saved = load_checkpoint(last)
    config = json.loads((run / "config.json").read_text())
    assert config["identity"] == saved["identity"]
    assert saved["identity"]["kind"] == "teacher" and saved["identity"]["model"] == "rgb_depth"
    assert saved["identity"]["settings"]["model"] == {"base_channels": 4}
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    message = _stop_message(["--resume", str(run), "--nb_epochs", "2", "--num_workers", "0",
                             "--mirror_augment"])
    assert message == (f"error: {last}: cannot resume: --mirror_augment: False -> True (start a "
                       "new run or use --overwrite)")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    # The cache's 8-bit spectrograms are other inputs than the files' float32 ones.
    message = _stop_message(["--resume", str(run), "--nb_epochs", "2", "--num_workers", "0",
                             "--cache_dir", str(tmp_path / "cache")])
    assert message == (f"error: {last}: cannot resume: inputs: read from the files -> cache "
                       f"format {CACHE_FORMAT_VERSION} (audio scaled-uint8) (start a new run or "
                       "use --overwrite)")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    saved["model_state"]["head.conv.bias"] = saved["model_state"]["head.conv.bias"] * float("nan")
    torch.save(saved, last)  # as a diverged run of an older version could have written it
    message = _stop_message(["--resume", str(run), "--nb_epochs", "2", "--num_workers", "0"])
    assert message == (f"error: {last}: holds non-finite values (model_state.head.conv.bias): "
                       "the run had diverged; use a checkpoint from before")


def test_overwrite_clears_the_previous_run_and_only_it(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    argv = train_argv(data_root, tmp_path, "run", "--nb_epochs", "1", "--num_val_images", "1")
    train_rgb_depth.main(argv)
    run = tmp_path / "run"
    (run / "eval_test").mkdir()
    for name in ("eval_test/metrics.json", "eval_test/per_image.csv", "notes.txt",
                 ".last_model.pth.5f3a9c.tmp", ".notes.txt.1.tmp"):
        (run / name).write_text("x")
    capsys.readouterr()

    # The new run stops at its first step: nothing of the old run may be left beside it.
    monkeypatch.setitem(losses.CRITERIA, "l1", lambda pred, *_: pred.sum() * float("nan"))
    _stop_message([*argv, "--overwrite"])
    assert capsys.readouterr().out.splitlines()[0] == (
        "--overwrite: removed the previous run's best_model.pth, config.json, config.yaml, "
        "eval_test/metrics.json, eval_test/per_image.csv, last_model.pth, metrics.json, "
        f"val_best.png, val_last.png from {run}")
    assert sorted(p.name for p in run.iterdir()) == [
        ".notes.txt.1.tmp", RUN_LOCK, "config.json", "config.yaml", "notes.txt"]


def test_a_run_folder_being_trained_is_not_touched_by_a_second_run(
        data_root: Path, tmp_path: Path) -> None:
    argv = train_argv(data_root, tmp_path, "run", "--nb_epochs", "1")
    train_rgb_depth.main(argv)
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != RUN_LOCK}
    # Held as a training process holds it (another open of the file: flock then conflicts
    # within one process as between two).
    with run_folder_lock(run):
        message = _stop_message([*argv, "--overwrite"])
        assert message == (f"error: {run} is being written by another training process (pid "
                           f"{os.getpid()}): wait for it, stop it, or choose another "
                           "--experiment_name")
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != RUN_LOCK} == before
    train_rgb_depth.main([*argv, "--overwrite"])  # released: the folder is free again


def test_resume_repairs_a_best_model_cut_short_and_drops_a_stale_one(
        data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train_rgb_depth.main(train_argv(data_root, tmp_path, "run", "--nb_epochs", "1"))
    run = tmp_path / "run"
    best, last = run / BEST_CHECKPOINT, run / LAST_CHECKPOINT
    resume = ["--resume", str(run), "--num_workers", "0"]

    # Killed between the two saves of epoch 1: last_model.pth names epoch 1 as best, and
    # best_model.pth is missing (or older); epoch 1 is last_model.pth itself, so it is rebuilt.
    best.unlink()
    (run / ".best_model.pth.0c1d2e.tmp").write_bytes(b"half a checkpoint")
    capsys.readouterr()
    # --nb_epochs 1 reached: prepares the folder, trains nothing.
    train_rgb_depth.main([*resume, "--num_val_images", "1"])
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{best} did not hold the best epoch 1 that {last} records: rewritten from it")
    rebuilt, record = load_checkpoint(best), load_checkpoint(last)
    assert rebuilt["epoch"] == 1 and rebuilt["history"] == record["history"]
    for key, value in record["model_state"].items():
        assert torch.equal(rebuilt["model_state"][key], value), key
    assert not list(run.glob(".*.tmp"))
    assert (run / "val_best.png").is_file()  # drawn by the rebuilt best model

    # A record whose best epoch (1) is not its last (2), beside a best_model.pth of another run:
    # that epoch cannot be rebuilt, so the stale file goes. (No "identity": a checkpoint of an
    # older version, which still resumes.)
    other = dict(record, history=[dict(record["history"][0], seconds=-1.0)])
    torch.save(other, best)
    record.pop("identity")
    record.update(epoch=2, history=[*record["history"], dict(record["history"][0], epoch=2)])
    torch.save(record, last)
    capsys.readouterr()
    train_rgb_depth.main([*resume, "--nb_epochs", "2"])
    assert capsys.readouterr().out.splitlines()[0] == (
        f"warning: {best} does not hold the best epoch that {last} records (epoch 1, val rmse "
        f"{record['best_score']:.4f}), which cannot be rebuilt; the stale file is deleted; it is "
        "written again at the next new best")
    assert not best.exists() and not (run / "val_best.png").exists()


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


def test_amp_modes_and_flags_the_device_cannot_honour(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype("none", cpu) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16  # honoured on CPU too
    assert amp_dtype("fp16", cpu) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_, **__: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Tesla V100")
    with pytest.raises(UsageError) as error:
        amp_dtype("bf16", cuda)
    assert str(error.value) == "--amp bf16: Tesla V100 has no bfloat16 support; use --amp fp16"
    assert amp_dtype("fp16", cuda) is torch.float16

    args = argparse.Namespace(amp="none", sync_bn=True, compile=False)
    with pytest.raises(UsageError) as error:
        check_device_flags(args, cpu)
    assert str(error.value) == ("--sync_bn needs CUDA (SyncBatchNorm runs on GPUs only); this "
                                "run is on cpu")
    args.sync_bn, args.compile = False, True
    check_device_flags(args, cpu)
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(UsageError, match="^--compile: torch.compile is not supported"):
        check_device_flags(args, cpu)


def test_a_flag_the_device_cannot_honour_stops_the_script_with_one_line(
        data_root: Path, tmp_path: Path) -> None:
    message = _stop_message(train_argv(data_root, tmp_path, "sync", "--sync_bn"))
    assert message == ("error: --sync_bn needs CUDA (SyncBatchNorm runs on GPUs only); this run "
                       "is on cpu")
    assert not (tmp_path / "sync").exists()


def test_cuda_kernel_settings_only_on_cuda_and_autotuning_only_when_not_deterministic() -> None:
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.benchmark = False
        configure_cuda_kernels(torch.device("cpu"), deterministic=False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.benchmark
        configure_cuda_kernels(torch.device("cuda"), deterministic=True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cudnn.benchmark
        configure_cuda_kernels(torch.device("cuda"), deterministic=False)
        assert torch.backends.cudnn.benchmark
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = flags


def test_fp16_loss_scaling_on_cpu_skips_steps_with_infinite_gradients(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under --amp fp16 an infinite gradient is the scaler's business: the step is skipped and the
    scale halved (65536 -> 16384 after the epoch's 2 steps), the run goes on and saves."""
    def l1_with_inf_gradient(pred: torch.Tensor, target: torch.Tensor,
                             valid: torch.Tensor) -> torch.Tensor:
        if pred.requires_grad:
            pred = PoisonedGradient.apply(pred, float("inf"))
        return losses.masked_l1(pred, target, valid)

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


def test_a_step_skipped_by_fp16_loss_scaling_does_not_update_the_ema(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first of two steps overflows: one EMA update (decay 0.1), after the second step."""
    training_calls = {"n": 0}

    def l1_with_inf_gradient_first(pred: torch.Tensor, target: torch.Tensor,
                                   valid: torch.Tensor) -> torch.Tensor:
        if pred.requires_grad:
            training_calls["n"] += 1
            if training_calls["n"] == 1:
                pred = PoisonedGradient.apply(pred, float("inf"))
        return losses.masked_l1(pred, target, valid)

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


def test_learning_rate_schedules_by_hand() -> None:
    args = argparse.Namespace(nb_epochs=4, warmup_epochs=1.0, scheduler="cosine", step_size=2,
                              step_gamma=0.5)
    factor = lr_factor(args, steps_per_epoch=10)  # 40 steps, 10 of warm-up
    assert [factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert factor(10) == pytest.approx(1.0)
    assert factor(25) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert factor(39) == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))
    args.scheduler, args.warmup_epochs = "step", 0.0
    factor = lr_factor(args, steps_per_epoch=10)
    assert [factor(s) for s in (0, 19, 20, 39)] == pytest.approx([1.0, 1.0, 0.5, 0.5])


def test_mirror_flips_images_and_swaps_ears_only() -> None:
    generator = torch.Generator().manual_seed(0)
    batch = {DEPTH: torch.rand(2, 1, 4, 6, generator=generator),
             RGB: torch.rand(2, 3, 4, 6, generator=generator),
             AUDIO: torch.rand(2, 2, 5, 7, generator=generator), "meta": {"index": [0, 1]}}
    batch[VALID] = batch[DEPTH] > 0.5
    out = mirror_batch(batch, torch.tensor([True, False]))
    for key in (DEPTH, VALID, RGB):
        assert torch.equal(out[key][0], batch[key][0].flip(-1)), key
        assert torch.equal(out[key][1], batch[key][1]), key
    # The spectrogram's axes are frequency x time: the ears swap, the time axis is untouched.
    assert torch.equal(out[AUDIO][0, 0], batch[AUDIO][0, 1])
    assert torch.equal(out[AUDIO][0, 1], batch[AUDIO][0, 0])
    assert torch.equal(out[AUDIO][1], batch[AUDIO][1])
    assert out["meta"] is batch["meta"]


class FakeWandbRun:
    def __init__(self) -> None:
        self.logged: List[Dict[str, Any]] = []

    def log(self, values: Dict[str, Any], step: Optional[int] = None) -> None:
        self.logged.append(values)

    def finish(self) -> None:
        pass


def test_wandb_only_on_request_and_offline_without_a_key(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without --use_wandb, training must not even import it (None in sys.modules fails imports).
    monkeypatch.setitem(sys.modules, "wandb", None)
    train_rgb_depth.main(train_argv(data_root, tmp_path, "no_wandb", "--nb_epochs", "1"))

    for variable in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a wandb login either
    inits: List[Dict[str, Any]] = []
    run = FakeWandbRun()
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: inits.append(kwargs) or run  # type: ignore[attr-defined]
    fake.errors = types.SimpleNamespace(CommError=ConnectionError)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    tracker = Tracker(tmp_path / "run", True, {"valid_threshold": 0.0}, use_wandb=True,
                      run_name="exp", config={"seed": 0})
    assert os.environ["WANDB_MODE"] == "offline"
    assert inits[0]["id"] == inits[0]["name"] == "exp" and inits[0]["config"] == {"seed": 0}
    record = {"epoch": 1, "global_step": 5, "lr": 1e-3, "train": {"l1": 0.5, "total": 0.5},
              "val": {"rmse": 1.0, "abs_rel": None}, "val_loss": {}}
    (tmp_path / "run").mkdir()
    tracker.log_epoch([record], {"epoch": 1, "rmse": 1.0})
    assert run.logged == [
        {"epoch": 1, "lr": 1e-3, "train/l1": 0.5, "train/total": 0.5, "val/rmse": 1.0}]


@pytest.mark.parametrize("name, size, input_key, channels", [
    ("rgb_depth", {"base_channels": 4}, RGB, 3),
    ("binaural_attention", {"base_channels": 4}, AUDIO, 2),
    ("official_unet", {"ngf": 4, "num_downs": 5}, AUDIO, 2)])
def test_mirror_averaged_predictions_are_exactly_mirror_symmetric(
        name: str, size: Dict[str, int], input_key: str, channels: int) -> None:
    """Mirroring the input mirrors the averaged prediction, whatever the model learnt, and the
    average is the two passes' mean."""
    torch.manual_seed(0)
    model = build_model(name, **size).eval()
    averaged = MirrorAveraged(model, input_key)
    x = torch.rand(2, channels, 32, 32)
    mirrored = mirror(x, input_key)
    with torch.no_grad():
        out = averaged(x)
        assert torch.allclose(averaged(mirrored), mirror(out, DEPTH), atol=1e-6)
        assert torch.allclose(out, (model(x) + model(mirrored).flip(-1)) / 2, atol=1e-6)
        assert not torch.allclose(out, model(x), atol=1e-4)   # not a symmetric model already
