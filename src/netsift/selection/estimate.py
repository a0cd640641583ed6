"""What a greedy selection (GFS, backward elimination) will cost, said before it starts.

A greedy step scores candidates by running the network's *suffix* (from the group's first consumer to the
logits) once per candidate on a minibatch of ``select_batch`` images, after one *prefix* pass (up to the first
consumer) per step. From the network's MACs per layer (in forward order), the groups' sizes and widths and the
candidates per step, :func:`estimate` counts the suffix passes and their MACs, and turns MACs into seconds with
this machine's measured speed: one timed forward pass of the whole network at the selection's batch size (in
the scoring's batch-norm mode). In tolerance mode the widths are not known in advance: the count is an upper
bound (every group grown to its full size), said as "at most".
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from .budget import MacsModel
from .groups import ChannelGroup


@dataclass
class Estimate:
    """Suffix passes and seconds a selection is expected to take (``upper``: an upper bound)."""

    passes: int
    seconds: float
    upper: bool
    macs_per_s: float  # this machine's measured speed (a dense forward at the selection's batch size)

    def line(self, label: str) -> str:
        """``GFS: about 12,400 suffix passes, ~3:10 on this machine``."""
        from ..progress import duration

        what = "at most" if self.upper else "about"
        return (f"{label.upper()}: {what} {self.passes:,} suffix passes, ~{duration(self.seconds)} on this machine "
                f"({self.macs_per_s / 1e9:.2f} GMAC/s measured)")


def _steps(method: str, size: int, width: int | None, candidates: int) -> list[int]:
    """Candidates scored at each step of one group (``width`` ``None``: tolerance mode, the longest run)."""
    k = candidates if candidates > 0 else size
    if method == "backward":
        target = width if width is not None else 1
        return [min(k, n) for n in range(size, target, -1)]
    steps = width if width is not None else size
    return [min(k, size - s) for s in range(steps)]


def _candidates(ctx, gi: int) -> int:
    """Candidates per step as :meth:`~.base.SelectionContext.n_candidates` draws them (0: all)."""
    if ctx.epsilon is not None:
        n = ctx.groups[gi].size
        k = ctx.widths[gi] if ctx.widths else max(1, n // 2)
        return max(1, math.ceil(n / k * math.log(1 / ctx.epsilon)))
    return ctx.candidates


def _suffix_fractions(model: nn.Module, groups: list[ChannelGroup], input_shape: tuple[int, ...]
                      ) -> tuple[list[float], int]:
    """Per group, the share of the network's MACs from its first consumer on; and the whole network's MACs."""
    mm = MacsModel(model, groups, input_shape)
    macs = [layer.out * layer.in_per_group * layer.positions for layer in mm.layers]
    total_layers = max(1, sum(macs))
    total = mm.macs()
    at = {}
    for i, layer in enumerate(mm.layers):
        at.setdefault(layer.module, i)
    fractions = []
    for g in groups:
        first = min((at[c.module] for c in g.consumers if c.module in at), default=0)
        fractions.append(sum(macs[first:]) / total_layers)
    return fractions, total


@torch.no_grad()
def measured_speed(model: nn.Module, input_shape: tuple[int, ...], batch: int, macs: int,
                   bn_batch_stats: bool) -> float:
    """MACs per second of one forward pass of ``model`` at ``batch`` (the fastest of 2 after a warm-up)."""
    was_training = model.training
    model.eval()
    if bn_batch_stats:  # the scorer normalises with each minibatch's statistics: time that
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    p = next(iter(model.parameters()), None)
    x = torch.randn(batch, *input_shape, device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None and p.is_floating_point() else torch.float32)
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    try:
        model(x)
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - t0)
    finally:
        model.load_state_dict(saved, strict=False)  # the timing passes must not move batch-norm statistics
        model.train(was_training)
    return macs * batch / max(best, 1e-9)


def estimate(ctx, method: str, batch: int, world_size: int = 1) -> Estimate:
    """The cost of ``method`` (``gfs`` or ``backward``) on the groups of selection context ``ctx`` not finished
    yet, with ``batch``-image minibatches, split over ``world_size`` processes."""
    fractions, total = _suffix_fractions(ctx.model, ctx.groups, ctx.input_shape)
    speed = measured_speed(ctx.model, ctx.input_shape, batch, total, ctx.bn_batch_stats)
    holdout = len(ctx.holdout[0]) if ctx.holdout[0] is not None else 0
    passes, work = 0, 0.0
    for gi, g in enumerate(ctx.groups):
        if gi in ctx.done:
            continue
        steps = _steps(method, g.size, ctx.widths[gi] if ctx.widths is not None else None, _candidates(ctx, gi))
        passes += sum(steps)
        work += sum(steps) * fractions[gi] * total * batch / world_size  # the candidates' suffix passes
        work += len(steps) * (1 - fractions[gi]) * total * batch  # one prefix per step
        if ctx.widths is None:  # tolerance mode: held-out accuracy after every step
            work += len(steps) * total * holdout
    return Estimate(passes, work / speed, ctx.widths is None, speed)
