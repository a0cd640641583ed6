"""Random masks: a fixed random subset of exactly ``round(density · N)`` weights per layer.

The baseline for every learned mask. With frozen weights nothing is learned (except a smart scale if asked);
with ``train_weights`` the kept weights are trained (the random-pruning baseline).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import MaskParametrization, dynamic_scale
from .frozen import derived_seed


class RandomMask(MaskParametrization):
    """A fixed random mask with exact per-layer density."""

    def __init__(self, weight: Tensor, density: float, rescale: str = "none", seed: int = 0, name: str = ""):
        super().__init__(rescale)
        n = weight.numel()
        k = min(n, max(1, round(density * n)))
        gen = torch.Generator().manual_seed(derived_seed(seed, "random-mask", name))
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=gen)[:k]] = True
        self.register_buffer("mask", mask.view(weight.shape))

    def hard_mask(self) -> Tensor:
        return self.mask

    def train_weight(self, w: Tensor) -> Tensor:
        scale = dynamic_scale(self.mask) if self.rescale == "dynamic" else self.scale
        return torch.where(self.mask, w, 0.0) * scale


def make(settings, seed: int = 0):
    """Factory for :func:`netsift.masks.base.apply`: a random mask per layer."""
    return lambda name, layer: RandomMask(layer.weight, settings.density, settings.rescale, seed, name)
