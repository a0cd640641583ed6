"""Greedy Forward Selection (Ye, Gong, Nie, Zhou, Klivans, Liu, ICML 2020).

Practice (deep networks): groups are pruned one by one from input to output. For a group of N channels,
start from S = ∅; at every step draw a fresh training minibatch, score candidates j ∉ S (a random subset of
``candidates`` of them, or (N/k)·log(1/ε) with ε given) by the whole network's cross-entropy with the group
masked to S ∪ {j} and rescaled by N/|S ∪ {j}| (eval mode, no gradients), and add the best. Stop at the
group's width budget, or once held-out accuracy is within the tolerance of the accuracy at the group's start.
An optional short fine-tune follows each group.

Theory (two-layer networks): with ``replacement`` every channel stays a candidate, S is a multiset and the
subnetwork is the uniform average of its picks (Frank–Wolfe with step 1/(n+1)); a channel picked twice
counts twice. A width budget then bounds the number of picks, so the physical network keeps at most that many
channels (its MACs are at most, not exactly, the budget). The same code runs on a randomly initialised network
(``netsift prune --model M`` without a checkpoint), where the paper's guarantee also holds.

The loop over groups and steps is :func:`.greedy.greedy_groups`; this file holds the rule (:class:`Forward`).
"""

from __future__ import annotations

from torch import Tensor

from .base import Selection, SelectionContext
from .curves import curves_of, forward_curve
from .greedy import StopRule, greedy_groups
from .masking import candidate_masks


class Forward:
    """GFS's rule for one group: add the candidate whose addition lowers the minibatch loss most."""

    name = "gfs"

    def __init__(self, ctx: SelectionContext, gi: int, stop: StopRule):
        self.ctx, self.gi, self.stop = ctx, gi, stop
        self.n = ctx.groups[gi].size
        self.chosen: list[int] = []
        self.finished, self.acc = False, None
        self.max_steps = 4 * self.n if ctx.replacement else self.n
        self.total = stop.width if stop.width is not None else self.n

    def _size(self) -> int:
        # with replacement the subnetwork's size is its number of picks (distinct channels may be fewer)
        return len(self.chosen) if self.ctx.replacement else len(set(self.chosen))

    def left(self) -> int:
        """In budget mode each step adds one to the size the stop rule compares with the width."""
        if self.finished or len(self.chosen) >= self.max_steps:
            return 0
        return max(1, min(self.stop.steps_left(self._size()), self.max_steps - len(self.chosen)))

    def candidates(self) -> tuple[list[int], Tensor]:
        pool = range(self.n) if self.ctx.replacement else sorted(set(range(self.n)) - set(self.chosen))
        if self.stop.width is not None and not self.ctx.replacement:  # an uneven group (CSP): quotas per kind
            pool = self.ctx.groups[self.gi].allowed(pool, self.chosen, self.stop.width) or pool
        cands = self.ctx.sample(pool, self.ctx.n_candidates(self.gi, len(pool)))
        return cands, candidate_masks(self.n, self.chosen, add=cands)  # row k: kept_mask(n, chosen + [cands[k]])

    def take(self, channel: int) -> int:
        before = len(set(self.chosen))
        self.chosen.append(channel)
        self.ctx.masker.set_kept(self.gi, self.chosen)
        self.finished, self.acc = self.stop.reached(self.ctx, self._size())
        return len(set(self.chosen)) - before

    def result(self, losses: list[float]) -> tuple[list[int], dict]:
        return self.chosen, {"group": self.ctx.groups[self.gi].name, "size": self.n, "kept": len(set(self.chosen)),
                             "steps": len(self.chosen), "acc_start": self.stop.start_acc, "acc_end": self.acc,
                             "final_loss": losses[-1] if losses else None}


def select(ctx: SelectionContext, replacement: bool = False) -> Selection:
    """Greedy forward selection of every group, input to output (``replacement``: the multiset variant)."""
    ctx.replacement = ctx.replacement or replacement
    ctx.learn_widths(lambda: curves_of(ctx, forward_curve))
    return greedy_groups(ctx, Forward)
