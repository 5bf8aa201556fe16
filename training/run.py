"""The life of one run: parse → resume → device → run folder, and what a run records.

:func:`start_run` parses a training script's command line (after its ``--config`` file), resolves
``--resume``, joins the torchrun world, picks the device and threads, seeds, and settles the run
folder; :func:`run_main` is the ``main`` of every training script over it.

Resuming (``--resume RUN_DIR | CHECKPOINT | latest``) restores the run's saved arguments; flags
given on the command line override them (e.g. a larger ``--nb_epochs``, a new ``--learning_rate``
from the next step on). The model is rebuilt from the checkpoint's config: a model flag that
contradicts it, a checkpoint of another model, or another ``--optimizer`` is an error, raised
before anything is written.

A run's identity (:mod:`training.identity`) is computed here for both the run that records it
(:meth:`Run.identity`) and the experiment runner that asks whether a run folder can be reused
(:func:`expected_identity`): one path, so the two cannot drift apart.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

import torch
import torch.distributed as dist
import yaml
from torch import nn

from common.errors import UsageError, user_errors
from datasets.registry import resolve_dataset
from models import official_num_downs
from training.checkpoint import (
    CONFIG_FILE, RESOLVED_CONFIG_FILE, RUN_FILES, Checkpoint, atomic_write, check_model_name,
    load_checkpoint, resolve_checkpoint_path, write_json,
)
from training.cli import (
    KIND_SCRIPTS, build_parser, check_model_flags, flag_groups, model_name_of, parse_script_argv,
    parse_with_config,
)
from training.data import Data, input_storage, median_valid_depth, resolve_data
from training.device import (
    DistContext, configure_threads, default_num_workers, init_distributed, resolve_device,
    seed_everything, shutdown_distributed,
)
from training.identity import checkpoint_fingerprint, run_identity

# Machine- or invocation-specific: never taken over from the run being resumed.
NOT_RESUMED = {"resume", "stop_after_epochs", "device", "num_workers", "overwrite", "threads",
               "config", "kind"}
# What a resumed run may not change by a flag (its optimiser state would not fit).
FIXED_ON_RESUME = ("optimizer",)


def model_config(args: argparse.Namespace,
                 median_depth: Optional[Callable[[], float]] = None) -> Dict[str, Any]:
    """Constructor kwargs of the run's model (:func:`model_name_of`) from resolved arguments.

    Args:
        args: the resolved arguments.
        median_depth: gives the training split's median valid depth in metres, called only for
            ``--head_init_depth median``.
    """
    name = model_name_of(args)
    if name == "rgb_depth":
        return {"base_channels": args.base_channels, "max_depth": args.max_depth}
    head_init = args.head_init_depth
    if head_init == "median":
        if median_depth is None:
            raise UsageError("--head_init_depth median needs the training data")
        head_init = median_depth()
    if name == "official_unet":
        # Absent rather than None when unset, so runs from before the U-Net had the lever keep
        # their model config (and so their identity).
        return {"ngf": args.base_channels, "num_downs": official_num_downs(args.image_size),
                "max_depth": args.max_depth,
                **({} if head_init is None else {"head_init_depth": head_init})}
    return {"base_channels": args.base_channels, "attention_levels": args.attention_levels,
            "num_heads": args.num_heads, "attention_mode": args.attention_mode,
            "max_depth": args.max_depth, "decoder": args.decoder,
            "input_features": args.input_features, "head_init_depth": head_init}


def resolved_config(args: argparse.Namespace) -> Dict[str, Any]:
    """The resolved flags a ``--config`` file can hold to repeat this run (``config.yaml``)."""
    skipped = {"config", "kind", "resume", "overwrite", "stop_after_epochs"}
    return {k: v for k, v in vars(args).items() if k not in skipped and v is not None}


def write_resolved_config(path: "str | Path", args: argparse.Namespace) -> None:
    """Write :func:`resolved_config` as YAML (atomically): ``--config path`` repeats the run."""
    text = ("# Resolved flags of this run; `--config` accepts this file as it is.\n"
            + yaml.safe_dump(resolved_config(args), sort_keys=True))
    atomic_write(path, lambda tmp: tmp.write_text(text))


def configure_cpu(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (torch's intra-op threads) and resolve ``--num_workers auto`` in
    ``args``, by the rules of :func:`training.device.configure_threads` and
    :func:`training.device.default_num_workers`, for the ``--device`` of ``args``."""
    configure_threads(args.threads, args.device)
    if args.num_workers == "auto":
        args.num_workers = default_num_workers(args.device)


def _explicit_dests(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> Set[str]:
    """The destinations the command line set explicitly (argparse only fills in a default for
    attributes the namespace does not have yet)."""
    unset = object()
    probe = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != "help"})
    parser.parse_args(argv, namespace=probe)
    return {dest for dest, value in vars(probe).items() if value is not unset}


