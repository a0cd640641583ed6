"""Loss-against-width curves of the channel groups, measured by the greedy methods themselves (learned widths).

For each group in turn, every other group whole, the method's own greedy steps run on the group: GFS adds the
channel whose addition lowers the minibatch loss most; backward elimination removes the one whose removal raises
it least. Each step records the loss of its pick minus the loss of the whole network on the same minibatch (one
more row of the same stacked pass, so minibatch noise cancels). GFS's curve stops once that gap has stayed below
``flat`` of the whole network's loss for ``patience`` steps: the channels left add nothing measurable (the rest
of the curve falls linearly to 0, the whole group). The curves feed :meth:`.widths.Budget.learn`, which shares the
budget out; the selection itself then runs at those widths, input to output, as with uniform widths.

A forward curve costs a whole greedy ordering of its group, so it is measured more cheaply than the selection
itself: each step scores on the first half of its minibatch (:data:`CURVE_BATCH`, at least :data:`MIN_IMAGES`
images) and at most ``max(8, N/4)`` candidates (:func:`curve_candidates`). On ResNet-20 ×0.5 and VGG11 ×0.25
at 25% MACs (3 seeds each) that brought learned-width selection from about 2.5× the uniform selection's time
to under 2×, with the same accuracy after fine-tuning; the measurements, and the variants that lost accuracy,
are in ``docs/prune.md`` ("What the loss curves cost").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import SelectionContext
from .masking import candidate_masks
from .steps import Step

FLAT = 0.01
"""A forward curve is flat once its gap stays below this fraction of the whole network's loss."""
PATIENCE = 3
"""... for this many steps in a row."""
CURVE_BATCH = 0.5
"""A forward curve scores each step on this fraction of the step's minibatch ..."""
MIN_IMAGES = 32
"""... but on at least this many images (all of them when the minibatch is smaller)."""


def curve_step(step: Step) -> Step:
    """The step a forward curve scores: the first :data:`CURVE_BATCH` of its minibatch (at least
    :data:`MIN_IMAGES` images). A curve takes one step at a time, so no process computed a prefix for it."""
    n = len(step.x)
    keep = min(n, max(MIN_IMAGES, math.ceil(n * CURVE_BATCH)))
    if keep == n or step.prefix is not None:
        return step
    return Step(step.stream, step.gi, step.x[:keep], step.y[:keep], None, step.left)


def curve_candidates(ctx: SelectionContext, gi: int, available: int) -> int:
    """Candidates scored at one step of a forward curve: the selection's own number, at most ``max(8, N/4)``
    (the selection at the learned widths scores them all again, with the earlier groups pruned)."""
    return min(ctx.n_candidates(gi, available), max(8, math.ceil(ctx.groups[gi].size / 4)))


def _score(ctx: SelectionContext, step, masks: Tensor, size: int, empty: bool = False) -> tuple[Tensor, float, float]:
    """The candidates' losses, the whole group's loss on the same minibatch (and the empty group's)."""
    extra = [torch.ones(1, size)] + ([torch.zeros(1, size)] if empty else [])
    scores = step.score(torch.cat([masks, *extra]))
    k = len(masks)
    return scores[:k], float(scores[k]), float(scores[k + 1]) if empty else float("nan")


def forward_curve(ctx: SelectionContext, gi: int, flat: float = FLAT, patience: int = PATIENCE) -> list[float]:
    """GFS's curve of group ``gi`` (``N + 1`` values: the loss gap with ``k`` channels kept)."""
    n = ctx.groups[gi].size
    chosen: list[int] = []
    curve: list[float] = [float("nan")] * (n + 1)
    calm, done = 0, False
    bar = ctx.bar(n, f"gfs widths: group {gi + 1}/{len(ctx.groups)} ({ctx.groups[gi].name})")
    for step in ctx.steps(gi, lambda: 0 if done or len(chosen) >= n else 1):
        pool = sorted(set(range(n)) - set(chosen))
        cands = ctx.sample(pool, curve_candidates(ctx, gi, len(pool)))
        scores, whole, empty = _score(ctx, curve_step(step), candidate_masks(n, chosen, add=cands), n,
                                      empty=not chosen)
        if not chosen:
            curve[0] = empty - whole
        best = int(torch.argmin(scores))
        chosen.append(cands[best])
        ctx.masker.set_kept(gi, chosen)
        gap = float(scores[best]) - whole
        curve[len(chosen)] = gap
        calm = calm + 1 if gap <= flat * abs(whole) else 0
        done = calm >= patience
        bar.update()
    bar.close()
    ctx.masker.set(gi, None)
    k = len(chosen)
    for j in range(k + 1, n + 1):  # flat: the gap falls linearly to the whole group's 0
        curve[j] = curve[k] * (n - j) / (n - k)
    curve[n] = 0.0
    return curve


def backward_curve(ctx: SelectionContext, gi: int) -> list[float]:
    """Backward elimination's curve of group ``gi``: the loss gap after each removal, down to one channel."""
    n = ctx.groups[gi].size
    current = list(range(n))
    curve: list[float] = [float("nan")] * (n + 1)
    curve[n] = 0.0
    bar = ctx.bar(n - 1, f"backward widths: group {gi + 1}/{len(ctx.groups)} ({ctx.groups[gi].name})")
    for step in ctx.steps(gi, lambda: len(current) - 1):
        cands = ctx.sample(current, ctx.n_candidates(gi, len(current)))
        scores, whole, _ = _score(ctx, step, candidate_masks(n, current, drop=cands), n)
        best = int(torch.argmin(scores))
        current = [i for i in current if i != cands[best]]
        ctx.masker.set_kept(gi, current)
        curve[len(current)] = float(scores[best]) - whole
        bar.update()
    bar.close()
    ctx.masker.set(gi, None)
    curve[0] = curve[1] + (curve[1] - curve[2] if n > 2 else curve[1])  # no network has an empty group: extrapolated
    return curve


def curves_of(ctx: SelectionContext, curve) -> list[list[float]]:
    """Every group's curve (``curve(ctx, gi)``), each measured with the others whole."""
    return [curve(ctx, gi) for gi in range(len(ctx.groups))]
