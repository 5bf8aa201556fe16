"""Depth models: the RGB U-Net teacher, the binaural cross-attention student, and the official
BatVision U-Net (the published sound-only baseline, a reference row for every table).

Every model has ``model_name`` and a JSON-serialisable ``config`` (its constructor kwargs), so
``build_model(model.model_name, **model.config)`` rebuilds it, e.g. from a checkpoint.
"""
from __future__ import annotations

from typing import Callable, Dict

from torch import nn

from models.binaural_attention_model import BinauralAttentionModel, create_binaural_attention_model
from models.blocks import DECODER_KEYS, ENCODER_KEYS, FEATURE_KEYS
from models.official_unet import OfficialUNet, create_official_unet, official_num_downs
from models.rgb_depth_model import RGBDepthModel, create_rgb_depth_model

MODEL_BUILDERS: Dict[str, Callable[..., nn.Module]] = {
    RGBDepthModel.model_name: create_rgb_depth_model,
    BinauralAttentionModel.model_name: create_binaural_attention_model,
    OfficialUNet.model_name: create_official_unet,
}


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a model by name.

    Args:
        name: a key of :data:`MODEL_BUILDERS` (``"rgb_depth"``, ``"binaural_attention"``,
            ``"official_unet"``).
        **kwargs: that model's constructor arguments (e.g. a saved ``model.config``).

    Raises:
        ValueError: unknown name.
    """
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_BUILDERS)}")
    return MODEL_BUILDERS[name](**kwargs)


__all__ = [
    "BinauralAttentionModel", "DECODER_KEYS", "ENCODER_KEYS", "FEATURE_KEYS", "MODEL_BUILDERS",
    "OfficialUNet", "RGBDepthModel", "build_model", "create_binaural_attention_model",
    "create_official_unet", "create_rgb_depth_model", "official_num_downs",
]