def kind_of_checkpoint(checkpoint: Checkpoint) -> str:
    """Which script wrote a checkpoint: ``teacher``, ``student`` or ``kd``."""
    identity = checkpoint.get("identity") or {}
    if identity.get("kind"):
        return identity["kind"]
    if checkpoint["model_name"] == "rgb_depth":
        return "teacher"
    return "kd" if "teacher_checkpoint" in checkpoint.get("args", {}) else "student"


@dataclass
class Run:
    """A started run: everything a training script hands to the engine.

    Attributes:
        args: resolved arguments (after merging a resumed run's).
        kind: ``teacher``, ``student`` or ``kd``: which script runs.
        model_name: the model this run trains.
        flag_groups: argparse group title → the flags (destinations) in it; the run identity
            (:mod:`training.identity`) sorts the settings by these groups.
        context: place in the torchrun world.
        device: this process's device.
        run_dir: the run folder (``--checkpoint_dir/--experiment_name``).
        checkpoint: the checkpoint being resumed, or ``None``.
        checkpoint_path: its file.
    """

    args: argparse.Namespace
    kind: str
    model_name: str
    flag_groups: Dict[str, List[str]]
    context: DistContext
    device: torch.device
    run_dir: Path
    checkpoint: Optional[Checkpoint] = None
    checkpoint_path: Optional[Path] = None

    @property
    def continues_own_folder(self) -> bool:
        """Whether the run resumes a checkpoint of its own run folder."""
        return (self.checkpoint_path is not None
                and self.checkpoint_path.parent.resolve() == self.run_dir.resolve())

    def identity(self, data: Data, teacher_fingerprint: Optional[str] = None) -> Dict[str, Any]:
        """The identity this run records (:func:`identity_of`), for the data it trains on.

        Args:
            data: from :func:`training.data.build_data` (its fingerprint and input storage).
            teacher_fingerprint: of the distillation teacher, or ``None``.
        """
        return identity_of(self.args, self.flag_groups, self.kind, data.data_fingerprint,
                           teacher_fingerprint, data.storage)

    def model_config(self, median_depth: Optional[Callable[[], float]] = None) -> Dict[str, Any]:
        """The model's constructor kwargs: from the arguments for a new run, the checkpoint's
        when resuming (then any value the arguments give differently is an error).

        Args:
            median_depth: as for :func:`model_config`.
        """
        if self.checkpoint is None:
            return model_config(self.args, median_depth)
        saved = self.checkpoint["model_config"]
        # The head's starting depth is history once weights exist: not re-derived, not compared.
        resumed = argparse.Namespace(**{**vars(self.args), "head_init_depth": None})
        from_args = {k: v for k, v in model_config(resumed).items() if k != "head_init_depth"}
        normalised = json.loads(json.dumps(from_args))
        differing = [f"{k}: run has {saved[k]!r}, command line {normalised[k]!r}"
                     for k in sorted(set(saved) & set(normalised)) if saved[k] != normalised[k]]
        if differing:
            raise UsageError(f"{self.checkpoint_path}: model flags differ from the resumed run "
                             f"({'; '.join(differing)})")
        return saved


def _resume_args(parser: argparse.ArgumentParser, argv: Sequence[str],
                 args: argparse.Namespace, checkpoint: Checkpoint,
                 path: Path) -> argparse.Namespace:
    explicit = _explicit_dests(parser, argv)
    saved = checkpoint["args"]
    for flag in FIXED_ON_RESUME:
        if flag in explicit and getattr(args, flag) != saved.get(flag):
            raise UsageError(f"{path}: --{flag} cannot change when resuming "
                             f"(run used {saved.get(flag)!r})")
    merged = vars(args).copy()
    merged.update({k: v for k, v in saved.items()
                   if k in merged and k not in explicit and k not in NOT_RESUMED})
    if "experiment_name" not in explicit:
        # Continue in the checkpoint's own folder, wherever it now lies.
        merged["checkpoint_dir"] = str(path.parent.parent)
        merged["experiment_name"] = path.parent.name
    return argparse.Namespace(**merged)


def _default_experiment_name(model_name: str, dataset: str, context: DistContext) -> str:
    name = [f"{model_name}_{dataset}_{time.strftime('%Y%m%d-%H%M%S')}"]
    if context.distributed:  # every rank must agree on rank 0's clock
        dist.broadcast_object_list(name, src=0)
    return name[0]


