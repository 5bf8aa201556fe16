"""The training engine: one fit / validate loop under every training script.

The engine knows nothing about models. It trains a :class:`Task`, an ``nn.Module`` that turns a
batch (the sample dict of ``datasets.sample``, collated, on the device) into a depth map and a
dict of named loss terms.

Plugging in a new task
----------------------
Subclass :class:`Task` (or :class:`DepthTask`, to reuse the supervised terms):

* set ``self.model``: the network being trained. It must have ``model_name`` and ``config``;
  its weights (or their moving average, see below), name and config become the checkpoint's
  model (what ``evaluate.py``, ``predict.py`` and a distillation teacher rebuild);
* set ``self.input_key``: the batch key the model reads (``"rgb"`` or ``"audio"``), drawn in the
  validation pictures;
* implement ``forward(batch) -> (depth, losses)``: ``depth`` (B, 1, H, W) in metres is what the
  metrics score; ``losses`` maps names to scalar tensors, already weighted, and ``"total"`` is the
  one optimised (:func:`with_total` adds it as the sum of the others). Each term is logged on its
  own: tqdm postfix, ``metrics.json`` history, W&B;
* a task that learns from a teacher sets ``teacher_fingerprint``
  (:func:`training.identity.checkpoint_fingerprint` of the teacher), part of the run identity;
* any other child module with trainable parameters (e.g. distillation adapters) joins the
  optimizer and is checkpointed under its attribute name; a child whose parameters are all frozen
  (``requires_grad_(False)``, e.g. a teacher) stays out of both and is kept in eval mode.
  Under torchrun every trainable parameter must take part in every forward (a DDP rule): keep a
  term whose weight is 0 at some step in the graph rather than skipping it.

Then ``fit(task, data, run)`` with ``data`` from :func:`training.data.build_data` and ``run``
from :func:`training.cli.start_run`; ``training/distill.py`` is a worked example.

What ``fit`` guarantees: AMP through ``torch.autocast`` (``--amp bf16``, or ``fp16`` with a
``torch.amp.GradScaler``; on CPU too, so both paths are tested there), gradient clipping,
``--channels_last`` and ``--compile``, TF32 and cuDNN autotuning on CUDA
(:func:`configure_cuda_kernels`), batches copied to the device without blocking (from pinned
memory on CUDA), DDP under torchrun (rank 0 logs and writes; metrics are reduced over ranks), a
learning-rate
schedule stepped per batch and built for the whole ``--nb_epochs`` horizon (also when the run is
cut short with ``--stop_after_epochs``), ``last_model.pth`` after every epoch and
``best_model.pth`` at each new best validation RMSE, and exact resume: with ``--deterministic``
on CPU, stopping after epoch k and resuming gives bit-identical weights to an uninterrupted run.

A flag the device cannot honour (:func:`check_device_flags`) is a one-line error.

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

The run folder: a run started with ``--overwrite`` first deletes the previous run's files
(:func:`training.checkpoint.clear_run_folder`), and every run deletes the temporary files that
killed saves left. ``best_model.pth`` is saved from the same checkpoint object as
``last_model.pth``, right after it. A resumed run checks that ``best_model.pth`` holds the epoch
that ``last_model.pth`` records as best: when that epoch is the last one (a kill between the two
saves), ``best_model.pth`` is rewritten from it; otherwise the stale file is deleted with a
warning and written again at the next new best. The run identity (:mod:`training.identity`) goes
into ``config.json`` and every checkpoint; a resume that changes the data, the kind of run or the
distillation settings is refused.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, default_collate

from datasets.errors import DataError
from datasets.sample import DEPTH, RGB, VALID
from training.checkpoint import (
    BEST_CHECKPOINT, CONFIG_FILE, FORMAT_VERSION, LAST_CHECKPOINT, RESOLVED_CONFIG_FILE, RUN_FILES,
    VAL_BEST_PICTURE, VAL_LAST_PICTURE, Checkpoint, atomic_write, capture_rng_state, check_finite,
    clear_run_folder, describe_names, load_checkpoint, non_finite_tensors, remove_temporaries,
    restore_rng_state, run_folder_lock, save_checkpoint, training_weights, write_json,
)
from training.cli import Run, write_resolved_config
from training.data import Data, mirror, mirror_batch, mirror_flags
from training.device import DistContext
from training.ema import WeightEma, swapped_weights
from training.errors import TrainingError, UsageError
from training.identity import resume_differences, run_identity
from training.losses import edge_aware_smoothness, get_criterion
from training.metrics import DepthMetrics, format_metrics
from training.tracking import Tracker, progress, save_validation_picture

Batch = Dict[str, Any]
TOTAL = "total"


class Task(nn.Module):
    """What the engine trains (see the module docstring). Subclasses set ``model`` and
    ``input_key`` and implement ``forward(batch) -> (depth, losses)``; a task with a teacher sets
    ``teacher_fingerprint``."""

    model: nn.Module
    input_key: str
    teacher_fingerprint: Optional[str] = None

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        raise NotImplementedError


def with_total(terms: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``terms`` plus ``"total"``, their sum (the terms are already weighted)."""
    return {**terms, TOTAL: sum(terms.values())}


