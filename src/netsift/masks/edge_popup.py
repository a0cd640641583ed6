"""edge-popup (Ramanujan et al., CVPR 2020): keep the top-k% of |score| in each layer.

Every weight has a real score (Kaiming-uniform init, as the published code). The forward pass keeps exactly
``k = round(density · N)`` weights per layer, those with the largest |score|; the gradient with respect to the
mask goes straight through to |score| and on through the absolute value, as in the published code. The
threshold is a ``torch.kthvalue`` over the layer's flattened |scores|. Scores move little per step, so
training steps search only a narrow band around the previous threshold (a partial sort of the few values
inside it instead of the whole layer, same result); ties, rare with real-valued scores, fall back to
``torch.topk``, so the per-layer density is always exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import MaskParametrization, dynamic_scale
from .frozen import derived_seed


def top_k_threshold(flat: Tensor, k: int, band: tuple[float, float] | None = None) -> tuple[Tensor, bool]:
    """The largest value of ``flat`` (non-negative) not among its ``k`` largest, so ``flat > t`` keeps ``k``.

    With ``band = (lo, hi)``, a guess bracketing the answer (last step's threshold ± δ), only the values
    inside the band are partially sorted; the answer is the same as the full ``torch.kthvalue``, which is the
    fallback when the guess does not bracket it. Returns the threshold and whether the band held it.
    """
    n = flat.numel()
    if band is not None:
        lo, hi = band
        above = int((flat > hi).sum())
        if above <= k:
            inside = flat[(flat > lo) & (flat <= hi)]
            need = k - above  # how many band values to keep
            if need == 0:
                return flat.new_tensor(hi), True
            if need < inside.numel():
                return torch.kthvalue(inside, inside.numel() - need).values, True
            if need == inside.numel():
                return flat.new_tensor(lo), True
    return torch.kthvalue(flat, n - k).values, False


class ThresholdTracker:
    """Repeated top-k thresholds of slowly changing values: searches a band around the last threshold.

    The band's half-width widens 4× after a miss and shrinks 20% while it holds, never below twice the last
    move of the threshold. The result is always the exact :func:`top_k_threshold`; only the cost changes.
    """

    def __init__(self):
        self.t: float | None = None
        self.delta = 0.0

    def __call__(self, flat: Tensor, k: int) -> Tensor:
        band = (self.t - self.delta, self.t + self.delta) if self.t is not None else None
        t, hit = top_k_threshold(flat, k, band)
        value = float(t)
        move = abs(value - self.t) if self.t is not None else 1e-3 * abs(value)
        self.delta = max(self.delta * (0.8 if hit else 4.0), 2 * move, 1e-7 * abs(value) + 1e-12)
        self.t = value
        return t


def top_k_mask(scores: Tensor, k: int, threshold: Tensor | None = None) -> Tensor:
    """Boolean mask of the ``k`` largest entries of ``|scores|`` (exactly ``k``, ties broken by ``topk``)."""
    flat = scores.detach().abs().reshape(-1)
    if k >= flat.numel():
        return torch.ones_like(scores, dtype=torch.bool)
    mask = flat > (top_k_threshold(flat, k)[0] if threshold is None else threshold)
    if int(mask.sum()) != k:
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[torch.topk(flat, k, sorted=False).indices] = True
    return mask.view_as(scores)


class _TopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, scores, scale, mask):
        out = w * mask
        if scale is not None:
            out.mul_(scale)
        ctx.save_for_backward(w, scores, mask, scale)
        return out

    @staticmethod
    def backward(ctx, g):
        w, scores, mask, scale = ctx.saved_tensors
        g_scores = g * w  # straight through the mask, then through |score|
        g_scale = torch.dot(g_scores.reshape(-1), mask.reshape(-1)) if ctx.needs_input_grad[2] else None
        if scale is not None:
            g_scores.mul_(scale)
        return None, g_scores.mul_(scores.sign()), g_scale, None


class TopKMask(MaskParametrization):
    """Per-layer top-k of |score|; the straight-through gradient reaches the scores."""

    def __init__(self, weight: Tensor, density: float, rescale: str = "none", seed: int = 0, name: str = ""):
        super().__init__(rescale)
        gen = torch.Generator().manual_seed(derived_seed(seed, "scores", name))
        fan_in = weight[0].numel()
        bound = math.sqrt(6.0 / ((1 + 5) * fan_in))  # kaiming_uniform_(a=sqrt(5)), as edge-popup's code
        self.scores = nn.Parameter((torch.rand(weight.shape, generator=gen) * 2 - 1) * bound)
        self.k = min(weight.numel(), max(1, round(density * weight.numel())))
        self._tracker = ThresholdTracker()  # a speed hint, not state

    def mask_params(self) -> list[nn.Parameter]:
        return [self.scores]

    def hard_mask(self) -> Tensor:
        return top_k_mask(self.scores, self.k)

    def _float_mask(self) -> Tensor:
        """This step's exact top-k mask as float (``torch.gt(..., out=float)``: no bool-to-float pass)."""
        flat = self.scores.detach().abs().reshape(-1)
        if self.k >= flat.numel():
            return torch.ones_like(self.scores)
        mask = torch.gt(flat, self._tracker(flat, self.k), out=torch.empty_like(flat))
        if int(mask.sum()) != self.k:  # ties
            mask = top_k_mask(self.scores, self.k).reshape(-1).to(flat.dtype)
        return mask.view_as(self.scores)

    def train_weight(self, w: Tensor) -> Tensor:
        mask = self._float_mask()
        scale = {"none": None, "dynamic": dynamic_scale(mask)}.get(self.rescale, self.scale)
        return _TopK.apply(w, self.scores, scale, mask)


def make(settings, seed: int = 0):
    """Factory for :func:`netsift.masks.base.apply`: an edge-popup mask per layer."""
    return lambda name, layer: TopKMask(layer.weight, settings.density, settings.rescale, seed, name)
