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
"""
from __future__ import annotations

from typing import Any, Dict, TypedDict

import torch

AUDIO = "audio"
DEPTH = "depth"
VALID = "valid"
RGB = "rgb"
META = "meta"
# A dataset's splits, each one CSV per location (V2) or per dataset (V1).
SPLITS = ("train", "val", "test")


class Sample(TypedDict, total=False):
    audio: torch.Tensor
    depth: torch.Tensor
    valid: torch.Tensor
    rgb: torch.Tensor
    meta: Dict[str, Any]