class DepthTask(Task):
    """Supervised depth: ``model(batch[input_key])`` against the ground truth.

    Args:
        model: a model of ``models`` (depth in metres).
        input_key: ``"rgb"`` for the RGB model, ``"audio"`` for the binaural one.
        max_depth: metres; depths are divided by it inside the losses, so loss values and
            learning rates do not depend on the dataset's range.
        criterion: a name of :data:`training.losses.CRITERIA`; logged under that name.
        smoothness_weight: weight of :func:`training.losses.edge_aware_smoothness` (guided by the
            batch's RGB when it has one), logged as ``smoothness``; 0 leaves the term out.
    """

    def __init__(self, model: nn.Module, input_key: str, max_depth: float, criterion: str = "l1",
                 smoothness_weight: float = 0.0) -> None:
        super().__init__()
        self.model = model
        self.input_key = input_key
        self.max_depth = float(max_depth)
        self.criterion_name = criterion
        self.criterion = get_criterion(criterion)
        self.smoothness_weight = smoothness_weight

    def supervised_losses(self, depth: torch.Tensor, batch: Batch) -> Dict[str, torch.Tensor]:
        """Weighted supervised terms (no ``total``) for predicted depth (B, 1, H, W) in metres."""
        depth = depth.float()  # losses in float32 also under autocast
        valid = batch[VALID]
        terms = {self.criterion_name: self.criterion(
            depth / self.max_depth, batch[DEPTH] / self.max_depth, valid)}
        if self.smoothness_weight > 0:
            terms["smoothness"] = self.smoothness_weight * edge_aware_smoothness(
                depth, valid, batch.get(RGB))
        return terms

    def forward(self, batch: Batch) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        depth = self.model(batch[self.input_key])
        return depth, with_total(self.supervised_losses(depth, batch))


