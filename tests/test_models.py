"""Every model: shapes, range, learning, determinism, errors, size, rebuild.

The teacher and the student share the feature layout; the official BatVision U-Net
(``official_unet``) is the published baseline, checked against its official parameter counts.
"""
from __future__ import annotations

import json
from typing import Optional, Tuple

import pytest
import torch

from models import FEATURE_KEYS, build_model, official_num_downs

OFFICIAL = "official_unet"
IN_CHANNELS = {"rgb_depth": 3, "binaural_attention": 2, OFFICIAL: 2}
MODEL_NAMES = tuple(IN_CHANNELS)
FEATURE_MODELS = ("rgb_depth", "binaural_attention")  # the pair with x1..x5 / d1..d4 features
BASES = (16, 32)
MAX_DEPTH = 12.0
# The official U-Net in these tests: 6 halvings, so a 64x64 input reaches a 1x1 bottleneck as
# the official unet_128 does at 128x128; its inputs must divide by 64.
OFFICIAL_NUM_DOWNS = 6
DEFAULT_SIZE = {"rgb_depth": (32, 48), "binaural_attention": (32, 48), OFFICIAL: (64, 64)}


def make_model(name: str, base: int, seed: int = 0, **kwargs) -> torch.nn.Module:
    """``name`` with width ``base`` (``ngf`` for the official U-Net) and ``MAX_DEPTH``."""
    torch.manual_seed(seed)
    if name == OFFICIAL:
        kwargs.setdefault("num_downs", OFFICIAL_NUM_DOWNS)
        return build_model(name, ngf=base, max_depth=MAX_DEPTH, **kwargs)
    return build_model(name, base_channels=base, max_depth=MAX_DEPTH, **kwargs)


def make_input(name: str, height: Optional[int] = None, width: Optional[int] = None,
               batch: int = 2) -> torch.Tensor:
    default_height, default_width = DEFAULT_SIZE[name]
    generator = torch.Generator().manual_seed(1)
    return torch.rand(batch, IN_CHANNELS[name], height or default_height, width or default_width,
                      generator=generator)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("name", FEATURE_MODELS)
def test_depth_shape_range_and_features(name: str, base: int) -> None:
    depth, features = make_model(name, base)(make_input(name), return_features=True)
    assert depth.shape == (2, 1, 32, 48)
    assert torch.isfinite(depth).all()
    assert 0.0 <= depth.min() and depth.max() <= MAX_DEPTH
    assert tuple(features) == FEATURE_KEYS
    assert all(torch.isfinite(feature).all() for feature in features.values())


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_parameter_learns(name: str, base: int) -> None:
    """A few Adam steps on an L1 loss change every parameter tensor, BatchNorm affines included.

    Adam moves a weight by about lr whatever the size of its gradient, but not at all while that
    gradient is exactly zero, so an unchanged tensor means a parameter no gradient ever reached
    (unused, detached, or blocked). Three steps, because the zero-initialised attention output
    projections pass no gradient to the attention's other weights until their first update.
    """
    # 64 px: the student's x2 level (32x32 tokens) attends along time, x3..x5 globally; the
    # official U-Net reaches its 1x1 bottleneck.
    model = make_model(name, base)
    model.train()
    x = make_input(name, 64, 64)
    target = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(2)) * MAX_DEPTH
    parameters = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in parameters.items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(3):
        optimizer.zero_grad()
        (model(x) - target).abs().mean().backward()
        assert [n for n, p in parameters.items() if not torch.isfinite(p.grad).all()] == []
        if step == 0:
            # Zero-initialised output projections start the attention as identity but must learn.
            projections = [p for n, p in parameters.items() if n.endswith("out_proj.weight")]
            assert len(projections) == (8 if name == "binaural_attention" else 0)
            assert all(p.grad.abs().sum() > 0 for p in projections)
        optimizer.step()
    assert [n for n, p in parameters.items() if torch.equal(p.detach(), before[n])] == []


@pytest.mark.parametrize("attention_levels", [(2, 3, 4, 5), (1, 2, 3, 4, 5), ()])
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("size", [(32, 48), (64, 64)])
def test_student_features_have_teacher_shapes(base: int, attention_levels: tuple,
                                              size: tuple) -> None:
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


@pytest.mark.parametrize("name", FEATURE_MODELS)
@pytest.mark.parametrize("size", [(40, 32), (32, 40)])
def test_size_not_divisible_by_16_raises(name: str, size: tuple) -> None:
    with pytest.raises(ValueError, match="divisible by 16"):
        make_model(name, 16)(make_input(name, *size))


