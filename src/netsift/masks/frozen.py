"""Frozen random weights: the init recipes, baking a mask into them, and hashing them.

A weight subnetwork of a random network is fully described by the architecture manifest, the init recipe
(scheme + seed), one bit per prunable weight and one scale per layer. Everything here is deterministic and
independent of the thread count, so the compact export can regenerate the weights bit for bit.

Each prunable layer (``netsift.models.prunable_layers``) draws its weights from its own ``torch.Generator``
seeded by SHA-256 of ``(seed, layer name)``; the seed of the data split and of training is never reused for
the weights, so the weights do not correlate with the training randomness.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor, nn

from ..errors import choose
from ..models import prunable_layers

from .methods import INIT_SCHEMES, check_scheme  # noqa: F401  (declared torch-free)


def derived_seed(seed: int, *tags: str) -> int:
    """A 63-bit seed derived from ``seed`` and ``tags`` by SHA-256 (stable across platforms and versions)."""
    digest = hashlib.sha256(":".join([str(int(seed)), *tags]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _fan_in(weight: Tensor) -> int:
    return weight.shape[1] * math.prod(weight.shape[2:]) if weight.dim() > 1 else weight.shape[0]


@torch.no_grad()
def init_frozen(model: nn.Module, scheme: str = "signed-constant", seed: int = 0) -> nn.Module:
    """Re-initialise every parameter and buffer of ``model`` from ``seed``; return it.

    Every module with a ``reset_parameters`` (or, for batch norm, ``reset_running_stats``) is reset in
    registration order under a private generator state seeded by ``derived_seed(seed, "model")`` (the global
    RNG is left untouched); then every prunable weight (Linear, Conv2d) is overwritten with the ``scheme``
    init drawn from its own generator, seeded by ``(seed, layer name)``. The result depends on ``seed`` and
    the architecture only, never on what ran before. Tensors of modules with no reset method (a custom
    ``nn.Parameter`` of your own module) keep their values: give them a deterministic init in ``__init__``.
    """
    choose(scheme, INIT_SCHEMES, "--init")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(seed, "model"))
        for module in model.modules():
            if callable(getattr(module, "reset_parameters", None)):
                module.reset_parameters()
            elif callable(getattr(module, "reset_running_stats", None)):
                module.reset_running_stats()
    for name, layer in prunable_layers(model):
        w = layer.weight
        gen = torch.Generator(device="cpu").manual_seed(derived_seed(seed, "weight", name))
        std = math.sqrt(2.0 / _fan_in(w))  # Kaiming normal, fan_in, ReLU gain
        draw = torch.randn(w.shape, generator=gen, dtype=torch.float32) * std
        if scheme == "signed-constant":
            draw = torch.where(draw >= 0, std, -std).to(torch.float32)
        w.copy_(draw.to(device=w.device, dtype=w.dtype))
    return model


def frozen_network(manifest: dict, scheme: str = "signed-constant", seed: int = 0) -> nn.Module:
    """Build the architecture of ``manifest`` (see ``netsift.models.model_manifest``) with frozen random weights."""
    from ..models import build_from_manifest

    with torch.random.fork_rng(devices=[]):
        model = build_from_manifest(manifest)
    return init_frozen(model, scheme, seed)


def bake_weight(weight: Tensor, mask: Tensor, scale: Tensor | float) -> Tensor:
    """The effective weight ``weight * mask * scale``, computed in this order (the one definition of it)."""
    return weight * mask.to(weight.dtype) * torch.as_tensor(scale, dtype=weight.dtype, device=weight.device)


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the prunable weights of ``model`` (name, shape and float32 bytes, in layer order)."""
    h = hashlib.sha256()
    for name, layer in prunable_layers(model):
        w = layer.weight.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(w.shape)}".encode())
        h.update(w.numpy().tobytes())
    return h.hexdigest()
