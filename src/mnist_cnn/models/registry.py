"""Model registry: every network is registered by name and built with `create_model(name)`.

The registry is a module of its own (as timm keeps one), so the model modules import it and
the package imports them, with no cycle. Every model takes `(N, C, 28, 28)` float32 images scaled to [0, 1] and returns
`(N, num_classes)` logits, so training, evaluation, export and serving treat them alike.
"""
from __future__ import annotations

import inspect
import sys
from typing import Any, Callable

import torch
from torch import nn

from mnist_cnn.errors import CheckpointError, UsageError

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


# Config fields a network may take as keyword arguments (see TrainConfig); 0 = the network's default.
SHAPE_OPTIONS = ("depth", "width")


def shape_options(name: str) -> tuple[str, ...]:
    """The SHAPE_OPTIONS the registered network `name` accepts (its constructor's keywords)."""
    accepted = inspect.signature(_REGISTRY[name]).parameters
    return tuple(option for option in SHAPE_OPTIONS if option in accepted)


def saved_shape(config: dict[str, Any]) -> dict[str, int]:
    """The SHAPE_OPTIONS of a saved config (configs older than these fields hold none: 0 = default)."""
    return {option: config.get(option) or 0 for option in SHAPE_OPTIONS}


def create_model(name: str, num_classes: int = 10, in_channels: int = 1, **options: Any) -> nn.Module:
    """Build a freshly initialised model by its registered name.

    `options` are SHAPE_OPTIONS (e.g. depth=2, width=48); a 0 or None value means the network's
    default, a non-zero one for a network that does not take it is refused.
    """
    try:
        build = _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}") from None
    unknown = sorted(set(options) - set(SHAPE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown model option(s): {', '.join(unknown)}")
    given = {k: int(v) for k, v in options.items() if v}
    for option in given:
        if option not in shape_options(name):
            raise UsageError(f"--{option} applies to {', '.join(n for n in model_names() if option in shape_options(n))}"
                             f" only; model {name!r} has a fixed {option}")
    return build(num_classes=num_classes, in_channels=in_channels, **given)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_model_state(model: nn.Module, state_dict: dict[str, Any], source: Any) -> None:
    """Load saved weights, turning a shape or key mismatch into a one-line CheckpointError naming
    `source`; warn on stderr when they are not finite.

    The shapes are checked (by load_state_dict) before any value is looked at: a small file can
    hold a tensor that claims 10^9 elements over one stored value (`expand`), which the finite
    check would materialise; once loaded, every tensor is the model's own size."""
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        lines = str(e).strip().splitlines()
        detail = next((line.strip() for line in lines[1:] if line.strip()), lines[0] if lines else "")
        raise CheckpointError(f"{source} does not fit this model: {detail[:200]}") from None
    weights = [t for t in model.state_dict().values() if t.is_floating_point()]
    if not all(bool(torch.isfinite(t).all()) for t in weights):
        print(f"warning: {source} holds weights that are not finite (NaN or inf); its predictions are "
              "meaningless (did training diverge? try a lower --lr)", file=sys.stderr)
