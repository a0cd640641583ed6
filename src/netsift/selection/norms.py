"""Normalisers across channels (LayerNorm, GroupNorm, RMSNorm) computed over the kept channels only.

A batch norm treats each channel alone, so masking a channel at its consumers is exactly removing it. A norm
whose statistics span channels is not: the pruned network's LayerNorm (ConvNeXt's ``conv_dw -> LayerNorm2d ->
fc1``) averages over the kept channels alone, while the masked network still averages over all of them. So
that a selection scores the network the user gets, :class:`~.masking.Masker` recomputes such a norm's output
with statistics over the kept channels (:func:`kept_norm`); the removed channels' outputs are left to the
consumers' masks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

NORMS: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
"""The normalisers whose statistics span channels (subclasses included, e.g. timm's ``LayerNorm2d``)."""


def norm_channels(module: nn.Module) -> int | None:
    """The number of channels ``module`` normalises across, or ``None`` when it is not a norm netsift can
    recompute (a LayerNorm over several trailing axes)."""
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
        shape = module.normalized_shape
        return int(shape[0]) if len(shape) == 1 else None
    return None


def kept_norm(module: nn.Module, x: Tensor, keep: Tensor, axis: int) -> Tensor:
    """``module(x)`` with its statistics taken over the channels where ``keep`` is non-zero.

    Args:
        module: a LayerNorm, GroupNorm or RMSNorm (or a subclass computing the same function).
        x: its input; for a (K, C) ``keep``, K equal blocks of rows, block ``k`` normalised with row ``k``.
        keep: (C,) or (K, C), 1 for the kept channels and 0 for the removed ones.
        axis: the channel axis of ``x``.

    Returns:
        a tensor shaped like ``x``; the removed channels hold finite values that the consumers mask.
    """
    k = keep.shape[0] if keep.dim() == 2 else 1
    keep = keep.reshape(k, -1).to(x.device, x.dtype)
    c = keep.shape[1]
    xs = x.reshape(k, x.shape[0] // k, *x.shape[1:])
    ax = axis % x.dim() + 1  # the channel axis of the blocked view
    if isinstance(module, nn.GroupNorm):
        g = module.num_groups
        xs = xs.reshape(*xs.shape[:ax], g, c // g, *xs.shape[ax + 1:])
        m = keep.reshape(k, *(1,) * (ax - 1), g, c // g, *(1,) * (xs.dim() - ax - 2))
        dims = tuple(range(ax + 1, xs.dim()))
    else:
        m = keep.reshape(k, *(1,) * (ax - 1), c, *(1,) * (xs.dim() - ax - 1))
        dims = (ax,)
    m = m.expand_as(xs) if isinstance(module, nn.GroupNorm) else m
    n = m.sum(dims, keepdim=True).clamp_min(1.0)
    if isinstance(module, nn.RMSNorm):
        eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
        y = xs * torch.rsqrt((xs * xs * m).sum(dims, keepdim=True) / n + eps)
    else:
        mu = (xs * m).sum(dims, keepdim=True) / n
        xc = xs - mu
        y = xc * torch.rsqrt((xc * xc * m).sum(dims, keepdim=True) / n + module.eps)
    y = y.reshape(x.shape)
    shape = [1] * x.dim()
    shape[axis % x.dim()] = c
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return y


def channel_axis(module: nn.Module, x: Tensor, out: Tensor) -> int | None:
    """The axis of ``x`` that ``module`` normalises across, found from one call (its input ``x`` and output
    ``out``): axis 1 for a GroupNorm; for a LayerNorm or RMSNorm the last axis, or axis 1 for a channels-first
    subclass (timm's ``LayerNorm2d``), the one whose recomputation with every channel kept gives ``out``.
    ``None``: neither does (a norm computing something else), and netsift leaves it as it is."""
    c = norm_channels(module)
    if c is None or not isinstance(out, Tensor) or out.shape != x.shape:
        return None
    if isinstance(module, nn.GroupNorm):
        return 1 if x.dim() >= 2 and x.shape[1] == c else None
    candidates = [a for a in dict.fromkeys((x.dim() - 1, 1)) if 0 < a < x.dim() and x.shape[a] == c]
    ones = torch.ones(c)
    with torch.no_grad():
        for a in candidates:
            got = kept_norm(module, x.detach(), ones, a)
            tol = 1e-4 * max(1.0, float(out.detach().abs().max())) if out.numel() else 0.0
            if math.isfinite(tol) and torch.allclose(got.float(), out.detach().float(), rtol=1e-3, atol=tol):
                return a
    return None
