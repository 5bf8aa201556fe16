"""An exponential moving average (EMA) of a model's weights, and a way to lend a model weights.

:class:`WeightEma` averages every entry of the model's ``state_dict``: the parameters and the
floating-point buffers (BatchNorm running statistics) are averaged, integer buffers
(``num_batches_tracked``) are copied. Its keys, shapes and layouts are the model's, so the
average is saved as the model's ``state_dict`` and loads into a freshly built model.

Decay warm-up: the t-th update (t = 0, 1, ...) uses the decay

    d_t = min(decay, (1 + t) / (10 + t)),

as TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` does. With a constant decay the
random initial weights would keep the weight decay^t, still 37 % after 1 / (1 - decay) updates;
with the warm-up their weight falls as 9! / t^9, and the average spans about the last
(10 + t) / 9 updates until that reaches the 1 / (1 - decay) updates of ``decay``.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional

import torch
from torch import nn


class WeightEma:
    """An exponential moving average of ``model``'s weights, started from its current ones.

    Args:
        model: the trained network. Its parameters and buffers must change in place (as
            optimizers, BatchNorm and ``load_state_dict`` change them): the average keeps
            references to them.
        decay: in (0, 1), the weight of the previous average once warmed up (see the module
            docstring); the average spans about 1 / (1 - decay) updates.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        live = model.state_dict(keep_vars=True)
        self._average = {name: tensor.detach().clone() for name, tensor in live.items()}
        floating = [name for name, tensor in live.items() if tensor.is_floating_point()]
        self._floating_live = [live[name].detach() for name in floating]
        self._floating_average = [self._average[name] for name in floating]
        self._copied = [(self._average[name], live[name].detach())
                        for name in live if name not in floating]
        parameters = {name for name, _ in model.named_parameters()}
        self._buffers = [tensor for name, tensor in self._average.items()
                         if name not in parameters]

    def decay_at(self, updates: int) -> float:
        """The decay of the update that follows ``updates`` earlier ones."""
        return min(self.decay, (1.0 + updates) / (10.0 + updates))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the model's current weights into the average (call after each optimizer step)."""
        weight = 1.0 - self.decay_at(self.updates)
        # average += weight * (current - average), one fused kernel per device and dtype.
        torch._foreach_lerp_(self._floating_average, self._floating_live, weight)
        for average, current in self._copied:
            average.copy_(current)
        self.updates += 1

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The averaged weights, keyed as the model's ``state_dict`` (the tensors themselves)."""
        return self._average

    def buffers(self) -> List[torch.Tensor]:
        """The averaged entries of the model's buffers (those ranks under torchrun may not share:
        each rank's BatchNorm statistics follow its own batches)."""
        return self._buffers

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, torch.Tensor], updates: int) -> None:
        """Continue a saved average.

        Args:
            state: averaged weights, as :meth:`state_dict` returned them (any device).
            updates: the number of updates that average has had (sets the decay warm-up).

        Raises:
            KeyError: ``state`` lacks an entry of the model.
        """
        for name, average in self._average.items():
            average.copy_(state[name])
        self.updates = updates


@contextlib.contextmanager
def swapped_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Inside the block ``model`` holds the weights ``state`` (a complete ``state_dict``, e.g.
    an EMA's); after it, exactly its own again. The model's tensors are overwritten in place,
    so optimizers, DDP and a compiled model keep working on them."""
    own = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.load_state_dict(state)
    try:
        yield
    finally:
        model.load_state_dict(own)


def resumed_ema(model: nn.Module, decay: float, checkpoint: Optional[Mapping[str, Any]],
                path: Optional[Path], announce: bool = True) -> Optional[WeightEma]:
    """The average of ``--ema_decay`` for a run (``None`` when ``decay`` is 0): the resumed
    checkpoint's when it has one, else a new one from the model's current (initial or resumed)
    weights.

    Args:
        model: the trained network, its weights already restored.
        decay: ``--ema_decay``.
        checkpoint: the checkpoint being resumed, or ``None``.
        path: its file, named in what is printed.
        announce: print when an average is dropped or started afresh (rank 0).
    """
    averaged = checkpoint is not None and "train_model_state" in checkpoint
    if decay == 0:
        if averaged and announce:
            print(f"--ema_decay 0: training on from {path}'s training weights; its weight "
                  "average is dropped")
        return None
    ema = WeightEma(model, decay)
    if averaged:
        assert checkpoint is not None
        ema.load_state_dict(checkpoint["model_state"], checkpoint["ema_updates"])
    elif checkpoint is not None and announce:
        print(f"--ema_decay {decay}: {path} holds no weight average; one starts from its weights")
    return ema
