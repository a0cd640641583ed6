"""The per-group loop every greedy method shares; a method supplies only its rule.

:func:`greedy_groups` goes through the channel groups from input to output. A group finished before an
interruption comes back as it was (``prune --resume``); for the others it asks the method for a
:class:`GreedyRule` and runs :func:`select_group`: at each step (a fresh minibatch:
:meth:`.base.SelectionContext.steps`) the rule names its candidates and their masks, every candidate is scored
(split over the processes), and the rule takes the best; the loss of each step's pick is kept in ``ctx.step_losses[gi]``. Then the group's progress
line, the optional per-layer fine-tune, and its record (saved for ``--resume``).

When a group stops is a :class:`StopRule` of its own: :class:`WidthStop` (budget mode: the width the budget
allocated) or :class:`ToleranceStop` (held-out accuracy within the tolerance of the group's start); the
``stop`` argument of :func:`greedy_groups` takes another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import Tensor

from .base import Selection, SelectionContext


class StopRule(Protocol):
    """When a group's greedy loop ends."""

    width: int | None  # the width it ends at for sure (``None``: decided by the network's accuracy)
    start_acc: float | None  # held-out accuracy at the group's start, where the rule measured it

    def steps_left(self, size: int) -> int:
        """Steps the group will certainly still take from ``size`` channels (at least 1)."""

    def reached(self, ctx: SelectionContext, size: int) -> tuple[bool, float | None]:
        """Growing: whether ``size`` channels (the masks as set) are enough, and the accuracy measured."""

    def holds(self, ctx: SelectionContext) -> tuple[bool, float | None]:
        """Shrinking: whether the masks as set are still acceptable, and the accuracy measured."""


@dataclass
class WidthStop:
    """Budget mode: the group ends at ``width`` channels."""

    width: int
    start_acc: None = None

    def steps_left(self, size: int) -> int:
        return abs(self.width - size)

    def reached(self, ctx: SelectionContext, size: int) -> tuple[bool, None]:
        return size >= self.width, None

    def holds(self, ctx: SelectionContext) -> tuple[bool, None]:
        return True, None


@dataclass
class ToleranceStop:
    """Tolerance mode: held-out accuracy at least (1 - ``tolerance``) × ``start_acc``."""

    tolerance: float
    start_acc: float
    width: None = None

    def steps_left(self, size: int) -> int:
        return 1

    def reached(self, ctx: SelectionContext, size: int) -> tuple[bool, float]:
        acc = ctx.accuracy()
        return acc >= (1 - self.tolerance) * self.start_acc, acc

    def holds(self, ctx: SelectionContext) -> tuple[bool, float]:
        return self.reached(ctx, 0)


def stop_rule(ctx: SelectionContext, gi: int) -> StopRule:
    """The context's stopping rule for group ``gi``: its width (budget mode), else the tolerance (measuring the
    accuracy at the group's start now)."""
    if ctx.widths is not None:
        return WidthStop(ctx.widths[gi])
    return ToleranceStop(ctx.tolerance, ctx.accuracy())


class GreedyRule(Protocol):
    """One greedy method's rule for one group (built by the method for each group it selects)."""

    name: str  # the method, for the progress bar
    total: int  # units of the group's progress bar

    def left(self) -> int:
        """Steps the group will certainly still take, the next one included (0: the group is finished)."""

    def candidates(self) -> tuple[list[int], Tensor]:
        """This step's candidate channels and their (K, N) masks (row k: the group with candidate k's move)."""

    def take(self, channel: int) -> int:
        """Make the move of the best candidate (set the masks); returns the progress bar units it made."""

    def result(self, losses: list[float]) -> tuple[list[int], dict]:
        """The group's kept channels (as the masker has them) and its info row, given each step's loss."""


def select_group(ctx: SelectionContext, gi: int, rule: GreedyRule) -> tuple[list[int], dict]:
    """Run ``rule`` on group ``gi`` to its end; returns the kept channels and the info row."""
    g = ctx.groups[gi]
    bar = ctx.bar(rule.total, f"{rule.name} group {gi + 1}/{len(ctx.groups)} ({g.name})")
    losses = ctx.step_losses[gi] = []
    for step in ctx.steps(gi, rule.left):
        cands, masks = rule.candidates()
        # every process scores its share of the candidates on the same minibatch; all get every score
        scores = step.score(masks)
        best = int(torch.argmin(scores))
        losses.append(float(scores[best]))
        bar.update(rule.take(cands[best]))
    bar.close()
    kept, row = rule.result(losses)
    ctx.group_done(gi, row)
    if ctx.layer_finetune is not None:
        ctx.layer_finetune(ctx.model)
    ctx.finish_group(gi, kept, row)
    return kept, row


def greedy_groups(ctx: SelectionContext, make_rule: Callable[[SelectionContext, int, StopRule], GreedyRule],
                  stop: Callable[[SelectionContext, int], StopRule] = stop_rule) -> Selection:
    """Select every group, input to output, with the rule ``make_rule(ctx, gi, stop(ctx, gi))``."""
    kept, info = {}, []
    for gi, g in enumerate(ctx.groups):
        if (done := ctx.resumed(gi)) is not None:  # finished before an interruption (prune --resume)
            kept[g.name] = done.kept
            info.append(done.info)
            continue
        chosen, row = select_group(ctx, gi, make_rule(ctx, gi, stop(ctx, gi)))
        kept[g.name] = sorted(chosen)
        info.append(row)
    return Selection(kept, rescale=True, info=info)
