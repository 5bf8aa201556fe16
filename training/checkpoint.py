"""The checkpoint format, written down once, and the helpers that save, find and load it.

A run folder ``checkpoints/<experiment_name>/`` holds ``last_model.pth`` (after every epoch),
``best_model.pth`` (lowest validation RMSE), ``config.json``, ``metrics.json``, validation
pictures and, once evaluated, ``eval_<split>/`` (:data:`RUN_FILES`, :func:`clear_run_folder`).
A checkpoint file is a plain dict (:class:`Checkpoint`) of tensors and Python scalars,
strings, lists and dicts only, so it loads with ``torch.load(..., weights_only=True)`` — a
checkpoint can never run code on load. Every file is written to a temporary file
``.<name>.<random>.tmp`` in the same folder and moved over the old one with ``os.replace``, so a
kill during a save leaves the previous file intact and loadable (and at worst a temporary file,
which the next run in that folder removes).

Finite or nothing: :func:`save_checkpoint` refuses a checkpoint holding a NaN or infinite tensor,
and :func:`load_model` (behind ``evaluate.py``, ``predict.py`` and the distillation teacher)
refuses weights holding one, so a diverged run can never be stored or used as a good one.

Problems with a checkpoint file raise :class:`datasets.errors.DataError` (one line naming the file),
the project's single "bad file on disk" error.

One writer per run folder: a training run holds an exclusive lock on ``<run folder>/.run.lock``
(:func:`run_folder_lock`) from before it touches the folder until it ends, so a second process
aimed at the same folder (another ``--overwrite``, a resume) stops with one line instead of
clearing or interleaving the first one's files. The kernel releases the lock when its holder
dies, even by SIGKILL.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import random
import secrets
from pathlib import Path
from typing import (
    Any, Callable, Dict, Iterator, List, NotRequired, Optional, Sequence, Tuple, TypedDict,
)

import numpy as np
import torch
from torch import nn

from common.errors import UsageError
from datasets.errors import DataError
from training.errors import TrainingError

FORMAT_VERSION = 1
LAST_CHECKPOINT = "last_model.pth"
BEST_CHECKPOINT = "best_model.pth"
CONFIG_FILE = "config.json"
RESOLVED_CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
VAL_LAST_PICTURE = "val_last.png"
VAL_BEST_PICTURE = "val_best.png"
# The files a training run writes into its folder (what --overwrite clears).
RUN_FILES = (LAST_CHECKPOINT, BEST_CHECKPOINT, CONFIG_FILE, RESOLVED_CONFIG_FILE, METRICS_FILE,
             VAL_LAST_PICTURE, VAL_BEST_PICTURE)
# ``evaluate.py``'s default output: ``<run folder>/eval_<split>/`` with these files.
EVALUATION_PREFIX = "eval_"
PER_IMAGE_FILE = "per_image.csv"
EVALUATION_FILES = (METRICS_FILE, PER_IMAGE_FILE)
LATEST = "latest"
RUN_LOCK = ".run.lock"


class Checkpoint(TypedDict):
    """What ``last_model.pth`` / ``best_model.pth`` hold.

    Attributes:
        format_version: :data:`FORMAT_VERSION`.
        model_name: ``model.model_name``; ``models.build_model(model_name, **model_config)``
            rebuilds the network.
        model_config: the model's constructor kwargs (``model.config``).
        model_state: the weights to use (what :func:`load_model` loads): the model's
            ``state_dict``, or under ``--ema_decay`` the exponential moving average of it
            (:class:`training.ema.WeightEma`).
        extra_states: ``state_dict`` of every other trainable module of the task (e.g. the
            distillation adapters), by attribute name; frozen modules (a teacher) are not stored.
        optimizer_state, scheduler_state: their ``state_dict``.
        scaler_state: the fp16 ``GradScaler``'s ``state_dict`` (empty when it is disabled).
        epoch: epochs completed; a resumed run starts at this epoch index.
        global_step: optimizer steps taken.
        best_score: lowest validation RMSE so far in metres (``inf`` before any).
        best_epoch: epoch (1-based) that reached ``best_score`` (0 before any).
        metrics: validation metrics of this epoch (:meth:`training.metrics.DepthMetrics.compute`).
        history: one record per epoch so far (what ``metrics.json`` lists).
        rng: random states (:func:`capture_rng_state`).
        args: the run's resolved command-line arguments.
        identity: the run's :func:`training.identity.run_identity` (absent in checkpoints written
            before runs recorded one; they still load).
        train_model_state: under ``--ema_decay`` only: the weights being trained, whose average
            is ``model_state``; a resumed run trains on from them (:func:`training_weights`).
        ema_updates: under ``--ema_decay`` only: the updates the average has had (optimizer
            steps taken since it started), which set its decay warm-up.
    """

    format_version: int
    model_name: str
    model_config: Dict[str, Any]
    model_state: Dict[str, torch.Tensor]
    extra_states: Dict[str, Dict[str, torch.Tensor]]
    optimizer_state: Dict[str, Any]
    scheduler_state: Dict[str, Any]
    scaler_state: Dict[str, Any]
    epoch: int
    global_step: int
    best_score: float
    best_epoch: int
    metrics: Dict[str, Any]
    history: List[Dict[str, Any]]
    rng: Dict[str, Any]
    args: Dict[str, Any]
    identity: NotRequired[Dict[str, Any]]
    train_model_state: NotRequired[Dict[str, torch.Tensor]]
    ema_updates: NotRequired[int]


def atomic_write(path: "str | os.PathLike[str]", write: Callable[[Path], None]) -> None:
    """Write a file so that readers see either the old complete file or the new complete one.

    The file gets the usual permissions of a new file (0666 less the umask).

    Args:
        path: destination.
        write: called with a temporary path in the same folder; must write the whole file there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkstemp: it creates the file 0600 whatever the umask.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_safe(value: Any) -> Any:
    """Non-finite floats become ``null`` (JSON has no NaN/inf); containers are walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: "str | os.PathLike[str]", data: Any) -> None:
    """Atomically write ``data`` as indented, strictly valid JSON."""
    text = json.dumps(_json_safe(data), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def remove_temporaries(folder: "str | os.PathLike[str]", names: Sequence[str]) -> List[Path]:
    """Delete what killed :func:`atomic_write` calls left for ``names`` in ``folder``.

    Only files named ``.<name>.<anything>.tmp`` for one of ``names`` are touched.

    Returns:
        The files removed.
    """
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            if tmp.is_file():
                tmp.unlink()
                removed.append(tmp)
    return removed


@contextlib.contextmanager
def run_folder_lock(run_dir: "str | os.PathLike[str]") -> Iterator[None]:
    """Hold the exclusive lock of ``run_dir`` (created if missing) while the block runs.

    Raises:
        UsageError: another process holds it (the message names the folder and that process).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / RUN_LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise UsageError(f"{run_dir} is being written by another training process (pid "
                             f"{holder}): wait for it, stop it, or choose another "
                             "--experiment_name") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def clear_run_folder(run_dir: "str | os.PathLike[str]") -> List[Path]:
    """Delete a previous run's files from ``run_dir``: :data:`RUN_FILES`, their leftover
    temporaries, and the files of ``evaluate.py``'s default ``eval_<split>/`` folders (a folder
    left empty goes too). Anything else, and ``run_dir`` itself, is left alone.

    Returns:
        The files removed.
    """
    run_dir = Path(run_dir)
    removed = _remove_files(run_dir, RUN_FILES)
    for folder in sorted(p for p in run_dir.glob(f"{EVALUATION_PREFIX}*") if p.is_dir()):
        removed += _remove_files(folder, EVALUATION_FILES)
        if not any(folder.iterdir()):
            folder.rmdir()
    return removed