class MirrorAveraged(nn.Module):
    """Test-time mirror averaging: the mean of ``model(x)`` and the mirrored prediction of the
    mirrored input (:func:`training.data.mirror`), the left–right symmetry that
    ``--mirror_augment`` trains. Two forward passes per batch.

    Args:
        model: a depth model of ``models``.
        input_key: ``"rgb"`` or ``"audio"``: what ``x`` is.
    """

    def __init__(self, model: nn.Module, input_key: str) -> None:
        super().__init__()
        self.model = model
        self.input_key = input_key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) depth in metres, the model's output averaged with its mirror image's."""
        return 0.5 * (self.model(x) + mirror(self.model(mirror(x, self.input_key)), DEPTH))


# --------------------------------------------------------------------------------------------
# Pieces of the loop


def trainable_children(task: Task) -> Dict[str, nn.Module]:
    """Children of ``task`` other than ``model`` with trainable parameters (checkpointed extras)."""
    return {name: child for name, child in task.named_children()
            if name != "model" and any(p.requires_grad for p in child.parameters())}


def set_train_mode(task: Task) -> None:
    """Train mode, except children whose parameters are all frozen (they stay in eval mode)."""
    task.train()
    for child in task.children():
        parameters = list(child.parameters())
        if parameters and not any(p.requires_grad for p in parameters):
            child.eval()


def to_device(batch: Batch, device: torch.device,
              memory_format: torch.memory_format = torch.preserve_format) -> Batch:
    """Move every tensor of a collated batch to ``device`` (``meta`` strings stay as they are).

    The copies do not block the host (asynchronous from pinned memory on CUDA). With
    ``memory_format=torch.channels_last`` the 4-D (image-like) tensors are stored channels-last.
    """
    return {k: v.to(device, non_blocking=True,
                    memory_format=memory_format if v.dim() == 4 else torch.preserve_format)
            if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def build_optimizer(args: argparse.Namespace,
                    parameters: List[nn.Parameter]) -> torch.optim.Optimizer:
    """``--optimizer`` over ``parameters`` with ``--learning_rate`` and ``--weight_decay``."""
    if args.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=args.weight_decay)
    if args.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=args.learning_rate, weight_decay=args.weight_decay)
    return torch.optim.SGD(parameters, lr=args.learning_rate, momentum=0.9,
                           weight_decay=args.weight_decay)


def lr_factor(args: argparse.Namespace, steps_per_epoch: int) -> Callable[[int], float]:
    """Learning-rate multiplier as a function of the optimizer step, over all ``--nb_epochs``.

    Linear warm-up over ``--warmup_epochs``, then ``none`` (1), ``cosine`` (to 0 at the last
    step) or ``step`` (× ``--step_gamma`` every ``--step_size`` epochs).
    """
    total = max(1, args.nb_epochs * steps_per_epoch)
    warmup = min(total, round(args.warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if args.scheduler == "cosine":
            progress_ = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))
        if args.scheduler == "step":
            return args.step_gamma ** ((step // steps_per_epoch) // args.step_size)
        return 1.0

    return factor


def amp_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``--amp`` (``none``, ``bf16``, ``fp16``), or ``None`` for ``none``.

    Raises:
        UsageError: ``device`` cannot run it (no autocast for its type, or bf16 on a GPU
            without bfloat16).
    """
    if amp == "none":
        return None
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if not torch.amp.autocast_mode.is_autocast_available(device.type):
        raise UsageError(f"--amp {amp}: torch has no autocast for {device.type}")
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise UsageError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no bfloat16 "
                         "support; use --amp fp16")
    return dtype


def check_device_flags(args: argparse.Namespace, device: torch.device) -> None:
    """Refuse the flags ``device`` cannot honour (``--amp`` as :func:`amp_dtype` says,
    ``--sync_bn`` off CUDA, ``--compile`` where torch.compile is not supported).

    Raises:
        UsageError: one line naming the flag and why.
    """
    amp_dtype(args.amp, device)
    if args.sync_bn and device.type != "cuda":
        raise UsageError(f"--sync_bn needs CUDA (SyncBatchNorm runs on GPUs only); this run is "
                         f"on {device.type}")
    # torch has no public form of this check; torch.compile itself raises the same way.
    if args.compile and not torch._dynamo.is_dynamo_supported():
        raise UsageError("--compile: torch.compile is not supported with this Python/platform")


