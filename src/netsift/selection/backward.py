"""Backward elimination: the opposite direction to GFS.

Start from every channel of a group and repeatedly remove the channel whose removal (the rest rescaled by
N/|S|) raises the minibatch cross-entropy least, on a fresh minibatch per step, until the width budget, or
until removing one more would break the accuracy tolerance. Groups go from input to output.
"""

from __future__ import annotations

import torch

from .base import Selection, SelectionContext
from .masking import candidate_masks


def select(ctx: SelectionContext) -> Selection:
    """Greedy backward elimination of every group, input to output."""
    kept, info = {}, []
    for gi, g in enumerate(ctx.groups):
        if (done := ctx.resumed(gi)) is not None:  # finished before an interruption (prune --resume)
            kept[g.name] = done.kept
            info.append(done.info)
            continue
        n = g.size
        start_acc = ctx.accuracy() if ctx.widths is None else None
        target = ctx.widths[gi] if ctx.widths is not None else 1
        current = list(range(n))
        bar = ctx.bar(n - target, f"backward group {gi + 1}/{len(ctx.groups)} ({g.name})")
        acc = None
        while len(current) > target:
            # in budget mode the steps left are known (tolerance mode: only this one is certain)
            guaranteed = len(current) - target if ctx.widths is not None else 1
            x, y, prefix = ctx.step_batch(gi, guaranteed)
            cands = ctx.sample(current, ctx.n_candidates(gi, len(current)))
            masks = candidate_masks(n, current, drop=cands)  # row k: current without cands[k]
            scores = ctx.split_scores(gi, masks, x, y, prefix, left=guaranteed - 1)  # split over the processes
            drop = cands[int(torch.argmin(scores))]
            trial = [i for i in current if i != drop]
            ctx.masker.set_kept(gi, trial)
            if ctx.widths is None:
                acc = ctx.accuracy()
                if acc < (1 - ctx.tolerance) * start_acc:
                    ctx.masker.set_kept(gi, current)
                    break
            current = trial
            bar.update()
        bar.close()
        ctx.masker.set_kept(gi, current)
        kept[g.name] = current
        info.append({"group": g.name, "size": n, "kept": len(current), "acc_start": start_acc, "acc_end": acc})
        ctx.group_done(gi, info[-1])
        if ctx.layer_finetune is not None:
            ctx.layer_finetune(ctx.model)
        ctx.finish_group(gi, current, info[-1])
    return Selection(kept, rescale=True, info=info)
