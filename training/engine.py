"""The training engine: one fit / validate loop under every training script.

It trains a :class:`training.tasks.Task` (what one step computes) for a
:class:`training.run.Run` (arguments, device, run folder) on :class:`training.data.Data`.

What ``fit`` guarantees: AMP through ``torch.autocast`` (``--amp bf16``, or ``fp16`` with a
``torch.amp.GradScaler``; on CPU too, so both paths are tested there), gradient clipping,
``--channels_last`` and ``--compile``, TF32 and cuDNN autotuning on CUDA
(:func:`training.device.configure_cuda_kernels`), batches copied to the device without blocking (from pinned
memory on CUDA), DDP under torchrun (rank 0 logs and writes; metrics are reduced over ranks), a
learning-rate
schedule stepped per batch and built for the whole ``--nb_epochs`` horizon (also when the run is
cut short with ``--stop_after_epochs``), ``last_model.pth`` after every epoch and
``best_model.pth`` at each new best validation RMSE, and exact resume: with ``--deterministic``
on CPU, stopping after epoch k and resuming gives bit-identical weights to an uninterrupted run.

A flag the device cannot honour (:func:`training.device.check_device_flags`) is a one-line error.

Weight averaging (``--ema_decay`` > 0): a :class:`training.ema.WeightEma` of ``task.model`` only
(parameters and BatchNorm statistics; not the other trainable children, e.g. distillation
adapters) is updated after every optimizer step that is taken (a step that fp16 loss scaling
skips is not), with the decay warm-up documented there. The average is what the run validates,
draws, selects ``best_model.pth`` by and saves as the checkpoint's ``model_state``; the trained
weights are saved beside it as ``train_model_state`` with the update count ``ema_updates``, and a
resumed run continues both exactly. Under torchrun every rank keeps the same average (rank 0's
averaged BatchNorm statistics are given to all before validating). Resuming a run without an
average under ``--ema_decay`` starts one from the resumed weights; resuming with
``--ema_decay 0`` trains on from ``train_model_state`` and drops the average.

Finite or nothing: every step checks that the loss terms and the total gradient norm are finite
before the optimizer step (under fp16 loss scaling an infinite gradient is the scaler's cue to
skip the step and lower the scale, not an error); every epoch checks the weights, buffers and
optimizer state before validating, and the validation losses and metrics before saving. The
first non-finite value stops the run with one line saying where it was seen and which checkpoint
is the last good one; nothing non-finite is ever written
(:func:`training.checkpoint.save_checkpoint` refuses it too).

The run folder's checkpoints are kept by :class:`training.saver.CheckpointSaver`. The run
identity (:mod:`training.identity`) goes into ``config.json`` and every checkpoint; a resume that
changes the data, the kind of run or the distillation settings is refused.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import default_collate

from common.errors import UsageError
from datasets.errors import DataError
from datasets.sample import DEPTH
from training.checkpoint import (
    FORMAT_VERSION, VAL_LAST_PICTURE, Checkpoint, capture_rng_state, check_finite,
    describe_names, non_finite_tensors, restore_rng_state, run_folder_lock, training_weights,
)
from training.data import Data, mirror_batch, mirror_flags, to_device
from training.device import (
    DistContext, amp_dtype, autocast, check_device_flags, configure_cuda_kernels, sum_over_ranks,
)
from training.ema import WeightEma, resumed_ema, swapped_weights
from training.identity import resume_differences
from training.metrics import DepthMetrics, format_metrics
from training.optim import build_optimizer, lr_factor
from training.run import Run, write_run_config
from training.saver import CheckpointSaver
from training.tasks import TOTAL, Task, set_train_mode, trainable_children
from training.tracking import Tracker, progress, save_validation_picture
from training.validation import LossMeans, validate


def _sync_buffers(task: Task, ema: Optional[WeightEma], context: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics) and, with an EMA, rank 0's
    averages of them: the ones rank 0 saves."""
    if context.distributed:
        for buffer in [*task.buffers(), *(ema.buffers() if ema is not None else [])]:
            dist.broadcast(buffer, src=0)


@dataclass
class TrainState:
    """Progress that a checkpoint carries besides the weights and optimiser state."""

    epoch: int = 0
    global_step: int = 0
    best_score: float = math.inf
    best_epoch: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)


