"""Fully connected networks."""

from __future__ import annotations

from torch import nn

from . import register, scaled


@register("lenet300")
def lenet300(in_channels: int, image_size: int, num_classes: int, width: float = 1.0, bias: bool = True) -> nn.Module:
    """LeNet-300-100 on flattened images."""
    h1, h2 = scaled(300, width), scaled(100, width)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, h1, bias=bias), nn.ReLU(inplace=True),
        nn.Linear(h1, h2, bias=bias), nn.ReLU(inplace=True),
        nn.Linear(h2, num_classes, bias=bias),
    )
