"""Supermasks (Zhou et al., NeurIPS 2019): m ~ Bernoulli(σ(s)) at every forward pass.

The straight-through estimator passes the mask's gradient through σ: d m / d s = σ'(s). The optional dynamic
weight rescale multiplies the kept weights by N/Σm of the current sample (``--rescale dynamic``; off by
default: it learned slower in our short CPU budgets). The sampling shares the fused kernel of
:mod:`.gumbel`; extraction keeps σ(s) ≥ 0.5.
"""

from __future__ import annotations

from .gumbel import LogitMask


def make(settings, seed: int = 0):
    """Factory for :func:`netsift.masks.base.apply`: a Bernoulli supermask per layer (scores start at 0)."""
    return lambda name, layer: LogitMask(layer.weight.shape, settings.rescale, 1.0, "sigmoid")