def start_run(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> Run:
    """Parse the command line (after its ``--config`` file) and set the run up; nothing is
    written yet.

    Args:
        parser: from :func:`training.cli.build_parser`.
        argv: arguments (``None``: ``sys.argv[1:]``).

    Raises:
        DataError: ``--resume`` names nothing loadable, or a checkpoint of another model.
        UsageError: a bad ``--config`` file, resuming a run of another kind (plain vs
            distillation), or a fresh run aimed at a folder that holds a run.
    """
    argv, args = parse_with_config(parser, argv)
    checkpoint, checkpoint_path = None, None
    if args.resume:
        checkpoint_path = resolve_checkpoint_path(args.resume, args.checkpoint_dir)
        checkpoint = load_checkpoint(checkpoint_path)
        saved_kind = kind_of_checkpoint(checkpoint)
        if saved_kind != args.kind:
            raise UsageError(f"{checkpoint_path}: a {KIND_SCRIPTS[saved_kind]} run; resume it "
                             f"with that script, not {KIND_SCRIPTS[args.kind]}")
        args = _resume_args(parser, argv, args, checkpoint, checkpoint_path)
        check_model_name(checkpoint, model_name_of(args), checkpoint_path)
    check_model_flags(parser, args)
    context = init_distributed(args.device)
    device = resolve_device(args.device, context.local_rank)
    configure_cpu(args)
    model_name = model_name_of(args)
    resolve_dataset(args)  # before anything is named after it or written
    if args.experiment_name is None:
        args.experiment_name = _default_experiment_name(model_name, args.dataset, context)
    run = Run(args=args, kind=args.kind, model_name=model_name, flag_groups=flag_groups(parser),
              context=context, device=device,
              run_dir=Path(args.checkpoint_dir) / args.experiment_name, checkpoint=checkpoint,
              checkpoint_path=checkpoint_path)
    holds_a_run = any((run.run_dir / name).exists() for name in RUN_FILES)
    if holds_a_run and not run.continues_own_folder and not args.overwrite:
        raise UsageError(f"{run.run_dir} already holds a run: continue it with --resume "
                         f"{run.run_dir}, or pass --overwrite or another --experiment_name")
    context.barrier()  # every rank checked the folder before rank 0 may write into it
    seed_everything(args.seed, args.deterministic)
    return run


def identity_of(args: argparse.Namespace, groups: Dict[str, List[str]], kind: str,
                data_fingerprint: str, teacher_fingerprint: Optional[str],
                storage: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The run identity (:func:`training.identity.run_identity`) of resolved arguments: the one
    computation behind :meth:`Run.identity` and :func:`expected_identity`.

    Args:
        args: resolved arguments (dataset, data root and depth range filled in).
        groups: :func:`training.cli.flag_groups` of the script's parser.
        kind: ``teacher``, ``student`` or ``kd``.
        data_fingerprint: of the train and val splits.
        teacher_fingerprint: of the distillation teacher, or ``None``.
        storage: :func:`training.data.input_storage` of ``args``.
    """
    return run_identity(vars(args), groups, kind, model_name_of(args), data_fingerprint,
                        teacher_fingerprint, storage)


def expected_identity(kind: str, argv: Sequence[str]) -> Dict[str, Any]:
    """The identity a new run of the training script of ``kind`` with ``argv`` would record now:
    its arguments parsed and resolved as :func:`start_run` and :func:`training.data.build_data`
    resolve them, the data fingerprint from the split files on disk and, for distillation, the
    fingerprint of the teacher checkpoint on disk. Reads no sample and trains nothing.

    Raises:
        DataError: unreadable split CSVs or teacher checkpoint.
        UsageError: a bad config file or data flags.
    """
    args = parse_script_argv(kind, argv)
    _, data_fingerprint = resolve_data(args, DistContext())
    teacher = (checkpoint_fingerprint(load_checkpoint(args.teacher_checkpoint))
               if kind == "kd" else None)
    groups = flag_groups(build_parser(kind, None))
    return identity_of(args, groups, kind, data_fingerprint, teacher, input_storage(args))


def write_run_config(run: Run, model: nn.Module, identity: Dict[str, Any]) -> None:
    """``config.json`` (every resolved argument, the model's name and constructor kwargs, and the
    run identity) and ``config.yaml`` (the resolved flags, which ``--config`` accepts to repeat
    the run)."""
    write_json(run.run_dir / CONFIG_FILE, {
        "model": {"name": model.model_name, "config": model.config},
        "args": vars(run.args), "identity": identity, "world_size": run.context.world_size,
        "torch_version": torch.__version__,
    })
    write_resolved_config(run.run_dir / RESOLVED_CONFIG_FILE, run.args)


def run_main(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
               train: Callable[[Run], None]) -> None:
    """The ``main`` of a training script: start the run, hand it to ``train``, and report the
    errors a user can fix as one line.

    Args:
        parser: the script's :func:`training.cli.build_parser`.
        argv: arguments (``None``: ``sys.argv[1:]``).
        train: builds data, model and task for the started run and fits it.
    """
    try:
        with user_errors():
            train(start_run(parser, argv))
    finally:
        # Every exit leaves the process group: gloo can abort at exit when it was never left.
        shutdown_distributed()


def median_depth_of(data: Data) -> Callable[[], float]:
    """The training split's median valid depth, computed only when called (``--head_init_depth
    median``)."""
    return lambda: median_valid_depth(data.train_loader.dataset)
