"""Moving averages: of the weights (the evaluated model) and of scalar losses (summaries).

A recipe's weight average is any object with this interface (`ExponentialWeightAverage`
is the tutorial's): the trainer calls `update(model, step)` after every optimizer step on
every rank, saves `state_dict()` in each checkpoint, and evaluation loads the weights that
`evaluated_state()` returns. An average that writes back into the model (a lookahead) does
so inside `update`, and its `evaluated_state` is then the model's own.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_decay_at(num_updates: int, max_decay: float) -> float:
    """TensorFlow's ExponentialMovingAverage with num_updates: min(decay, (1+n)/(10+n)).

    `num_updates` is the global step after the optimizer update the average follows (the
    tutorial reads it under a control dependency on apply_gradients), so 1 for the first.
    """
    return min(max_decay, (1.0 + num_updates) / (10.0 + num_updates))


class ExponentialWeightAverage:
    """Shadow copies of a model's floating-point parameters and buffers, started at their
    initial values (as TensorFlow's shadow variables are) and updated after every step."""

    def __init__(self, model: nn.Module, max_decay: float) -> None:
        self.max_decay = max_decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._floats = [k for k, v in self.shadow.items() if v.is_floating_point()]  # averaged
        self._others = [k for k in self.shadow if k not in self._floats]  # copied (counters)

    @torch.no_grad()
    def update(self, model: nn.Module, num_updates: int) -> float:
        decay = ema_decay_at(num_updates, self.max_decay)
        current = model.state_dict()
        # shadow -= (1 - decay) * (shadow - value): TensorFlow's update, one fused call.
        shadows = [self.shadow[k] for k in self._floats]
        values = [current[k].detach() for k in self._floats]
        torch._foreach_lerp_(shadows, values, 1.0 - decay)
        for k in self._others:
            self.shadow[k].copy_(current[k])
        return decay

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def evaluated_state(self) -> dict[str, torch.Tensor]:
        """The weights to evaluate: the shadow copies, keyed like the model's state_dict."""
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        copy_saved_tensors(self.shadow, state)


def copy_saved_tensors(target: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    """Copy a saved average into its tensors; KeyError or ValueError if it is not one of
    this model's (other names, another shape), so it is never half loaded."""
    if set(saved) != set(target):
        raise KeyError(f"expected {len(target)} tensors named like the model's, got {len(saved)}")
    for k, v in saved.items():
        if v.shape != target[k].shape:
            raise ValueError(f"{k}: shape {tuple(v.shape)}, expected {tuple(target[k].shape)}")
    for k, v in saved.items():
        target[k].copy_(v)


class ScalarAverage:
    """0.9 moving average of named scalars, zero-debiased as TensorFlow averages tensors
    (not variables): the first value is reported as is, not pulled towards zero."""

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.biased: dict[str, float] = {}
        self.count = 0

    def update(self, values: dict[str, float]) -> dict[str, float]:
        self.count += 1
        for name, value in values.items():
            self.biased[name] = self.decay * self.biased.get(name, 0.0) + (1 - self.decay) * value
        return self.value()

    def value(self) -> dict[str, float]:
        correction = 1 - self.decay**self.count
        return {name: b / correction for name, b in self.biased.items()}

    def state_dict(self) -> dict:
        return {"biased": dict(self.biased), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        # Tensors stay tensors: the next update then rounds in float32 as an uninterrupted
        # run does (a Python float would make it round in float64 and differ in the last bit).
        self.biased = {k: v.clone() if isinstance(v, torch.Tensor) else float(v)
                       for k, v in state["biased"].items()}  # fmt: skip
        self.count = int(state["count"])
