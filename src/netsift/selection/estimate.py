"""What a greedy selection (GFS, backward elimination) will cost, said before it starts.

A greedy step scores candidates by running the network's *suffix* (from the group's first consumer to the
logits) once per candidate on a minibatch of ``select_batch`` images, after one *prefix* pass (up to the first
consumer) per step. From the network's MACs per layer (in forward order), the groups' sizes and widths and the
candidates per step, :func:`estimate` counts the suffix passes and their MACs, and turns MACs into seconds with
this machine's measured speed: a timed call of the selection's own scorer (:func:`scorer_speed`, one step's
candidates on a random minibatch, on the group with the most work ahead). In tolerance mode the widths are not
known in advance: the count is an upper bound (every group grown to its full size), said as "at most". With
learned widths (``--widths learned``) the loss curves come first (at most every group grown to its full size),
then the selection at the learned widths (counted at the uniform widths): also an upper bound in spirit, said as
"at most".
"""

from __future__ import annotations

import math
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
    macs_per_s: float  # this machine's measured speed: the scorer's own MACs per second

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
                      ) -> tuple[list[tuple[float, float]], int]:
    """Per group, the shares of the network's MACs a candidate's suffix pass runs, and that each step's shared
    work runs once; and the whole network's MACs.

    The suffix starts at the group's first consumer. Its *direct* consumers (the consumers run before any other
    layer of the suffix: their input does not depend on the candidate) are computed once per step over the
    channels every candidate keeps, each candidate adding only its own channel's term (:mod:`.scoring`): they
    count once per step, not per candidate.
    """
    mm = MacsModel(model, groups, input_shape)
    macs = [layer.out * layer.in_per_group * layer.positions for layer in mm.layers]
    total_layers = max(1, sum(macs))
    total = mm.macs()
    out = []
    for g in groups:
        mods = {c.module for c in g.consumers}
        first = min((i for i, layer in enumerate(mm.layers) if layer.module in mods), default=0)
        direct = first
        while direct < len(mm.layers) and mm.layers[direct].module in mods:
            direct += 1
        out.append((sum(macs[direct:]) / total_layers, sum(macs[first:direct]) / total_layers))
    return out, total


def scorer_speed(ctx, gi: int, batch: int, candidates: int) -> float:
    """MACs per second of the selection's own scorer on group ``gi``: one scoring call of ``candidates``
    candidates on a random ``batch``-image minibatch, timed after a first call (which traces the group's plan
    and checks it, as the selection's first step would). Nothing the selection draws from is touched: the inputs
    come from a private generator and the scorer's statistics are reset afterwards."""
    from .masking import candidate_masks

    g = ctx.groups[gi]
    gen = torch.Generator().manual_seed(0)
    p = next(iter(ctx.model.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    x = torch.randn(batch, *ctx.input_shape, generator=gen, dtype=dtype).to(p.device if p is not None else "cpu")
    y = torch.zeros(batch, dtype=torch.long, device=x.device)
    masks = candidate_masks(g.size, [], add=list(range(min(candidates, g.size))))
    ctx.scorer.score(gi, masks, x, y)
    before = ctx.scorer.stats.total_macs, ctx.scorer.stats.seconds
    ctx.scorer.score(gi, masks, x, y)
    macs, seconds = ctx.scorer.stats.total_macs - before[0], ctx.scorer.stats.seconds - before[1]
    ctx.scorer.reset_stats()
    return macs / max(seconds, 1e-9)


def estimate(ctx, method: str, batch: int, world_size: int = 1) -> Estimate:
    """The cost of ``method`` (``gfs`` or ``backward``) on the groups of selection context ``ctx`` not finished
    yet, with ``batch``-image minibatches, split over ``world_size`` processes.

    The speed is that of the scorer itself (:func:`scorer_speed`), timed on the group with the most work ahead
    (timing the first and last groups too was tried: their small, overhead-bound calls made the estimate worse)."""
    shares, total = _suffix_fractions(ctx.model, ctx.groups, ctx.input_shape)
    holdout = len(ctx.holdout[0]) if ctx.holdout[0] is not None else 0
    work: dict[int, tuple[float, int]] = {}  # group -> (MACs ahead, most candidates of a step)
    passes = 0
    budget = getattr(ctx, "budget", None)
    learning = budget is not None and budget.learned and not ctx.resumed_widths
    for gi, g in enumerate(ctx.groups):
        if gi in ctx.done:
            continue
        steps = _steps(method, g.size, ctx.widths[gi] if ctx.widths is not None else None, _candidates(ctx, gi))
        if learning:  # the group's loss curve first: at most grown to its full size
            steps = _steps(method, g.size, None, _candidates(ctx, gi)) + steps
        if not steps:
            continue
        suffix, _ = shares[gi]
        passes += sum(steps)
        mine = sum(steps) * suffix * total * batch / world_size  # the candidates' suffix passes
        mine += len(steps) * (1 - suffix) * total * batch  # per step: the prefix and the direct consumers' share
        if ctx.widths is None:  # tolerance mode: held-out accuracy after every step
            mine += len(steps) * total * holdout
        work[gi] = (mine, max(steps))
    upper = ctx.widths is None or learning
    if not work:
        return Estimate(0, 0.0, upper, 0.0)
    heaviest = max(work, key=lambda gi: work[gi][0])
    speed = scorer_speed(ctx, heaviest, batch, work[heaviest][1])
    return Estimate(passes, sum(mine for mine, _ in work.values()) / speed, upper, speed)
