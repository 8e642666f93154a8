"""Model registry: build_model(name, num_classes). New networks register themselves here.

A model may declare `weight_decay`: {parameter name: L2 coefficient}, which the loss reads;
the trainer knows nothing else about a particular network.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_REGISTRY: dict[str, Callable[[int], nn.Module]] = {}


def register(name: str):
    def wrap(factory: Callable[[int], nn.Module]):
        _REGISTRY[name] = factory
        return factory

    return wrap


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}: available {', '.join(model_names())}") from None
    return factory(num_classes)


@register("tutorial")
def _tutorial(num_classes: int) -> nn.Module:
    from .tutorial import TutorialNet

    return TutorialNet(num_classes)