def _remove_files(folder: Path, names: Sequence[str]) -> List[Path]:
    """Delete ``names`` in ``folder`` and their leftover temporaries; returns what was removed."""
    removed = remove_temporaries(folder, names)
    for name in names:
        if (folder / name).is_file():
            (folder / name).unlink()
            removed.append(folder / name)
    return removed


def _floating_tensors(tree: Any, prefix: str) -> Iterator[Tuple[str, torch.Tensor]]:
    """``(dotted name, tensor)`` for every floating-point tensor of nested dicts/lists/tuples."""
    if isinstance(tree, torch.Tensor):
        if tree.is_floating_point() or tree.is_complex():
            yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _floating_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            yield from _floating_tensors(value, f"{prefix}.{index}" if prefix else str(index))


def non_finite_tensors(tree: Any) -> List[str]:
    """Dotted names (e.g. ``model_state.head.weight``) of the floating-point tensors of a nested
    dict/list (a state dict, a checkpoint...) that hold a NaN or an infinity, in their order.

    One host synchronisation per device, not one per tensor.
    """
    named = list(_floating_tensors(tree, ""))
    finite = [True] * len(named)
    for device in {tensor.device for _, tensor in named}:
        positions = [i for i, (_, tensor) in enumerate(named) if tensor.device == device]
        flags = torch.stack([torch.isfinite(named[i][1]).all() for i in positions]).tolist()
        for i, flag in zip(positions, flags):
            finite[i] = flag
    return [name for (name, _), ok in zip(named, finite) if not ok]


def describe_names(names: List[str]) -> str:
    """``"a"``, or ``"a and 3 more"``: a one-line mention of a list of tensor names."""
    return names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")


