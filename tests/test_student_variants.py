"""The student's options: image-query decoder, ILD input channel, depth-head initialisation."""
from __future__ import annotations

import json
from typing import Dict

import pytest
import torch

from datasets.recipes import swap_ears
from models import build_model
from models.blocks import DepthHead, UNetDecoder, encoder_channels
from models.query_decoder import ImageQueryDecoder
from verify_feature_compatibility import compare_features

BASE = 8
MAX_DEPTH = 15.0
VARIANTS: Dict[str, Dict] = {
    "query": dict(decoder="query"),
    "ild": dict(input_features="ild"),
    "ild_ipd": dict(input_features="ild_ipd"),
    "head_init": dict(head_init_depth=3.0),
    "all": dict(decoder="query", input_features="ild", head_init_depth=3.0),
}


def make_student(seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("binaural_attention", base_channels=BASE, attention_levels=(4, 5),
                       max_depth=MAX_DEPTH, **options)


def spectrogram(size: int = 64, batch: int = 2, seed: int = 1, channels: int = 2) -> torch.Tensor:
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def audio_for(student: torch.nn.Module, **kwargs) -> torch.Tensor:
    """A random input with the channels the student reads (4 with the phase difference)."""
    return spectrogram(channels=student.in_channels, **kwargs)


def test_defaults_build_todays_student() -> None:
    student = make_student()
    # 505,465 parameters: counted on the student before these options existed.
    assert sum(p.numel() for p in student.parameters()) == 505_465
    assert (student.config["decoder"], student.config["input_features"],
            student.config["head_init_depth"]) == ("unet", "magnitude", None)
    assert isinstance(student.decoder, UNetDecoder)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [64, 128])
def test_feature_shapes_equal_the_teachers(variant: str, size: int) -> None:
    with torch.device("meta"):  # shapes only: instant at any size
        teacher = build_model("rgb_depth", base_channels=BASE)
        student = make_student(**VARIANTS[variant])
    report = compare_features(teacher, student, size)
    assert report["match"], report["reason"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_backward_finite_and_every_parameter_learns(variant: str) -> None:
    student = make_student(**VARIANTS[variant])
    depth, features = student(audio_for(student), return_features=True)
    assert depth.shape == (2, 1, 64, 64) and torch.isfinite(depth).all()
    assert all(torch.isfinite(feature).all() for feature in features.values())
    depth.mean().backward()
    parameters = dict(student.named_parameters())
    assert [n for n, p in parameters.items() if p.grad is None] == []
    assert [n for n, p in parameters.items() if not torch.isfinite(p.grad).all()] == []
    # The ear attention starts as the identity (zero output projection), so only that projection
    # gets gradient there at step one; everything else, the new decoder included, must get some.
    def starts_silent(name: str) -> bool:
        return name.split(".")[0] in ("left_from_right", "right_from_left") and "out_proj" not in name

    assert [n for n, p in parameters.items() if p.grad.abs().sum() == 0 and not starts_silent(n)] == []


@pytest.mark.parametrize("bilinear", [True, False])
def test_query_decoder_has_the_unet_decoders_shapes(bilinear: bool) -> None:
    torch.manual_seed(0)
    encoded = {f"x{level}": torch.rand(2, channels, 64 // 2 ** (level - 1), 48 // 2 ** (level - 1))
               for level, channels in enumerate(encoder_channels(BASE, bilinear), start=1)}
    query = ImageQueryDecoder(BASE, bilinear)(encoded)
    unet = UNetDecoder(BASE, bilinear)(encoded)
    assert {k: v.shape for k, v in query.items()} == {k: v.shape for k, v in unet.items()}


@pytest.mark.parametrize("decoder", ["unet", "query"])
def test_head_init_starts_every_pixel_at_the_chosen_depth(decoder: str) -> None:
    student = make_student(decoder=decoder, head_init_depth=3.0)
    # logit(3 / 15) = ln(0.2 / 0.8), by hand.
    assert student.head.conv.bias.item() == pytest.approx(-1.386294, abs=1e-6)
    depth = student(spectrogram(size=64, batch=2) * 10.0)
    assert depth.min() > 2.97 and depth.max() < 3.03
    # Without it, the start is nowhere near (the default init sits around max_depth / 2).
    assert (make_student(decoder=decoder)(spectrogram()) - 3.0).abs().mean() > 1.0


def test_depth_head_init_works_for_any_decoder_map() -> None:
    torch.manual_seed(0)
    head = DepthHead(64, max_depth=30.0, init_depth=6.0)  # the teacher's width at base 64
    depth = head(torch.rand(2, 64, 8, 8) * 3.0)
    assert depth.min() > 5.9 and depth.max() < 6.1


@pytest.mark.parametrize("init_depth", [0.0, -1.0, MAX_DEPTH, 20.0])
def test_head_init_outside_the_range_raises(init_depth: float) -> None:
    with pytest.raises(ValueError, match="head init depth"):
        make_student(head_init_depth=init_depth)


def test_ild_encoders_see_their_ear_and_the_level_difference() -> None:
    student = make_student(input_features="ild").eval()  # one sample: BatchNorm in eval mode
    seen = {}
    for side in ("left", "right"):
        stage = getattr(student, f"{side}_encoder").stages[0]
        stage.register_forward_pre_hook(lambda module, inputs, side=side: seen.update({side: inputs[0]}))
    x = torch.stack([torch.full((16, 16), 3.0), torch.full((16, 16), 1.0)])[None]  # left 3, right 1
    student(x)
    assert seen["left"][0, :, 0, 0].tolist() == [3.0, 2.0]
    assert seen["right"][0, :, 0, 0].tolist() == [1.0, -2.0]


def test_ipd_encoders_see_the_phase_relative_to_their_own_ear_and_swap_with_the_ears() -> None:
    student = make_student(input_features="ild_ipd").eval()
    seen = {}
    for side in ("left", "right"):
        stage = getattr(student, f"{side}_encoder").stages[0]
        stage.register_forward_pre_hook(lambda module, inputs, side=side: seen.update({side: inputs[0]}))
    # left 3, right 1, cos 0.6, sin 0.8
    x = torch.stack([torch.full((16, 16), v) for v in (3.0, 1.0, 0.6, 0.8)])[None]
    student(x)
    left, right = seen["left"][0, :, 0, 0], seen["right"][0, :, 0, 0]
    torch.testing.assert_close(left, torch.tensor([3.0, 2.0, 0.6, 0.8]))
    torch.testing.assert_close(right, torch.tensor([1.0, -2.0, 0.6, -0.8]))
    student(swap_ears(x))  # the mirrored recording: the encoders trade inputs exactly
    assert torch.equal(seen["left"], right[None, :, None, None].expand(1, 4, 16, 16))
    assert torch.equal(seen["right"], left[None, :, None, None].expand(1, 4, 16, 16))


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_round_trips_through_build_model(variant: str) -> None:
    student = make_student(**VARIANTS[variant]).eval()
    config = json.loads(json.dumps(student.config))  # as a checkpoint stores it
    rebuilt = build_model(student.model_name, **config).eval()
    assert rebuilt.config == student.config
    rebuilt.load_state_dict(student.state_dict())  # strict: same parameters and buffers
    x = audio_for(student)
    torch.testing.assert_close(rebuilt(x), student(x))


@pytest.mark.parametrize("options, message", [
    (dict(decoder="transformer"), "decoder must be one of"),
    (dict(input_features="phase"), "input_features must be one of"),
])
def test_unknown_option_values_raise(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_student(**options)