def configure_cuda_kernels(device: torch.device, deterministic: bool) -> None:
    """On CUDA, the fast kernels training wants: TF32 matmuls and convolutions and, unless
    ``deterministic`` (see :func:`training.device.seed_everything`), cuDNN autotuning. Process
    wide; nothing on other devices."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if not deterministic:
        torch.backends.cudnn.benchmark = True


def autocast(device: torch.device,
             dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype``, or nothing when ``dtype`` is ``None``."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _sum_over_ranks(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    if context.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _sync_buffers(task: Task, ema: Optional[WeightEma], context: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics) and, with an EMA, rank 0's
    averages of them: the ones rank 0 saves."""
    if context.distributed:
        for buffer in [*task.buffers(), *(ema.buffers() if ema is not None else [])]:
            dist.broadcast(buffer, src=0)


@torch.no_grad()
def validate(
    task: Task,
    loader: DataLoader,
    device: torch.device,
    metrics: DepthMetrics,
    context: DistContext = DistContext(),
    autocast_dtype: Optional[torch.dtype] = None,
    on_batch: Optional[Callable[[Batch, torch.Tensor, torch.Tensor, torch.Tensor], None]] = None,
    desc: str = "validate",
    memory_format: torch.memory_format = torch.preserve_format,
) -> Dict[str, float]:
    """Score ``task`` on a loader; ``metrics`` ends up reduced over every rank.

    Args:
        task: evaluated in eval mode.
        loader: this rank's shard of the split.
        device: where the task lives.
        metrics: accumulator to fill (then all-reduced).
        context: torchrun world.
        autocast_dtype: AMP dtype, or ``None``.
        on_batch: called with ``(batch, depth, scores, n_valid)`` for per-image reports.
        desc: progress bar label.
        memory_format: of the batches' 4-D tensors (``torch.channels_last`` with
            ``--channels_last``).

    Returns:
        Mean of each loss term over the split's samples (reduced over ranks).
    """
    task.eval()
    sums: Optional[torch.Tensor] = None
    names: List[str] = []
    count = torch.zeros((), dtype=torch.float64, device=device)
    for batch in progress(loader, context.is_main, desc):
        batch = to_device(batch, device, memory_format)
        with autocast(device, autocast_dtype):
            depth, losses = task(batch)
        depth = depth.float()
        scores, n_valid = metrics.update(depth, batch[DEPTH])
        if on_batch is not None:
            on_batch(batch, depth, scores, n_valid)
        names = list(losses)
        size = len(depth)
        values = torch.stack([losses[k].detach().double() for k in names]) * size
        sums = values if sums is None else sums + values
        count += size
    metrics.all_reduce()
    if sums is None:
        return {}
    means = _sum_over_ranks(sums, context) / _sum_over_ranks(count, context)
    return dict(zip(names, means.tolist()))


@dataclass
class TrainState:
    """Progress that a checkpoint carries besides the weights and optimiser state."""

    epoch: int = 0
    global_step: int = 0
    best_score: float = math.inf
    best_epoch: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)


def write_run_config(run: Run, model: nn.Module, identity: Dict[str, Any]) -> None:
    """``config.json`` (every resolved argument, the model's name and constructor kwargs, and the
    run identity of :func:`training.identity.run_identity`) and ``config.yaml`` (the resolved
    flags, which ``--config`` accepts to repeat the run)."""
    write_json(run.run_dir / CONFIG_FILE, {
        "model": {"name": model.model_name, "config": model.config},
        "args": vars(run.args), "identity": identity, "world_size": run.context.world_size,
        "torch_version": torch.__version__,
    })
    write_resolved_config(run.run_dir / RESOLVED_CONFIG_FILE, run.args)


