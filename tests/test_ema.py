"""The weight EMA on its own: hand-computed updates with the decay warm-up, integer buffers copied,
continuing a saved average, lending a model weights, the --ema_decay flag. (Its use by the
training engine is tested in tests/test_engine.py.)"""
from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from training import cli
from training.ema import WeightEma, swapped_weights


def _tiny() -> nn.Sequential:
    """One weight, BatchNorm's float buffers and its integer ``num_batches_tracked``."""
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    return model


def _set(model: nn.Sequential, weight: float, mean: float, batches: int) -> None:
    """What an optimizer step and a training forward do to the model, in place."""
    with torch.no_grad():
        model[0].weight.fill_(weight)
        model[1].running_mean.fill_(mean)
        model[1].num_batches_tracked.fill_(batches)


def test_two_updates_by_hand_with_the_decay_warm_up() -> None:
    model = _tiny()
    ema = WeightEma(model, decay=0.5)
    assert [ema.decay_at(t) for t in (0, 1, 8, 9, 100)] == pytest.approx(
        [1 / 10, 2 / 11, 0.5, 0.5, 0.5])  # (1 + t) / (10 + t) until it passes 0.5

    _set(model, weight=2.0, mean=1.0, batches=1)
    ema.update()  # decay 0.1: 0.1 * old + 0.9 * new
    average = ema.state_dict()
    assert average["0.weight"].item() == pytest.approx(0.1 * 1.0 + 0.9 * 2.0)  # 1.9
    assert average["1.running_mean"].item() == pytest.approx(0.9)
    assert average["1.running_var"].item() == 1.0  # unchanged buffer: averaged with itself
    assert average["1.num_batches_tracked"].item() == 1  # copied, not averaged

    _set(model, weight=4.0, mean=2.0, batches=2)
    ema.update()  # decay 2/11
    assert average["0.weight"].item() == pytest.approx((2 * 1.9 + 9 * 4.0) / 11)  # 3.6182
    assert average["1.running_mean"].item() == pytest.approx((2 * 0.9 + 9 * 2.0) / 11)  # 1.8
    assert average["1.num_batches_tracked"].item() == 2
    assert average["1.num_batches_tracked"].dtype == torch.long
    assert ema.updates == 2
    assert model[0].weight.item() == 4.0  # the model itself is untouched
    assert {id(t) for t in ema.buffers()} == {id(average[k]) for k in (
        "1.running_mean", "1.running_var", "1.num_batches_tracked")}


def test_a_loaded_average_continues_like_the_original() -> None:
    model = _tiny()
    original = WeightEma(model, decay=0.9)
    for step in range(3):
        _set(model, weight=float(step), mean=0.5 * step, batches=step)
        original.update()
    continued = WeightEma(model, decay=0.9)  # starts from the model's weights, update 0
    saved = {name: tensor.clone() for name, tensor in original.state_dict().items()}
    continued.load_state_dict(saved, original.updates)
    _set(model, weight=7.0, mean=3.0, batches=4)
    original.update()
    continued.update()
    for name, value in original.state_dict().items():
        assert torch.equal(continued.state_dict()[name], value), name
    assert continued.updates == 4


def test_decay_outside_zero_one_is_refused() -> None:
    for decay in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="EMA decay must be in"):
            WeightEma(_tiny(), decay)


def test_swapped_weights_lends_weights_and_gives_the_own_back_exactly() -> None:
    model, other = _tiny(), _tiny()
    _set(other, weight=3.0, mean=0.25, batches=5)
    own = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    weight = model[0].weight
    x = torch.ones(2, 1)
    model.eval()
    with swapped_weights(model, other.state_dict()):
        assert torch.equal(model(x), other.eval()(x))
        assert model[1].num_batches_tracked.item() == 5
    assert model[0].weight is weight  # same tensors (optimizers keep theirs), own values back
    for name, value in model.state_dict().items():
        assert torch.equal(value, own[name]), name


def test_ema_decay_flag_accepts_zero_to_below_one() -> None:
    assert cli.ema_decay("0") == 0.0 and cli.ema_decay("0.999") == 0.999
    for text, problem in (("1", "must be < 1"), ("-0.1", "must be >= 0"), ("nan", "finite")):
        with pytest.raises(argparse.ArgumentTypeError, match=problem):
            cli.ema_decay(text)
    args = cli.build_parser("student", None).parse_args([])
    assert args.ema_decay == 0.0  # off by default
