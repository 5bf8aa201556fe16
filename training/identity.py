"""Run identity: a fingerprint of everything that decides a run's result.

A run's identity is recorded in its ``config.json`` and in every checkpoint it writes::

    {"kind": "teacher" | "student" | "kd",
     "model": model name,
     "settings": {flag group: {flag: value}}   every resolved argument that can change the
                                               result (see OPERATIONAL for the ones that cannot;
                                               INTRODUCED_LATER for the ones recorded only when
                                               set)
     "data": fingerprint of the training and validation splits (split CSVs, each referenced
             file's size and mtime),
     "teacher": fingerprint of the distillation teacher's checkpoint, or None,
     "storage": how the samples were stored on their way to the model (a cache's format and
                stored forms; ``training.data.input_storage``), absent when read from the files,
     "fingerprint": sha256 of all the above}

Two runs with the same fingerprint were trained from the same data with the same settings, so
the experiment runner may reuse one for the other; any difference means the run must be trained
again. ``--resume`` may change optimisation flags (e.g. extend ``--nb_epochs``) but never the
data, the kind of run or the distillation settings: :func:`check_resume` stops with one line
listing what differs.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

from datasets.registry import WORLD_OPTIONS

# Where and how a run executes, not what it computes: never part of the identity. (A flag not
# listed here counts, so a new flag errs on the side of retraining.)
OPERATIONAL = frozenset({
    "resume", "stop_after_epochs", "device", "num_workers", "overwrite", "experiment_name",
    "checkpoint_dir", "use_wandb", "wandb_project", "log_every", "num_val_images", "cache_dir",
    "threads", "config", "data_root", "teacher_checkpoint", "deterministic", "channels_last",
    "compile",
})
# Flags added after runs existed, with the value every earlier run had in effect: recorded only
# when a run moves away from it, so adding a flag does not retrain every run that predates it.
INTRODUCED_LATER = {"feature_teacher": "teacher", "labelled_fraction": 1.0, "labelled_seed": 0,
                    **{f"synthetic_{name}": values[0] for name, values in WORLD_OPTIONS.items()}}
# Parts a resumed run must share with the run it continues.
RESUME_FIXED_GROUPS = ("data", "distillation")
KINDS = ("teacher", "student", "kd")
_UNSET = object()


def digest(value: Any) -> str:
    """sha256 hex of a JSON-serialisable value (keys sorted, so dict order does not matter)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def run_identity(args: Mapping[str, Any], flag_groups: Mapping[str, Sequence[str]], kind: str,
                 model_name: str, data_fingerprint: str,
                 teacher_fingerprint: Optional[str] = None,
                 storage: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The identity of a run (see the module docstring).

    Args:
        args: the resolved arguments (``vars(args)``).
        flag_groups: argparse group title → the destinations of its flags; a destination in no
            group goes to ``"other"``.
        kind: one of :data:`KINDS`.
        model_name: the trained model's name.
        data_fingerprint: of the training and validation splits.
        teacher_fingerprint: :func:`checkpoint_fingerprint` of the teacher (distillation only).
        storage: ``None`` when the samples are read from the files, else how a cache stores them.

    Returns:
        The identity dict, ``fingerprint`` included.
    """
    if kind not in KINDS:
        raise ValueError(f"run kind must be one of {KINDS}, got {kind!r}")
    group_of = {dest: group for group, dests in flag_groups.items() for dest in dests}
    settings: Dict[str, Dict[str, Any]] = {}
    for dest, value in sorted(args.items()):
        if dest not in OPERATIONAL and INTRODUCED_LATER.get(dest, _UNSET) != value:
            settings.setdefault(group_of.get(dest, "other"), {})[dest] = value
    identity: Dict[str, Any] = {
        "kind": kind, "model": model_name, "settings": json.loads(json.dumps(settings)),
        "data": data_fingerprint, "teacher": teacher_fingerprint,
    }
    if storage is not None:  # absent, not None: a run read from the files keeps its identity
        identity["storage"] = json.loads(json.dumps(storage))
    identity["fingerprint"] = digest(identity)
    return identity


def differences(saved: Mapping[str, Any], wanted: Mapping[str, Any],
                groups: Optional[Sequence[str]] = None) -> List[str]:
    """What differs between two identities, one short phrase per difference.

    Args:
        saved: the identity on disk.
        wanted: the identity of the run now asked for.
        groups: compare only these flag groups' settings (and, when ``"data"`` is among them, the
            data fingerprint; ``"distillation"``, the teacher); ``None``: everything.

    Returns:
        e.g. ``["image_size: 64 -> 128", "data files changed"]``; empty when they agree.
    """
    found: List[str] = []
    for key in ("kind", "model"):
        if saved.get(key) != wanted.get(key):
            found.append(f"{key}: {saved.get(key)} -> {wanted.get(key)}")
    saved_settings, wanted_settings = saved.get("settings", {}), wanted.get("settings", {})
    for group in sorted(set(saved_settings) | set(wanted_settings)):
        if groups is not None and group not in groups:
            continue
        old, new = saved_settings.get(group, {}), wanted_settings.get(group, {})
        for flag in sorted(set(old) | set(new)):
            if old.get(flag, "<unset>") != new.get(flag, "<unset>"):
                found.append(f"--{flag}: {old.get(flag, '<unset>')!r} -> "
                             f"{new.get(flag, '<unset>')!r}")
    if (groups is None or "data" in groups) and saved.get("data") != wanted.get("data"):
        found.append("data files changed (split CSVs or the size/mtime of a referenced file)")
    if (groups is None or "data" in groups) and saved.get("storage") != wanted.get("storage"):
        found.append(f"inputs: {_storage_text(saved)} -> {_storage_text(wanted)}")
    if ((groups is None or "distillation" in groups)
            and saved.get("teacher") != wanted.get("teacher")):
        found.append("teacher checkpoint changed")
    return found


def _storage_text(identity: Mapping[str, Any]) -> str:
    storage = identity.get("storage")
    if storage is None:
        return "read from the files"
    forms = ", ".join(f"{key} {form}" for key, form in sorted(storage["forms"].items()))
    return f"cache format {storage['cache_format']}" + (f" ({forms})" if forms else "")


def resume_differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> List[str]:
    """What a resumed run may not change: kind, model, data and distillation settings."""
    return differences(saved, wanted, RESUME_FIXED_GROUPS)


def checkpoint_fingerprint(checkpoint: Mapping[str, Any]) -> str:
    """Fingerprint of one checkpoint's weights, as a distillation student records its teacher.

    A hash of the model's name, config and every weight tensor's bytes: a teacher retrained to
    other weights, or another epoch of it, gives another fingerprint; an identical retraining
    gives the same one.
    """
    hasher = hashlib.sha256(digest([checkpoint["model_name"], checkpoint["model_config"]]).encode())
    for name, tensor in sorted(checkpoint["model_state"].items()):
        hasher.update(name.encode())
        hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()
