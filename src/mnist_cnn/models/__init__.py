"""Model registry: every network is registered by name and built with `create_model(name)`.

Adding a model is writing one class in this folder with `@register("name")`; nothing else
changes. Every model takes `(N, C, 28, 28)` float32 images scaled to [0, 1] and returns
`(N, num_classes)` logits, so training, evaluation, export and serving treat them alike.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from mnist_cnn.errors import UsageError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make `create_model(name)` build this class."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = cls
        return cls

    return add


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Build a freshly initialised model by its registered name."""
    try:
        build = _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}") from None
    return build(num_classes=num_classes, in_channels=in_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Importing the modules registers their models.
from mnist_cnn.models import seed  # noqa: E402,F401
from mnist_cnn.models import best  # noqa: E402,F401
from mnist_cnn.models import fast  # noqa: E402,F401
