"""Gumbel-Softmax weight masks with the ASLP parametrisation (Dupont et al., ICIP 2022), and a density target.

Each weight has a logit m̂ (initialised to 0). The forward pass samples the hard straight-through
Gumbel-Softmax of the two logits [m̂, 0]: m = 1[m̂ + g1 − g2 > 0] with g1 − g2 ~ Logistic(0, 1) = logit(u),
u ~ U(0, 1) (:func:`uniform16`), so m ~ Bernoulli(σ(m̂)); the backward pass uses the soft sample
σ((m̂ + logit(u))/τ), whose derivative with respect to m̂ is σ'((m̂ + logit(u))/τ)/τ. :class:`_BernoulliWeight`
fuses all of this into one autograd function (one uniform draw per weight, no soft sample in the forward
pass), which keeps a mask step close to a dense step. The ``naive`` parametrisation feeds
[log σ(m̂), log(1 − σ(m̂))] to ``torch.nn.functional.gumbel_softmax`` (same distribution; the ablation).

Extraction keeps m̂ ≥ 0. The published method has no density control. :class:`DensityProjection` adds one:
after every optimizer step all logits are shifted by one global constant so that exactly k = round(F·N) of
them are ≥ 0 (the constant sits just above the (k+1)-th largest logit). Sampling stays stochastic
(p = σ(m̂ − c)); only the extracted mask is pinned to density F.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..training import Callback
from .base import MaskParametrization, dynamic_scale, mask_params, masked_layers
from .edge_popup import ThresholdTracker


def uniform16(like: Tensor) -> Tensor:
    """Uniform noise in (0, 1) shaped like ``like``, 16 random bits per value: ``(k + 0.5) / 65536``.

    Drawing 64-bit integers and splitting them is about 3× cheaper on a CPU than ``torch.rand`` (which spends
    24 bits per value), and the mask is a coin flip: the resolution of 2^-16 biases P(m = 1) by at most 1.5e-5.
    """
    n = like.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=like.device).random_(-2**63, None)
    return bits.view(torch.int16)[:n].view(like.shape).to(like.dtype).add_(32768.5).mul_(1.0 / 65536)


class _BernoulliWeight(torch.autograd.Function):
    """``ŵ = s · w ⊙ m`` with ``m = 1[m̂ + logit(u) > 0] ~ Bernoulli(σ(m̂))`` and a straight-through gradient.

    ``grad="gumbel"``: d m / d m̂ = σ'((m̂ + logit(u))/τ)/τ (ASLP Gumbel-Softmax).
    ``grad="sigmoid"``: d m / d m̂ = σ'(m̂) (Zhou et al.'s supermask straight-through estimator).
    ``scale`` is a learned scalar (smart), ``None`` (no rescale) or ``"dynamic"`` (N/Σm, no gradient).
    The mask is computed as float directly (``torch.gt(..., out=float)``): multiplying by a bool tensor or
    ``torch.where`` costs 5–25× more than a float multiply on a CPU.
    """

    @staticmethod
    def forward(ctx, w, logits, scale, tau: float, grad: str):
        mask = torch.empty_like(logits)
        if grad == "sigmoid":
            saved = torch.sigmoid(logits)  # p; m = 1[u < p]
            torch.lt(uniform16(logits), saved, out=mask)
        else:
            saved = uniform16(logits).logit_().add_(logits)  # z = m̂ + g1 − g2
            torch.gt(saved, 0, out=mask)
        out = w * mask
        ctx.fixed_scale = dynamic_scale(mask) if isinstance(scale, str) else None
        if ctx.fixed_scale is not None:
            out.mul_(ctx.fixed_scale)
        elif scale is not None:
            out.mul_(scale)
        ctx.tau, ctx.grad, ctx.learned = tau, grad, isinstance(scale, Tensor)
        ctx.save_for_backward(w, saved, mask, scale if ctx.learned else None)
        return out

    @staticmethod
    def backward(ctx, g):
        w, saved, mask, scale = ctx.saved_tensors
        gm = g * w
        g_scale = torch.dot(gm.reshape(-1), mask.reshape(-1)) if ctx.learned and ctx.needs_input_grad[2] else None
        if ctx.learned:
            gm.mul_(scale)
        elif ctx.fixed_scale is not None:
            gm.mul_(ctx.fixed_scale)
        if ctx.grad == "sigmoid":
            g_logits = torch.ops.aten.sigmoid_backward(gm, saved)
        else:
            s = torch.sigmoid(saved / ctx.tau if ctx.tau != 1.0 else saved)
            g_logits = torch.ops.aten.sigmoid_backward(gm, s)
            if ctx.tau != 1.0:
                g_logits.div_(ctx.tau)
        return None, g_logits, g_scale, None, None


def bernoulli_weight(w: Tensor, logits: Tensor, rescale: str, scale: Tensor, tau: float = 1.0,
                     grad: str = "gumbel") -> Tensor:
    """Sampled effective weight of one layer (see :class:`_BernoulliWeight`)."""
    s = {"none": None, "dynamic": "dynamic"}.get(rescale, scale)
    return _BernoulliWeight.apply(w, logits, s, tau, grad)


class LogitMask(MaskParametrization):
    """A mask with one logit per weight, kept where the logit is ≥ 0 (Gumbel-Softmax and supermask)."""

    def __init__(self, shape: torch.Size, rescale: str = "smart", tau: float = 1.0, grad: str = "gumbel",
                 init: float = 0.0):
        super().__init__(rescale)
        self.logits = nn.Parameter(torch.full(shape, float(init)))
        self.tau, self.grad = tau, grad

    def mask_params(self) -> list[nn.Parameter]:
        return [self.logits]

    def hard_mask(self) -> Tensor:
        return self.logits.detach() >= 0

    def train_weight(self, w: Tensor) -> Tensor:
        return bernoulli_weight(w, self.logits, self.rescale, self.scale, self.tau, self.grad)


class NaiveGumbelMask(LogitMask):
    """The naive parametrisation [log σ(m̂), log(1 − σ(m̂))] through ``F.gumbel_softmax`` (ablation)."""

    def train_weight(self, w: Tensor) -> Tensor:
        two = torch.stack([F.logsigmoid(self.logits), F.logsigmoid(-self.logits)], dim=-1)
        m = F.gumbel_softmax(two, tau=self.tau, hard=True)[..., 0]
        if self.rescale == "dynamic":
            return w * m * dynamic_scale(m.detach() > 0)
        return w * m * self.scale


def make(settings, seed: int = 0):
    """Factory for :func:`netsift.masks.base.apply`: a Gumbel mask per layer."""
    cls = NaiveGumbelMask if settings.options["parametrization"] == "naive" else LogitMask
    tau, rescale, init = settings.options["tau"], settings.rescale, settings.options["logit_init"]
    return lambda name, layer: cls(layer.weight.shape, rescale, tau, "gumbel", init)


def callbacks(model: nn.Module, settings, train_cfg=None) -> list:
    """The density projection (with ``--density``) and the temperature anneal (with ``--tau-end``)."""
    out = [DensityProjection(model, settings.density)] if settings.density is not None else []
    tau, tau_end = settings.options["tau"], settings.options.get("tau_end")
    if tau_end is not None and tau_end != tau:
        out.append(TemperatureAnneal(model, tau, tau_end, train_cfg.epochs if train_cfg is not None else 1))
    return out


def annealed_tau(tau: float, tau_end: float, epoch: int, epochs: int) -> float:
    """Geometric anneal: ``tau`` at the first epoch (0-based ``epoch``), ``tau_end`` at the last of ``epochs``."""
    if epochs <= 1:
        return tau_end
    return tau * (tau_end / tau) ** (min(epoch, epochs - 1) / (epochs - 1))


class TemperatureAnneal(Callback):
    """Sets every logit mask's temperature to :func:`annealed_tau` at the start of each epoch.

    Stateless (the temperature is a function of the epoch), so a resumed run picks up the same schedule.
    """

    def __init__(self, model: nn.Module, tau: float, tau_end: float, epochs: int):
        self.model, self.tau, self.tau_end, self.epochs = model, tau, tau_end, epochs

    def on_epoch_start(self, epoch: int) -> None:
        t = annealed_tau(self.tau, self.tau_end, epoch, self.epochs)
        for _, _, p in masked_layers(self.model):
            if isinstance(p, LogitMask):
                p.tau = t

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        metrics["tau"] = annealed_tau(self.tau, self.tau_end, epoch, self.epochs)


@torch.no_grad()
def project_density(model: nn.Module, density: float, tracker: ThresholdTracker | None = None) -> float:
    """Shift all logits by one constant so that exactly ``round(density·N)`` are ≥ 0; returns the shift.

    The shift is the float just above the (k+1)-th largest logit t: every logit > t stays ≥ 0 after the
    subtraction and t itself becomes negative (float subtraction is monotonic), so the count is exact unless
    logits tie at t. ``tracker`` speeds up repeated calls (see :class:`.edge_popup.ThresholdTracker`).
    """
    params = mask_params(model)
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    n = flat.numel()
    k = min(n, max(1, round(density * n)))
    if k == n:
        shift = float(flat.min()) - 1.0
    else:
        t = (tracker or ThresholdTracker())(flat, k)
        shift = float(torch.nextafter(t, t.new_tensor(float("inf"))))
    for p in params:
        p.sub_(shift)
    return shift


class DensityProjection(Callback):
    """Keeps the extracted density of a logit mask at ``density`` by :func:`project_density` after each step."""

    def __init__(self, model: nn.Module, density: float):
        self.model, self.density, self.tracker = model, density, ThresholdTracker()

    def on_epoch_start(self, epoch: int) -> None:
        if epoch == 0:
            project_density(self.model, self.density, self.tracker)

    def on_step_end(self, step: int, loss: float) -> None:
        project_density(self.model, self.density, self.tracker)