class Trainer:
    """The loop behind :func:`fit`: builds the optimisation state, restores a resumed run, then
    alternates :meth:`train_epoch` and :meth:`end_epoch` (validate, save, log)."""

    def __init__(self, task: Task, data: Data, run: Run) -> None:
        """Set the run up; nothing is written yet.

        Raises:
            UsageError: a flag the device cannot honour, or resuming a run whose data, kind or
                distillation settings differ.
            DataError: the resumed checkpoint holds non-finite values or lacks a task module.
        """
        self.data, self.run, self.args = data, run, run.args
        self.context, self.device = run.context, run.device
        check_device_flags(self.args, self.device)
        configure_cuda_kernels(self.device, self.args.deterministic)
        self.identity = run.identity(data, task.teacher_fingerprint)
        self._check_resumable()
        self.task = task = self._placed(task)
        named = [(name, p) for name, p in task.named_parameters() if p.requires_grad]
        self.parameter_names = [name for name, _ in named]
        self.parameters = [p for _, p in named]
        self.optimizer = build_optimizer(self.args, self.parameters)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(self.args, len(data.train_loader)))
        self.autocast_dtype = amp_dtype(self.args.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.autocast_dtype == torch.float16)
        self.state = self._restore() if run.checkpoint else TrainState()
        self.saver = CheckpointSaver(run.run_dir, (run.checkpoint_path, self.state.epoch)
                                     if run.checkpoint_path else None)
        # What the training step calls: the task itself, or its DDP wrapper under torchrun.
        self.step_module: nn.Module = task
        if self.context.distributed:
            self.step_module = DistributedDataParallel(
                task, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # After DDP has given every rank rank 0's weights: the averages start out equal too.
        self.ema = resumed_ema(self.task.model, self.args.ema_decay, run.checkpoint,
                               run.checkpoint_path, announce=self.context.is_main)
        self.tracker = Tracker(run.run_dir, self.context.is_main,
                               DepthMetrics(self.args.valid_threshold).protocol(),
                               self.args.use_wandb, self.args.wandb_project,
                               self.args.experiment_name, vars(self.args))

    def _check_resumable(self) -> None:
        """Refuse to resume a run whose data, kind or distillation settings differ.

        Raises:
            UsageError: listing the differences.
        """
        run = self.run
        if run.checkpoint is not None and "identity" in run.checkpoint:
            differences = resume_differences(run.checkpoint["identity"], self.identity)
            if differences:
                raise UsageError(f"{run.checkpoint_path}: cannot resume: "
                                 f"{'; '.join(differences)} (start a new run or use --overwrite)")

    def _placed(self, task: Task) -> Task:
        """``task`` on the device, in the memory format, compiled and with synchronised
        BatchNorm as the flags ask; sets :attr:`memory_format` of the batches."""
        task.to(self.device)
        self.memory_format = torch.preserve_format
        if self.args.channels_last:
            self.memory_format = torch.channels_last
            task.to(memory_format=torch.channels_last)
        if self.args.compile:
            # In place: the model keeps its parameters and state_dict keys, so checkpoints are
            # unchanged; the task's loss code (e.g. a KD schedule's Python step) stays eager.
            task.model.compile()
        if self.args.sync_bn and self.context.distributed:
            task = nn.SyncBatchNorm.convert_sync_batchnorm(task)
        return task

    def _restore(self) -> TrainState:
        """Load the resumed checkpoint into the task and the optimisation state (the random
        state is restored by :meth:`fit`, right before the first epoch)."""
        checkpoint, args = self.run.checkpoint, self.args
        assert checkpoint is not None and self.run.checkpoint_path is not None
        check_finite(checkpoint, self.run.checkpoint_path)
        self.task.model.load_state_dict(training_weights(checkpoint))
        for name, child in trainable_children(self.task).items():
            if name not in checkpoint["extra_states"]:
                raise DataError(self.run.checkpoint_path,
                                f"has no state for the task's module {name!r}")
            child.load_state_dict(checkpoint["extra_states"][name])
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        self.scheduler.load_state_dict(checkpoint["scheduler_state"])
        if checkpoint["scaler_state"]:
            self.scaler.load_state_dict(checkpoint["scaler_state"])
        # Learning rate and weight decay follow the (possibly overridden) arguments rather than
        # the saved optimizer; unchanged flags give back exactly the saved values.
        self.scheduler.base_lrs = [args.learning_rate] * len(self.optimizer.param_groups)
        for group, factor in zip(self.optimizer.param_groups, self.scheduler.lr_lambdas):
            group["initial_lr"] = args.learning_rate
            group["weight_decay"] = args.weight_decay
            group["lr"] = args.learning_rate * factor(self.scheduler.last_epoch)
        return TrainState(epoch=checkpoint["epoch"], global_step=checkpoint["global_step"],
                          best_score=checkpoint["best_score"], best_epoch=checkpoint["best_epoch"],
                          history=list(checkpoint["history"]))

    def _evaluated_weights(self) -> contextlib.AbstractContextManager:
        """Within it the model holds the weights that are validated and saved as the model:
        the EMA's, or its own."""
        if self.ema is None:
            return contextlib.nullcontext()
        return swapped_weights(self.task.model, self.ema.state_dict())

    def fit(self) -> Dict[str, Any]:
        """See :func:`fit`."""
        with self._folder_lock():
            return self._fit()

    @contextlib.contextmanager
    def _folder_lock(self) -> Iterator[None]:
        """Hold the run folder's lock throughout (one writer per run): rank 0 takes it, the
        others learn whether it could, so a folder held by another launch stops every rank with
        the same line instead of leaving them waiting for rank 0 at the first collective.

        Raises:
            UsageError: another process holds the lock (on every rank).
        """
        with contextlib.ExitStack() as stack:
            refused: List[Optional[str]] = [None]
            if self.context.is_main:
                try:
                    stack.enter_context(run_folder_lock(self.run.run_dir))
                except UsageError as error:
                    refused[0] = str(error)
            if self.context.distributed:
                dist.broadcast_object_list(refused, src=0)
            if refused[0] is not None:
                raise UsageError(refused[0])
            yield

    def _fit(self) -> Dict[str, Any]:
        args, state, main = self.args, self.state, self.context.is_main
        if main:
            self.saver.prepare(self.args.overwrite and not self.run.continues_own_folder,
                               self.run.checkpoint, self.run.checkpoint_path, self._draw_best)
            write_run_config(self.run, self.task.model, self.identity)
            if state.epoch >= args.nb_epochs:
                print(f"{self.run.run_dir} has already trained {state.epoch} epochs (--nb_epochs "
                      f"{args.nb_epochs}); pass a larger --nb_epochs to continue")
        if self.run.checkpoint:
            restore_rng_state(self.run.checkpoint["rng"])
        last_epoch = args.nb_epochs
        if args.stop_after_epochs is not None:
            last_epoch = min(last_epoch, state.epoch + args.stop_after_epochs)
        metrics: Dict[str, Any] = {}
        for epoch in range(state.epoch, last_epoch):
            started = time.time()
            train_means = self.train_epoch(epoch)
            metrics = self.end_epoch(train_means, started)
        self.tracker.finish()
        # No rank returns (and tears the process group down) while rank 0 still writes.
        self.context.barrier()
        return {"run_dir": self.run.run_dir, "epoch": state.epoch, "best_rmse": state.best_score,
                "best_epoch": state.best_epoch, "last_metrics": metrics}

    def _draw_best(self, record: Checkpoint, path: Path) -> None:
        """Draw ``val_best.png`` from a checkpoint's weights (when the saver rebuilds
        ``best_model.pth``)."""
        if self.args.num_val_images > 0:
            headline = format_metrics(record["metrics"], ("rmse", "abs_rel", "delta1"))
            with swapped_weights(self.task.model, record["model_state"]):
                self._draw_pictures(path, f"{self.args.experiment_name}, epoch "
                                          f"{record['epoch']}: val {headline}")

    def train_epoch(self, epoch: int) -> Dict[str, float]:
        """One pass over this rank's training shard; returns each loss term's mean over the
        epoch's samples, reduced over ranks.

        Raises:
            TrainingError: a non-finite loss term or gradient norm (on any rank), before the
                optimizer step.
        """
        args, state, device = self.args, self.state, self.device
        self.data.train_sampler.set_epoch(epoch)
        set_train_mode(self.task)
        means = LossMeans(device)
        bar = progress(self.data.train_loader, self.context.is_main,
                       f"epoch {epoch + 1}/{args.nb_epochs}")
        for batch in bar:
            batch = to_device(batch, device, self.memory_format)
            size = len(batch[DEPTH])
            if args.mirror_augment:
                flags = mirror_flags(size, args.seed, state.global_step, self.context.rank)
                batch = mirror_batch(batch, flags)
            with autocast(device, self.autocast_dtype):
                _, losses = self.step_module(batch)
            values = means.add(losses, size)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses[TOTAL]).backward()
            grad_norm = self._gradient_norm()
            self._check_step(means.names, values, grad_norm, epoch)
            if args.grad_clip > 0 and grad_norm is not None:
                nn.utils.clip_grads_with_norm_(self.parameters, args.grad_clip, grad_norm)
            self._optimizer_step()
            self.scheduler.step()
            state.global_step += 1
            if self.context.is_main:
                bar.set_postfix({n: f"{v:.4f}" for n, v in means.local().items()})
                if state.global_step % args.log_every == 0:
                    step_values = {f"step/{n}": v for n, v in zip(means.names, values.tolist())}
                    step_values["step/lr"] = self.optimizer.param_groups[0]["lr"]
                    self.tracker.log_steps(step_values, state.global_step)
        assert means.sums is not None, "the training split gave no batch"
        return means.reduced(self.context)

    def _optimizer_step(self) -> None:
        """Step the optimizer through the loss scaler, then the EMA if the step was taken.

        A step that fp16 loss scaling skips (overflowed gradients) is the only event that lowers
        the scale, so a lower scale after ``update`` means no step. Read only with an EMA: it
        synchronises with the device.
        """
        watch = self.ema is not None and self.scaler.is_enabled()
        scale = self.scaler.get_scale() if watch else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None and (scale is None or self.scaler.get_scale() >= scale):
            self.ema.update()

    def _gradient_norm(self) -> Optional[torch.Tensor]:
        """The total L2 norm of the (unscaled) gradients; ``None`` under fp16 loss scaling
        without clipping, where nothing needs it (the scaler checks its gradients itself)."""
        if self.scaler.is_enabled():
            if self.args.grad_clip <= 0:
                return None
            self.scaler.unscale_(self.optimizer)
        return nn.utils.get_total_norm([p.grad for p in self.parameters if p.grad is not None])

    def _check_step(self, names: List[str], values: torch.Tensor,
                    grad_norm: Optional[torch.Tensor], epoch: int) -> None:
        """Stop on a non-finite loss term or gradient norm on any rank (one synchronisation).

        Raises:
            TrainingError: saying which term, or the first parameter with a non-finite gradient.
        """
        loss_bad = ~torch.isfinite(values).all()
        # Under fp16 loss scaling an infinite gradient means "skip this step, lower the scale".
        grad_bad = torch.zeros((), dtype=torch.bool, device=values.device)
        if grad_norm is not None and not self.scaler.is_enabled():
            grad_bad = ~torch.isfinite(grad_norm.to(values.device))
        flags = sum_over_ranks(torch.stack([loss_bad, grad_bad]).double(),
                                self.context).tolist()
        where = f"at epoch {epoch + 1}, step {self.state.global_step + 1}"
        if flags[0]:
            terms = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, values.tolist()))
            raise self.saver.stopped(f"non-finite loss {where} ({terms})")
        if flags[1]:
            assert grad_norm is not None
            first = next((name for name, p in zip(self.parameter_names, self.parameters)
                          if p.grad is not None and not torch.isfinite(p.grad).all()), None)
            seen = (f"first in {first}" if first is not None
                    else "every gradient finite, their norm overflowed")
            raise self.saver.stopped(f"non-finite gradient {where} ({seen}; total norm "
                                     f"{float(grad_norm):.4g})")

    def _saved_states(self) -> Dict[str, Any]:
        """The trained state a checkpoint stores: model, trainable extra modules, optimizer
        state and, with an EMA, the averaged weights as the model beside the trained ones."""
        states: Dict[str, Any] = {
            "model_state": self.task.model.state_dict(),
            "extra_states": {name: child.state_dict()
                             for name, child in trainable_children(self.task).items()},
            "optimizer_state": self.optimizer.state_dict()}
        if self.ema is not None:
            states.update(model_state=self.ema.state_dict(),
                          train_model_state=states["model_state"], ema_updates=self.ema.updates)
        return states

    def _check_finite_state(self, epoch: int) -> None:
        """Stop when a weight, buffer or optimizer state that a checkpoint would store is not
        finite on any rank (once per epoch: the per-step checks see the loss and gradients).

        Raises:
            TrainingError: naming the first such tensor.
        """
        bad = non_finite_tensors(self._saved_states())
        flag = torch.tensor(float(bool(bad)), dtype=torch.float64, device=self.device)
        if sum_over_ranks(flag, self.context).item():
            seen = f": {describe_names(bad)}" if bad else " on another rank"
            raise self.saver.stopped(f"non-finite values after epoch {epoch + 1} (step "
                                     f"{self.state.global_step}){seen}")

    def end_epoch(self, train_means: Dict[str, float], started: float) -> Dict[str, Any]:
        """Check the state, validate, then (rank 0) save ``last_model.pth`` (and
        ``best_model.pth`` on a new best RMSE), ``metrics.json`` and the pictures. Returns the
        validation metrics.

        Raises:
            TrainingError: a non-finite weight, buffer or optimizer state, or a non-finite
                validation loss or metric; nothing of this epoch is written.
        """
        state = self.state
        val_losses, scores = self._validate_epoch()
        state.epoch += 1
        improved = scores["rmse"] is not None and scores["rmse"] < state.best_score
        if improved:
            state.best_score, state.best_epoch = float(scores["rmse"]), state.epoch
        state.history.append({
            "epoch": state.epoch, "global_step": state.global_step,
            "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(time.time() - started, 2),
            "train": train_means, "val": scores, "val_loss": val_losses,
        })
        if not self.context.is_main:
            self.saver.saved_elsewhere(state.epoch)
            return scores
        self.saver.save(self._checkpoint(scores), improved)
        self.tracker.log_epoch(state.history, {"epoch": state.best_epoch, "rmse": state.best_score})
        headline = format_metrics(scores, ("rmse", "abs_rel", "delta1"))
        if self.args.num_val_images > 0:
            picture = self.run.run_dir / VAL_LAST_PICTURE
            with self._evaluated_weights():
                self._draw_pictures(picture, f"{self.args.experiment_name}, epoch {state.epoch}: "
                                             f"val {headline}")
            self.tracker.log_picture(picture, "val/pictures")
            if improved:
                self.saver.keep_best_picture(picture)
        summary = " ".join(f"{k}={v:.4f}" for k, v in train_means.items())
        print(f"epoch {state.epoch}/{self.args.nb_epochs} train {summary} | val {headline}"
              f"{' (best)' if improved else ''}")
        return scores

    def _validate_epoch(self) -> Tuple[Dict[str, float], Dict[str, Any]]:
        """Check the state, then validate the evaluated weights on every rank.

        Returns:
            ``(validation loss means, validation metrics)``, reduced over ranks, so every rank
            decides alike.

        Raises:
            TrainingError: a non-finite state, validation loss or metric.
        """
        _sync_buffers(self.task, self.ema, self.context)
        self._check_finite_state(self.state.epoch)
        metrics = DepthMetrics(self.args.valid_threshold, device=self.device)
        with self._evaluated_weights():
            val_losses = validate(self.task, self.data.val_loader, self.device, metrics,
                                  self.context, self.autocast_dtype,
                                  memory_format=self.memory_format)
        scores = metrics.compute()
        non_finite = [f"{name}={value}" for name, value in {**val_losses, **scores}.items()
                      if isinstance(value, float) and not math.isfinite(value)]
        if non_finite:
            raise self.saver.stopped(f"non-finite validation after epoch {self.state.epoch + 1} "
                                     f"({', '.join(non_finite)})")
        return val_losses, scores

    def _checkpoint(self, metrics: Dict[str, Any]) -> Checkpoint:
        task, state = self.task, self.state
        return Checkpoint(
            format_version=FORMAT_VERSION, model_name=task.model.model_name,
            model_config=task.model.config, **self._saved_states(),
            scheduler_state=self.scheduler.state_dict(),
            scaler_state=self.scaler.state_dict(), epoch=state.epoch, global_step=state.global_step,
            best_score=state.best_score, best_epoch=state.best_epoch, metrics=metrics,
            history=state.history, rng=capture_rng_state(), args=vars(self.args).copy(),
            identity=self.identity,
        )

    def _draw_pictures(self, path: Path, title: str) -> None:
        """The first ``--num_val_images`` validation samples: input | GT | prediction | error,
        predicted with the model's current weights."""
        dataset = self.data.val_dataset
        samples = [dataset[i] for i in range(min(self.args.num_val_images, len(dataset)))]
        batch = to_device(default_collate(samples), self.device, self.memory_format)
        self.task.eval()
        with torch.no_grad(), autocast(self.device, self.autocast_dtype):
            depth, _ = self.task(batch)
        save_validation_picture(path, batch[self.task.input_key], batch[DEPTH], depth,
                                self.data.max_depth, title)


def fit(task: Task, data: Data, run: Run) -> Dict[str, Any]:
    """Train ``task`` for ``--nb_epochs`` (or ``--stop_after_epochs`` more), validating each epoch.

    Args:
        task: what to train (see the module docstring).
        data: loaders from :func:`training.data.build_data`.
        run: from :func:`training.run.start_run` (arguments, device, run folder, resume state).

    Returns:
        ``{"run_dir", "epoch", "best_rmse", "best_epoch", "last_metrics"}``.

    Raises:
        TrainingError: a non-finite loss, gradient, weight or validation result (see the module
            docstring); the message names the last good checkpoint.
        UsageError: resuming with other data, kind or distillation settings.
    """
    return Trainer(task, data, run).fit()
