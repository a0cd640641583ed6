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
channels (its MACs are at most, not exactly, the budget). The same code runs on a randomly initialised network (``netsift prune --model M`` without a
checkpoint), where the paper's guarantee also holds.
"""

from __future__ import annotations

import torch

from .base import Selection, SelectionContext
from .masking import candidate_masks


def _stop(ctx: SelectionContext, gi: int, chosen: list[int], start_acc: float | None) -> tuple[bool, float | None]:
    # with replacement the subnetwork's size is its number of picks (distinct channels may be fewer)
    size = len(chosen) if ctx.replacement else len(set(chosen))
    if ctx.widths is not None:
        return size >= ctx.widths[gi], None
    acc = ctx.accuracy()
    return acc >= (1 - ctx.tolerance) * start_acc, acc


def _guaranteed(ctx: SelectionContext, gi: int, chosen: list[int], max_steps: int) -> int:
    """Steps group ``gi`` will certainly still take (this one included): in budget mode each step adds one to the
    size :func:`_stop` compares with the width; in tolerance mode only this one is certain."""
    if ctx.widths is None:
        return 1
    size = len(chosen) if ctx.replacement else len(set(chosen))
    return max(1, min(ctx.widths[gi] - size, max_steps - len(chosen)))


def select(ctx: SelectionContext, replacement: bool = False) -> Selection:
    """Greedy forward selection of every group, input to output (``replacement``: the multiset variant)."""
    ctx.replacement = ctx.replacement or replacement
    kept, info = {}, []
    for gi, g in enumerate(ctx.groups):
        if (done := ctx.resumed(gi)) is not None:  # finished before an interruption (prune --resume)
            kept[g.name] = done.kept
            info.append(done.info)
            continue
        n = g.size
        start_acc = ctx.accuracy() if ctx.widths is None else None
        chosen: list[int] = []
        losses: list[float] = []
        acc = None
        limit = ctx.widths[gi] if ctx.widths is not None else n
        bar = ctx.bar(limit, f"gfs group {gi + 1}/{len(ctx.groups)} ({g.name})")
        max_steps = 4 * n if ctx.replacement else n
        while len(chosen) < max_steps:
            guaranteed = _guaranteed(ctx, gi, chosen, max_steps)
            x, y, prefix = ctx.step_batch(gi, guaranteed)
            pool = range(n) if ctx.replacement else sorted(set(range(n)) - set(chosen))
            cands = ctx.sample(pool, ctx.n_candidates(gi, len(pool)))
            masks = candidate_masks(n, chosen, add=cands)  # row k: kept_mask(n, chosen + [cands[k]])
            # every process scores its share of the candidates on the same minibatch; all get every score
            scores = ctx.split_scores(gi, masks, x, y, prefix, left=guaranteed - 1)
            best = int(torch.argmin(scores))
            before = len(set(chosen))
            chosen.append(cands[best])
            losses.append(float(scores[best]))
            ctx.masker.set_kept(gi, chosen)
            bar.update(len(set(chosen)) - before)
            done, acc = _stop(ctx, gi, chosen, start_acc)
            if done:
                break
        bar.close()
        kept[g.name] = sorted(chosen)
        info.append({"group": g.name, "size": n, "kept": len(set(chosen)), "steps": len(chosen),
                     "acc_start": start_acc, "acc_end": acc, "final_loss": losses[-1] if losses else None})
        ctx.group_done(gi, info[-1])
        if ctx.layer_finetune is not None:
            ctx.layer_finetune(ctx.model)
        ctx.finish_group(gi, chosen, info[-1])
    return Selection(kept, rescale=True, info=info)
