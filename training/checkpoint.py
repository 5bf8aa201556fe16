"""The checkpoint format, written down once, and the helpers that save, find and load it.

A run folder ``checkpoints/<experiment_name>/`` holds ``last_model.pth`` (after every epoch),
``best_model.pth`` (lowest validation RMSE), ``config.json``, ``metrics.json`` and validation
pictures. A checkpoint file is a plain dict (:class:`Checkpoint`) of tensors and Python scalars,
strings, lists and dicts only, so it loads with ``torch.load(..., weights_only=True)`` — a
checkpoint can never run code on load. Every file is written to a temporary file in the same
folder and moved over the old one with ``os.replace``, so a kill during a save leaves the previous
file intact and loadable.

Problems with a checkpoint file raise :class:`datasets.errors.DataError` (one line naming the file),
the project's single "bad file on disk" error.
"""
from __future__ import annotations

import json
import math
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, TypedDict

import numpy as np
import torch
from torch import nn

from datasets.errors import DataError

FORMAT_VERSION = 1
LAST_CHECKPOINT = "last_model.pth"
BEST_CHECKPOINT = "best_model.pth"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
LATEST = "latest"


class Checkpoint(TypedDict):
    """What ``last_model.pth`` / ``best_model.pth`` hold.

    Attributes:
        format_version: :data:`FORMAT_VERSION`.
        model_name: ``model.model_name``; ``models.build_model(model_name, **model_config)``
            rebuilds the network.
        model_config: the model's constructor kwargs (``model.config``).
        model_state: the model's ``state_dict``.
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


def atomic_write(path: "str | os.PathLike[str]", write: Callable[[Path], None]) -> None:
    """Write a file so that readers see either the old complete file or the new complete one.

    Args:
        path: destination.
        write: called with a temporary path in the same folder; must write the whole file there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
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


def save_checkpoint(path: "str | os.PathLike[str]", checkpoint: Checkpoint) -> None:
    """Atomically ``torch.save`` a :class:`Checkpoint`."""
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


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
        DataError: the checkpoint holds another model than ``expected_name``.
    """
    from models import build_model

    check_model_name(checkpoint, expected_name, path)
    model = build_model(checkpoint["model_name"], **checkpoint["model_config"])
    model.load_state_dict(checkpoint["model_state"])
    return model.to(device).eval()


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
