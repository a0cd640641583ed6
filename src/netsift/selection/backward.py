"""Backward elimination: the opposite direction to GFS.

Start from every channel of a group and repeatedly remove the channel whose removal (the rest rescaled by
N/|S|) raises the minibatch cross-entropy least, on a fresh minibatch per step, until the width budget, or
until removing one more would break the accuracy tolerance. Groups go from input to output.

The loop over groups and steps is :func:`.greedy.greedy_groups`; this file holds the rule (:class:`Backward`).
"""

from __future__ import annotations

from torch import Tensor

from .base import Selection, SelectionContext
from .curves import backward_curve, curves_of
from .greedy import StopRule, greedy_groups
from .masking import candidate_masks


class Backward:
    """Backward elimination's rule for one group: remove the candidate whose removal raises the loss least."""

    name = "backward"

    def __init__(self, ctx: SelectionContext, gi: int, stop: StopRule):
        self.ctx, self.gi, self.stop = ctx, gi, stop
        self.n = ctx.groups[gi].size
        self.target = stop.width if stop.width is not None else 1
        self.current = list(range(self.n))
        self.finished, self.acc = False, None
        self.total = self.n - self.target

    def left(self) -> int:
        """In budget mode the steps left are known (tolerance mode: only the next one is certain)."""
        if self.finished or len(self.current) <= self.target:
            return 0
        return self.stop.steps_left(len(self.current))

    def candidates(self) -> tuple[list[int], Tensor]:
        pool = self.current
        if self.stop.width is not None:  # an uneven group (CSP): each kind of unit ends at its quota
            pool = self.ctx.groups[self.gi].allowed(pool, self.current, self.stop.width, grow=False) or pool
        cands = self.ctx.sample(pool, self.ctx.n_candidates(self.gi, len(pool)))
        return cands, candidate_masks(self.n, self.current, drop=cands)  # row k: current without cands[k]

    def take(self, channel: int) -> int:
        trial = [i for i in self.current if i != channel]
        self.ctx.masker.set_kept(self.gi, trial)
        ok, self.acc = self.stop.holds(self.ctx)
        if not ok:  # one more removal would break the tolerance: keep the group as it was
            self.ctx.masker.set_kept(self.gi, self.current)
            self.finished = True
            return 0
        self.current = trial
        return 1

    def result(self, losses: list[float]) -> tuple[list[int], dict]:
        self.ctx.masker.set_kept(self.gi, self.current)
        return self.current, {"group": self.ctx.groups[self.gi].name, "size": self.n, "kept": len(self.current),
                              "acc_start": self.stop.start_acc, "acc_end": self.acc}


def select(ctx: SelectionContext) -> Selection:
    """Greedy backward elimination of every group, input to output."""
    ctx.learn_widths(lambda: curves_of(ctx, backward_curve))
    return greedy_groups(ctx, Backward)