def save_checkpoint(path: "str | os.PathLike[str]", checkpoint: Checkpoint) -> None:
    """Atomically ``torch.save`` a :class:`Checkpoint` whose tensors are all finite.

    Raises:
        TrainingError: a tensor (weights, extra states, optimizer state...) holds NaN or
            infinity; nothing is written.
    """
    bad = non_finite_tensors(checkpoint)
    if bad:
        raise TrainingError(f"{path}: not written: non-finite values in {describe_names(bad)}")
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def check_finite(tree: Any, path: "str | os.PathLike[str]", what: str = "values") -> None:
    """Raise :class:`DataError` naming ``path`` when a tensor of ``tree`` (a loaded checkpoint or
    a part of it) is not finite: a diverged run's checkpoint, written before saves refused them.

    Args:
        tree: what to check.
        path: the checkpoint's file, for the message.
        what: what ``tree`` holds, for the message (``"weights"``...).
    """
    bad = non_finite_tensors(tree)
    if bad:
        raise DataError(path, f"holds non-finite {what} ({describe_names(bad)}): the run had "
                              "diverged; use a checkpoint from before")


def load_checkpoint(path: "str | os.PathLike[str]",
                    map_location: "str | torch.device" = "cpu") -> Checkpoint:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        DataError: missing file, unreadable file, or not a checkpoint of this project.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file; all mean "unreadable"
        raise DataError(path, f"unreadable checkpoint ({type(error).__name__})") from error
    if not isinstance(checkpoint, dict) or not {"model_name", "model_state"} <= set(checkpoint):
        raise DataError(path, "not a checkpoint of this project (no model_name/model_state)")
    if checkpoint.get("format_version") != FORMAT_VERSION:
        raise DataError(path, f"checkpoint format {checkpoint.get('format_version')} is not "
                              f"{FORMAT_VERSION}")
    return checkpoint  # type: ignore[return-value]


def find_latest_run(checkpoint_dir: "str | os.PathLike[str]") -> Path:
    """The ``last_model.pth`` most recently written under ``checkpoint_dir/*/``.

    Raises:
        DataError: no run folder with a ``last_model.pth``.
    """
    candidates = sorted(Path(checkpoint_dir).glob(f"*/{LAST_CHECKPOINT}"),
                        key=lambda p: (p.stat().st_mtime, str(p)))
    if not candidates:
        raise DataError(checkpoint_dir, f"no run with a {LAST_CHECKPOINT} to resume")
    return candidates[-1]


def resolve_checkpoint_path(spec: str, checkpoint_dir: "str | os.PathLike[str]") -> Path:
    """Turn ``--resume``/``--checkpoint`` into a file path.

    Args:
        spec: a checkpoint file, a run folder (its ``last_model.pth``), or ``latest`` (the run
            most recently written under ``checkpoint_dir``).
        checkpoint_dir: where ``latest`` looks.

    Raises:
        DataError: nothing loadable there.
    """
    if spec == LATEST:
        return find_latest_run(checkpoint_dir)
    path = Path(spec)
    if path.is_dir():
        path = path / LAST_CHECKPOINT
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    return path


def load_model(
    checkpoint: Checkpoint,
    device: "str | torch.device" = "cpu",
    expected_name: Optional[str] = None,
    path: "str | os.PathLike[str]" = "checkpoint",
) -> nn.Module:
    """Rebuild a checkpoint's model with ``models.build_model`` and load its weights.

    Args:
        checkpoint: as returned by :func:`load_checkpoint`.
        device: where to put the model.
        expected_name: if given, the model name the caller needs.
        path: the checkpoint's file, for error messages.

    Returns:
        The model in eval mode.

    Raises:
        DataError: the checkpoint holds another model than ``expected_name``, or weights that
            are not all finite.
    """
    from models import build_model

    check_model_name(checkpoint, expected_name, path)
    check_finite(checkpoint["model_state"], path, "weights")
    model = build_model(checkpoint["model_name"], **checkpoint["model_config"])
    model.load_state_dict(checkpoint["model_state"])
    return model.to(device).eval()


def training_weights(checkpoint: Checkpoint) -> Dict[str, torch.Tensor]:
    """The weights a resumed run trains on: ``train_model_state`` when ``model_state`` holds
    their moving average, else ``model_state``."""
    return checkpoint.get("train_model_state", checkpoint["model_state"])


def check_model_name(checkpoint: Checkpoint, expected_name: Optional[str],
                     path: "str | os.PathLike[str]") -> None:
    """Raise :class:`DataError` when ``checkpoint`` holds another model than ``expected_name``."""
    if expected_name is not None and checkpoint["model_name"] != expected_name:
        raise DataError(path, f"holds a {checkpoint['model_name']!r} model, "
                              f"expected {expected_name!r}")


def capture_rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA random states, as tensors and plain types.

    NumPy's state array is stored as a tensor so the dict survives ``weights_only`` loading.
    """
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: Dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos),
                  int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only where CUDA is present)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state(
        (np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states: List[torch.Tensor] = state["cuda"]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
