"""training.tasks: the test-time mirror average of a model (--mirror_average)."""
from __future__ import annotations

from typing import Dict

import pytest
import torch

from datasets.sample import AUDIO, DEPTH, RGB
from models import build_model
from training.data import mirror
from training.tasks import MirrorAveraged


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
