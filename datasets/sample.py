"""The one definition of a BatVision sample, shared by every reader, cache, trainer and script.

A dataset item is a plain ``dict`` (so ``torch.utils.data.default_collate`` batches it) with
these keys:

``audio``
    float32 tensor. ``(2, S, S)`` spectrogram-like input for the ``spectrogram`` and ``mel``
    modes, ``(2, T)`` for ``waveform``. Channel 0 is the left ear, channel 1 the right ear.
``depth``
    float32 tensor ``(1, S, S)``, ground-truth depth in **metres**, clipped to
    ``[0, max_depth]``; 0 marks an invalid pixel (hole, NaN, -inf in the source).
``valid``
    bool tensor ``(1, S, S)``, ``depth > 0``.
``rgb``
    float32 tensor ``(3, S, S)`` in ``[0, 1]``; present only when the dataset has ``use_rgb``.
``meta``
    dict of strings/ints: ``location``, ``index``, ``audio_path`` (V2) or
    ``audio_path_left``/``audio_path_right`` (V1), ``depth_path``, ``camera_path`` ("" if none).
``sensor_valid``
    bool tensor ``(1, S, S)``, present only when a reader scores against the dense truth
    (``truth="dense"``): where the sensor's depth map is valid, so the errors inside its holes
    (``valid & ~sensor_valid``) can be told apart.

Dense truth: a simulated world knows the complete ray-cast depth and writes it beside the
sensor's (:func:`dense_depth_path`); real recordings have no such file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, TypedDict

import torch

AUDIO = "audio"
DEPTH = "depth"
VALID = "valid"
RGB = "rgb"
META = "meta"
SENSOR_VALID = "sensor_valid"
# What a reader scores against: the sensor's depth maps (with their holes, what every real
# dataset has) or the complete depth a simulated world also writes.
TRUTHS = ("sensor", "dense")
DENSE_DEPTH_FOLDER = "depth_dense"
# A dataset's splits, each one CSV per location (V2) or per dataset (V1).
SPLITS = ("train", "val", "test")


class Sample(TypedDict, total=False):
    audio: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor
    rgb: torch.Tensor
    meta: Dict[str, Any]
    sensor_valid: torch.Tensor


def dense_depth_path(depth_path: Path) -> Path:
    """Where a simulated world keeps the complete depth of the sensor depth map ``depth_path``:
    the same file name in the ``depth_dense`` folder beside the depth map's folder (V2
    ``<location>/depth/depth_7.npy`` → ``<location>/depth_dense/depth_7.npy``), in the same
    encoding, without holes."""
    return depth_path.parent.parent / DENSE_DEPTH_FOLDER / depth_path.name