def _best_file_agrees(path: Path, record: Checkpoint) -> bool:
    """Whether ``path`` holds the epoch that ``record`` (a ``last_model.pth``) names as its best:
    that epoch of the same run (the history up to it, timings included, is identical); with no
    best epoch yet, whether there is no such file."""
    if record["best_epoch"] == 0:
        return not path.exists()
    try:
        best = load_checkpoint(path)
    except DataError:
        return False
    return (best["epoch"] == record["best_epoch"]
            and best["history"] == record["history"][: record["best_epoch"]])


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
        self.identity = run_identity(vars(self.args), run.flag_groups, run.kind,
                                     task.model.model_name, data.data_fingerprint,
                                     task.teacher_fingerprint, data.storage)
        if run.checkpoint is not None and "identity" in run.checkpoint:
            differences = resume_differences(run.checkpoint["identity"], self.identity)
            if differences:
                raise UsageError(f"{run.checkpoint_path}: cannot resume: "
                                 f"{'; '.join(differences)} (start a new run or use --overwrite)")
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
        self.task = task
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
        # What a stopped run names as its last good checkpoint: (file, epoch), or None.
        self.last_good: Optional[Tuple[Path, int]] = (
            (run.checkpoint_path, self.state.epoch) if run.checkpoint_path else None)
        # What the training step calls: the task itself, or its DDP wrapper under torchrun.
        self.step_module: nn.Module = task
        if self.context.distributed:
            self.step_module = DistributedDataParallel(
                task, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # After DDP has given every rank rank 0's weights: the averages start out equal too.
        self.ema = self._start_ema()
        self.tracker = Tracker(run.run_dir, self.context.is_main,
                               DepthMetrics(self.args.valid_threshold).protocol(),
                               self.args.use_wandb, self.args.wandb_project,
                               self.args.experiment_name, vars(self.args))

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

    def _start_ema(self) -> Optional[WeightEma]:
        """The average of ``--ema_decay`` (``None`` when 0): the resumed checkpoint's when it has
        one, else a new one from the current (initial or resumed) weights."""
        checkpoint, path = self.run.checkpoint, self.run.checkpoint_path
        averaged = checkpoint is not None and "train_model_state" in checkpoint
        if self.args.ema_decay == 0:
            if averaged and self.context.is_main:
                print(f"--ema_decay 0: training on from {path}'s training weights; its weight "
                      "average is dropped")
            return None
        ema = WeightEma(self.task.model, self.args.ema_decay)
        if averaged:
            assert checkpoint is not None
            ema.load_state_dict(checkpoint["model_state"], checkpoint["ema_updates"])
        elif checkpoint is not None and self.context.is_main:
            print(f"--ema_decay {self.args.ema_decay}: {path} holds no weight average; one "
                  "starts from its weights")
        return ema

    def _evaluated_weights(self) -> contextlib.AbstractContextManager:
        """Within it the model holds the weights that are validated and saved as the model:
        the EMA's, or its own."""
        if self.ema is None:
            return contextlib.nullcontext()
        return swapped_weights(self.task.model, self.ema.state_dict())

    def fit(self) -> Dict[str, Any]:
        """See :func:`fit`."""
        # Rank 0 writes the folder: it holds the folder's lock throughout (one writer per run).
        lock = (run_folder_lock(self.run.run_dir) if self.context.is_main
                else contextlib.nullcontext())
        with lock:
            return self._fit()

    def _fit(self) -> Dict[str, Any]:
        args, state, main = self.args, self.state, self.context.is_main
        if main:
            self._prepare_run_folder()
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

    def _prepare_run_folder(self) -> None:
        """(Rank 0) Create the run folder, delete what killed saves left in it, clear a previous
        run's files under ``--overwrite`` (unless the run continues its own folder), and make
        ``best_model.pth`` agree with a resumed checkpoint."""
        run = self.run
        run.run_dir.mkdir(parents=True, exist_ok=True)
        remove_temporaries(run.run_dir, RUN_FILES)
        if self.args.overwrite and not run.continues_own_folder:
            removed = clear_run_folder(run.run_dir)
            if removed:
                names = sorted({str(path.relative_to(run.run_dir)) for path in removed})
                print(f"--overwrite: removed the previous run's {', '.join(names)} from "
                      f"{run.run_dir}")
        if run.checkpoint is not None:
            self._repair_best()

    def _repair_best(self) -> None:
        """Make ``best_model.pth`` hold the best epoch that the resumed checkpoint records:
        rewritten from that checkpoint when it is that epoch (a kill between the two saves of an
        epoch, or a run resumed into another folder); otherwise a stale file is deleted, with a
        warning, and ``best_model.pth`` is written again at the next new best."""
        record, source, run = self.run.checkpoint, self.run.checkpoint_path, self.run
        assert record is not None
        best = run.run_dir / BEST_CHECKPOINT
        if _best_file_agrees(best, record):
            return
        if record["best_epoch"] == record["epoch"]:
            save_checkpoint(best, record)
            if self.args.num_val_images > 0:
                headline = format_metrics(record["metrics"], ("rmse", "abs_rel", "delta1"))
                with swapped_weights(self.task.model, record["model_state"]):
                    self._draw_pictures(run.run_dir / VAL_BEST_PICTURE,
                                        f"{self.args.experiment_name}, epoch {record['epoch']}: "
                                        f"val {headline}")
            print(f"{best} did not hold the best epoch {record['best_epoch']} that {source} "
                  "records: rewritten from it")
            return
        stale = best.exists()
        best.unlink(missing_ok=True)
        (run.run_dir / VAL_BEST_PICTURE).unlink(missing_ok=True)
        wanted = (f"epoch {record['best_epoch']}, val rmse {record['best_score']:.4f}"
                  if record["best_epoch"] else "none yet")
        print(f"warning: {best} does not hold the best epoch that {source} records ({wanted}), "
              f"which cannot be rebuilt{'; the stale file is deleted' if stale else ''}; it is "
              "written again at the next new best")

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
        names: List[str] = []
        sums: Optional[torch.Tensor] = None
        count = torch.zeros((), dtype=torch.float64, device=device)
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
            names = list(losses)
            values = torch.stack([losses[k].detach().double() for k in names])
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses[TOTAL]).backward()
            grad_norm = self._gradient_norm()
            self._check_step(names, values, grad_norm, epoch)
            if args.grad_clip > 0 and grad_norm is not None:
                nn.utils.clip_grads_with_norm_(self.parameters, args.grad_clip, grad_norm)
            self._optimizer_step()
            self.scheduler.step()
            state.global_step += 1
            sums = values * size if sums is None else sums + values * size
            count += size
            if self.context.is_main:
                bar.set_postfix({n: f"{v:.4f}" for n, v in zip(names, (sums / count).tolist())})
                if state.global_step % args.log_every == 0:
                    step_values = {f"step/{n}": v for n, v in zip(names, values.tolist())}
                    step_values["step/lr"] = self.optimizer.param_groups[0]["lr"]
                    self.tracker.log_steps(step_values, state.global_step)
        assert sums is not None, "the training split gave no batch"
        means = _sum_over_ranks(sums, self.context) / _sum_over_ranks(count, self.context)
        return dict(zip(names, means.tolist()))

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
        flags = _sum_over_ranks(torch.stack([loss_bad, grad_bad]).double(),
                                self.context).tolist()
        where = f"at epoch {epoch + 1}, step {self.state.global_step + 1}"
        if flags[0]:
            terms = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, values.tolist()))
            raise self._stopped(f"non-finite loss {where} ({terms})")
        if flags[1]:
            assert grad_norm is not None
            first = next((name for name, p in zip(self.parameter_names, self.parameters)
                          if p.grad is not None and not torch.isfinite(p.grad).all()), None)
            seen = (f"first in {first}" if first is not None
                    else "every gradient finite, their norm overflowed")
            raise self._stopped(f"non-finite gradient {where} ({seen}; total norm "
                                f"{float(grad_norm):.4g})")

    def _stopped(self, what: str) -> TrainingError:
        """The error that stops the run: ``what`` happened, and which checkpoint is the last
        good one."""
        if self.last_good is None:
            kept = "no checkpoint has been written yet"
        else:
            kept = f"the last good checkpoint is {self.last_good[0]} (epoch {self.last_good[1]})"
        return TrainingError(f"{what}; stopped, {kept}")

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
        if _sum_over_ranks(flag, self.context).item():
            seen = f": {describe_names(bad)}" if bad else " on another rank"
            raise self._stopped(f"non-finite values after epoch {epoch + 1} (step "
                                f"{self.state.global_step}){seen}")

    def end_epoch(self, train_means: Dict[str, float], started: float) -> Dict[str, Any]:
        """Check the state, validate, then (rank 0) save ``last_model.pth`` (and
        ``best_model.pth`` on a new best RMSE), ``metrics.json`` and the pictures. Returns the
        validation metrics.

        Raises:
            TrainingError: a non-finite weight, buffer or optimizer state, or a non-finite
                validation loss or metric; nothing of this epoch is written.
        """
        args, state, run = self.args, self.state, self.run
        _sync_buffers(self.task, self.ema, self.context)
        self._check_finite_state(state.epoch)
        metrics = DepthMetrics(args.valid_threshold, device=self.device)
        with self._evaluated_weights():
            val_losses = validate(self.task, self.data.val_loader, self.device, metrics,
                                  self.context, self.autocast_dtype,
                                  memory_format=self.memory_format)
        scores = metrics.compute()
        # Reduced over ranks, so every rank decides alike.
        non_finite = [f"{name}={value}" for name, value in {**val_losses, **scores}.items()
                      if isinstance(value, float) and not math.isfinite(value)]
        if non_finite:
            raise self._stopped(f"non-finite validation after epoch {state.epoch + 1} "
                                f"({', '.join(non_finite)})")
        state.epoch += 1
        improved = scores["rmse"] is not None and scores["rmse"] < state.best_score
        if improved:
            state.best_score, state.best_epoch = float(scores["rmse"]), state.epoch
        state.history.append({
            "epoch": state.epoch, "global_step": state.global_step,
            "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(time.time() - started, 2),
            "train": train_means, "val": scores, "val_loss": val_losses,
        })
        last = run.run_dir / LAST_CHECKPOINT
        if not self.context.is_main:
            self.last_good = (last, state.epoch)
            return scores
        checkpoint = self._checkpoint(scores)
        save_checkpoint(last, checkpoint)
        self.last_good = (last, state.epoch)
        if improved:  # right after last_model.pth: see _repair_best for a kill in between
            save_checkpoint(run.run_dir / BEST_CHECKPOINT, checkpoint)
        self.tracker.log_epoch(state.history, {"epoch": state.best_epoch, "rmse": state.best_score})
        headline = format_metrics(scores, ("rmse", "abs_rel", "delta1"))
        if args.num_val_images > 0:
            picture = run.run_dir / VAL_LAST_PICTURE
            with self._evaluated_weights():
                self._draw_pictures(picture,
                                    f"{args.experiment_name}, epoch {state.epoch}: val {headline}")
            self.tracker.log_picture(picture, "val/pictures")
            if improved:
                atomic_write(run.run_dir / VAL_BEST_PICTURE,
                             functools.partial(shutil.copyfile, picture))
        summary = " ".join(f"{k}={v:.4f}" for k, v in train_means.items())
        print(f"epoch {state.epoch}/{args.nb_epochs} train {summary} | val {headline}"
              f"{' (best)' if improved else ''}")
        return scores

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
        run: from :func:`training.cli.start_run` (arguments, device, run folder, resume state).

    Returns:
        ``{"run_dir", "epoch", "best_rmse", "best_epoch", "last_metrics"}``.

    Raises:
        TrainingError: a non-finite loss, gradient, weight or validation result (see the module
            docstring); the message names the last good checkpoint.
        UsageError: resuming with other data, kind or distillation settings.
    """
    return Trainer(task, data, run).fit()
