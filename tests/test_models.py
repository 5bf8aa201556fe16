"""The teacher and the student: shapes, range, gradients, determinism, errors, size, rebuild."""
from __future__ import annotations

import json

import pytest
import torch

from models import FEATURE_KEYS, build_model

IN_CHANNELS = {"rgb_depth": 3, "binaural_attention": 2}
MODEL_NAMES = tuple(IN_CHANNELS)
BASES = (16, 32)
MAX_DEPTH = 12.0


def make_model(name: str, base: int, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, base_channels=base, max_depth=MAX_DEPTH, **kwargs)


def make_input(name: str, height: int = 32, width: int = 48, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(batch, IN_CHANNELS[name], height, width, generator=generator)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_depth_shape_range_and_features(name: str, base: int) -> None:
    depth, features = make_model(name, base)(make_input(name), return_features=True)
    assert depth.shape == (2, 1, 32, 48)
    assert torch.isfinite(depth).all()
    assert 0.0 <= depth.min() and depth.max() <= MAX_DEPTH
    assert tuple(features) == FEATURE_KEYS
    assert all(torch.isfinite(feature).all() for feature in features.values())


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_backward_reaches_every_parameter(name: str, base: int) -> None:
    # 64 px: the student's x2 level (32x32 tokens) attends along time, x3..x5 globally.
    model = make_model(name, base)
    model(make_input(name, 64, 64)).mean().backward()
    parameters = dict(model.named_parameters())
    assert [n for n, p in parameters.items() if p.grad is None] == []
    assert [n for n, p in parameters.items() if not torch.isfinite(p.grad).all()] == []
    # Zero-initialised output projections start the attention as identity but must still learn.
    projections = [p for n, p in parameters.items() if n.endswith("out_proj.weight")]
    assert len(projections) == (8 if name == "binaural_attention" else 0)
    assert all(p.grad.abs().sum() > 0 for p in projections)


@pytest.mark.parametrize("attention_levels", [(2, 3, 4, 5), (1, 2, 3, 4, 5), ()])
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("size", [(32, 48), (64, 64)])
def test_student_features_have_teacher_shapes(base: int, attention_levels: tuple, size: tuple) -> None:
    _, teacher_features = make_model("rgb_depth", base)(
        make_input("rgb_depth", *size, batch=1), return_features=True)
    _, student_features = make_model("binaural_attention", base, attention_levels=attention_levels)(
        make_input("binaural_attention", *size, batch=1), return_features=True)
    assert {k: v.shape for k, v in student_features.items()} == \
        {k: v.shape for k, v in teacher_features.items()}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_same_seed_same_output(name: str) -> None:
    x = make_input(name)
    first, again = make_model(name, 16, seed=0)(x), make_model(name, 16, seed=0)(x)
    other_seed = make_model(name, 16, seed=1)(x)
    assert torch.equal(first, again)
    assert not torch.equal(first, other_seed)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("size", [(40, 32), (32, 40)])
def test_size_not_divisible_by_16_raises(name: str, size: tuple) -> None:
    with pytest.raises(ValueError, match="divisible by 16"):
        make_model(name, 16)(make_input(name, *size))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_wrong_channel_count_raises(name: str) -> None:
    with pytest.raises(ValueError, match="expected input of shape"):
        make_model(name, 16)(torch.rand(1, 4, 32, 32))


def count_parameters_on_meta(name: str, **kwargs) -> int:
    with torch.device("meta"):  # counts without allocating or initialising weights
        model = build_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


def test_teacher_parameter_count_at_base_64() -> None:
    assert count_parameters_on_meta("rgb_depth", base_channels=64) == pytest.approx(17.26e6, rel=0.01)


def test_student_parameters_within_about_twice_the_teacher() -> None:
    ratio = count_parameters_on_meta("binaural_attention", base_channels=64) \
        / count_parameters_on_meta("rgb_depth", base_channels=64)
    assert 1.0 < ratio <= 2.2


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_build_model_round_trip(name: str) -> None:
    model = make_model(name, 16)
    config = json.loads(json.dumps(model.config))  # as it would come back from a checkpoint
    rebuilt = build_model(model.model_name, **config)
    assert type(rebuilt) is type(model)
    assert rebuilt.config == model.config
    assert list(rebuilt.state_dict()) == list(model.state_dict())


def test_build_model_unknown_name_raises() -> None:
    with pytest.raises(ValueError, match="unknown model 'unet'"):
        build_model("unet")


@pytest.mark.parametrize("levels", [(0, 2), (2, 6), (3, 3)])
def test_student_rejects_bad_attention_levels(levels: tuple) -> None:
    with pytest.raises(ValueError, match="attention_levels"):
        build_model("binaural_attention", base_channels=16, attention_levels=levels)
