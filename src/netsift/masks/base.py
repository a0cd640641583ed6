"""The small interface behind every weight-mask method.

A method is a :class:`MaskParametrization`: a ``torch.nn.utils.parametrize`` module registered on the
``weight`` of each Linear and Conv2d layer. It computes the effective weight ``ŵ = s · (w ⊙ m)`` from the frozen
weight ``w``: while training it may sample ``m`` and must let gradients reach only its own mask parameters
(logits or scores) and the scale ``s``; in eval mode it uses the deterministic extracted mask
(:meth:`MaskParametrization.hard_mask`), so validation accuracy is the accuracy of the extracted network.

The scale ``s`` (one per layer) follows the rescale mode: ``none`` (1), ``smart`` (a learned scalar, Smart
Rescale of Dupont et al.) or ``dynamic`` (Zhou et al.'s ``N / Σm`` of the current mask, not learned).
"""

from __future__ import annotations

import copy
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import NetsiftError, choose
from ..models import prunable_layers
from .frozen import bake_weight
from .methods import RESCALES, MaskMethod  # noqa: F401  (declared torch-free)


Factory = Callable[[str, nn.Module], "MaskParametrization"]


class MaskParametrization(nn.Module):
    """Effective weight of one layer from its frozen weight; subclasses define the mask.

    Subclasses implement :meth:`train_weight` (training forward, gradients to :meth:`mask_params` and a smart
    scale only) and :meth:`hard_mask` (the deterministic boolean mask kept at extraction).
    """

    def __init__(self, rescale: str = "none"):
        super().__init__()
        self.rescale = choose(rescale, RESCALES, "--rescale")
        if rescale == "smart":
            self.scale = nn.Parameter(torch.ones(()))
        else:
            self.register_buffer("scale", torch.ones(()))

    def mask_params(self) -> list[nn.Parameter]:
        """The learned per-weight mask parameters (logits or scores); empty for a fixed mask."""
        return []

    def train_weight(self, w: Tensor) -> Tensor:
        """The effective weight during training (may sample)."""
        raise NotImplementedError

    def hard_mask(self) -> Tensor:
        """The deterministic boolean mask of the extracted network."""
        raise NotImplementedError

    def scale_for(self, mask: Tensor) -> Tensor:
        """The scale folded into the kept weights with ``mask`` (``N/Σm`` for dynamic rescale)."""
        if self.rescale == "dynamic":
            return dynamic_scale(mask)
        return self.scale.detach().float()

    def forward(self, w: Tensor) -> Tensor:
        if self.training:
            return self.train_weight(w)
        mask = self.hard_mask()
        return bake_weight(w, mask, self.scale_for(mask))


def dynamic_scale(mask: Tensor) -> Tensor:
    """Zhou et al.'s dynamic weight rescale ``N / Σm`` (float32 scalar; 1 for an all-zero mask)."""
    kept = mask.sum()
    return torch.where(kept > 0, mask.numel() / kept.clamp_min(1).float(), torch.ones((), device=mask.device))


def masked_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, MaskParametrization]]:
    """``(name, layer, parametrization)`` for every masked layer, in ``prunable_layers`` order."""
    for name, layer in prunable_layers(model):
        if parametrize.is_parametrized(layer, "weight"):
            p = layer.parametrizations.weight[0]
            if isinstance(p, MaskParametrization):
                yield name, layer, p


def apply(model: nn.Module, make: Callable[[str, nn.Module], MaskParametrization]) -> nn.Module:
    """Freeze every parameter of ``model`` and register ``make(name, layer)`` on each prunable weight.

    Raises:
        NetsiftError: the model has no Linear/Conv2d layer, or is already masked.
    """
    layers = prunable_layers(model)
    if not layers:
        raise NetsiftError("model has no Linear or Conv2d layer to mask")
    if any(parametrize.is_parametrized(layer) for _, layer in layers):
        raise NetsiftError("model already has parametrizations; extract() it first")
    model.requires_grad_(False)
    for name, layer in layers:
        parametrize.register_parametrization(layer, "weight", make(name, layer), unsafe=True)
    return model


def mask_params(model: nn.Module) -> list[nn.Parameter]:
    """All mask logits/scores of a masked model."""
    return [q for _, _, p in masked_layers(model) for q in p.mask_params()]


def scale_params(model: nn.Module) -> list[nn.Parameter]:
    """All learned (smart) scales of a masked model."""
    return [p.scale for _, _, p in masked_layers(model) if isinstance(p.scale, nn.Parameter)]


def frozen_weight(layer: nn.Module) -> Tensor:
    """The frozen weight under a layer's mask parametrization."""
    return layer.parametrizations.weight.original


@torch.no_grad()
def masks_and_scales(model: nn.Module) -> dict[str, tuple[Tensor, Tensor]]:
    """``{layer name: (bool mask, float32 scale)}`` of the extracted network."""
    out = {}
    for name, _, p in masked_layers(model):
        mask = p.hard_mask().detach().bool()
        out[name] = (mask.cpu(), p.scale_for(mask).detach().float().cpu().reshape(()))
    return out


@torch.no_grad()
def extract(model: nn.Module) -> nn.Module:
    """A plain copy of a masked model: parametrizations removed, each weight ``bake_weight(w, mask, scale)``."""
    found = masks_and_scales(model)
    if not found:
        raise NetsiftError("model has no weight masks to extract")
    plain = copy.deepcopy(model)
    for name, layer in prunable_layers(plain):
        if name not in found:
            continue
        # Unregister by hand: parametrize.remove_parametrizations would delete the ``weight`` property from
        # the parametrized class, which the deep copy shares with ``model``.
        w = frozen_weight(layer).detach()
        del layer._modules["parametrizations"]
        layer.__class__ = layer.__class__.__bases__[0]
        mask, scale = found[name]
        baked = nn.Parameter(bake_weight(w, mask.to(w.device), scale.to(w.device)))
        layer._parameters = {"weight": baked, **layer._parameters}
    plain.requires_grad_(True)
    return plain.eval()
