"""The model zoo: a registry of architectures that adapt to a data set's channels, image size and classes.

``build_model("conv4", in_channels=1, image_size=28, num_classes=10, width=0.5)`` builds a network; any
torchvision classification model is available as ``tv:<name>``. Register a new architecture with
:func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import NetsiftError

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """A registered architecture: its builder and a one-line description."""

    name: str
    builder: Builder
    description: str


REGISTRY: dict[str, ModelInfo] = {}


def register(name: str, description: str) -> Callable[[Builder], Builder]:
    """Decorator adding ``builder(in_channels, image_size, num_classes, width, **kw)`` to the zoo."""

    def wrap(builder: Builder) -> Builder:
        REGISTRY[name] = ModelInfo(name, builder, description)
        return builder

    return wrap


def model_names() -> list[str]:
    """Names accepted by :func:`build_model` (``tv:<name>`` is accepted too)."""
    return sorted(REGISTRY)


def build_model(name: str, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
                width: float = 1.0, **kwargs) -> nn.Module:
    """Build an architecture from the zoo, adapted to the input and class count.

    Raises:
        NetsiftError: unknown name, a non-positive width, or an input the architecture cannot take.
    """
    if width <= 0:
        raise NetsiftError(f"width multiplier must be positive, got {width}")
    if in_channels <= 0 or image_size <= 0 or num_classes <= 1:
        raise NetsiftError(f"impossible input: {in_channels} channels, {image_size}px images, {num_classes} classes")
    if name.startswith("tv:"):
        from .torchvision_models import build_torchvision

        return build_torchvision(name[3:], in_channels, image_size, num_classes, width=width, **kwargs)
    if name not in REGISTRY:
        raise NetsiftError(f"unknown model {name!r}; choose from: {', '.join(model_names())}, or tv:<torchvision name>")
    return REGISTRY[name].builder(in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                                  width=width, **kwargs)


def scaled(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, at least 1."""
    return max(1, int(round(channels * width)))


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Linear and Conv2d layers of ``model``, in registration order, with their names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def check_input(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Run one sample of ``shape`` through ``model``; raise a one-line error if the shapes do not fit."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    except Exception as e:  # shape errors come as RuntimeError, AssertionError (torch._assert), ValueError...
        raise NetsiftError(f"model cannot take inputs of shape {shape}: "
                           f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
    finally:
        model.train(was_training)


from . import convnets, mlp, mobilenet, resnet  # noqa: E402,F401  (registration side effects)
