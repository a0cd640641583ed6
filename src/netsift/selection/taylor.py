"""First-order Taylor importance (Molchanov et al. 2017/2019): |gradient · weight| summed over a channel.

Gradients of the training cross-entropy are accumulated over a few fresh minibatches, then Torch-Pruning's
``TaylorImportance`` scores each coupled group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch_pruning as tp

from .base import Selection, SelectionContext, ranked_selection, tp_importance_scores

BATCHES = 8


def select(ctx: SelectionContext, batches: int = BATCHES) -> Selection:
    """Rank channels by first-order Taylor importance on ``batches`` training minibatches."""
    model = ctx.model
    was_training = model.training
    model.eval()  # no mask is set yet: gradients of the whole network
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for _ in range(batches):
            x, y = ctx.next_batch()
            (F.cross_entropy(model(x), y) / batches).backward()
    imp = tp.importance.TaylorImportance(group_reduction="mean", normalizer=None)
    scores = tp_importance_scores(ctx, imp)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return ranked_selection(ctx, scores)