@pytest.mark.parametrize("size, num_downs", [((64, 64), 6), ((128, 128), 7), ((64, 128), 6)])
def test_official_unet_depth_shape_and_range(size: Tuple[int, int], num_downs: int) -> None:
    model = make_model(OFFICIAL, 8, num_downs=num_downs)
    depth = model(make_input(OFFICIAL, *size))
    assert depth.shape == (2, 1, *size)
    assert torch.isfinite(depth).all()
    assert 0.0 <= depth.min() and depth.max() <= MAX_DEPTH
    assert depth.std() > 0  # not a constant map


@pytest.mark.parametrize("size", [(32, 64), (64, 96)])
def test_official_unet_size_not_divisible_by_2_to_num_downs_raises(size: Tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="divisible by 64, got"):
        make_model(OFFICIAL, 8)(make_input(OFFICIAL, *size))


@pytest.mark.parametrize("train", [True, False])
def test_official_unet_head_init_starts_every_pixel_at_the_chosen_depth(train: bool) -> None:
    model = make_model(OFFICIAL, 8, head_init_depth=3.0).train(train)
    # logit(3 / 12) = ln(0.25 / 0.75), by hand.
    assert model.net.up[-1].bias.item() == pytest.approx(-1.098612, abs=1e-6)
    depth = model(make_input(OFFICIAL) * 10.0)
    # The output layer also reads the outermost skip, the first convolution without BatchNorm,
    # so loud inputs move single pixels by a few centimetres; the map still starts at 3 m.
    assert depth.min() > 2.9 and depth.max() < 3.1
    assert depth.median().item() == pytest.approx(3.0, abs=0.01)
    assert model.config["head_init_depth"] == 3.0
    # pix2pix's own start sits around max_depth / 2, and its config (that of every run from
    # before the lever) carries no head_init_depth.
    plain = make_model(OFFICIAL, 8).train(train)
    assert (plain(make_input(OFFICIAL)) - 3.0).abs().mean() > 1.0
    assert "head_init_depth" not in plain.config


@pytest.mark.parametrize("init_depth", [0.0, MAX_DEPTH, 20.0])
def test_official_unet_head_init_outside_the_range_raises(init_depth: float) -> None:
    with pytest.raises(ValueError, match="head init depth"):
        make_model(OFFICIAL, 8, head_init_depth=init_depth)


def test_official_unet_has_no_features_to_distill() -> None:
    with pytest.raises(ValueError, match="no teacher-compatible features"):
        make_model(OFFICIAL, 8)(make_input(OFFICIAL), return_features=True)


@pytest.mark.parametrize("image_size, expected", [(32, 5), (64, 6), (128, 7), (256, 8)])
def test_official_num_downs_reaches_a_1x1_bottleneck(image_size: int, expected: int) -> None:
    assert official_num_downs(image_size) == expected


@pytest.mark.parametrize("image_size", [16, 48, 100])
def test_official_num_downs_rejects_sizes_without_a_1x1_bottleneck(image_size: int) -> None:
    with pytest.raises(ValueError, match="power-of-two image size"):
        official_num_downs(image_size)


def test_official_unet_rejects_too_few_downs() -> None:
    with pytest.raises(ValueError, match="num_downs must be >= 5"):
        build_model(OFFICIAL, ngf=8, num_downs=4)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_wrong_channel_count_raises(name: str) -> None:
    with pytest.raises(ValueError, match="expected input of shape"):
        make_model(name, 16)(torch.rand(1, 4, 32, 32))


def count_parameters_on_meta(name: str, **kwargs) -> int:
    with torch.device("meta"):  # counts without allocating or initialising weights
        model = build_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("ngf, num_downs, expected", [
    (64, 8, 54_408_833),  # unet_256, the official BatVision baseline
    (32, 7, 10_458_945),  # unet_128 at ngf 32
])
def test_official_unet_has_the_official_parameter_count(ngf: int, num_downs: int,
                                                        expected: int) -> None:
    assert count_parameters_on_meta(OFFICIAL, ngf=ngf, num_downs=num_downs) == expected


def test_teacher_parameter_count_at_base_64() -> None:
    count = count_parameters_on_meta("rgb_depth", base_channels=64)
    assert count == pytest.approx(17.26e6, rel=0.01)


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
