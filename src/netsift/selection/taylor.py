"""First-order Taylor importance (Molchanov et al. 2017/2019): |gradient · weight| summed over a channel.

Gradients of the training cross-entropy are accumulated over a few fresh minibatches, then Torch-Pruning's
``TaylorImportance`` scores each coupled group. With several processes the minibatches are dealt round-robin
and the gradients summed over the processes (the same sum as one process computes, up to rounding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch_pruning as tp

from .. import distributed
from .base import Selection, SelectionContext, ranked_selection, tp_importance_scores

BATCHES = 8


def select(ctx: SelectionContext, batches: int = BATCHES) -> Selection:
    """Rank channels by first-order Taylor importance on ``batches`` training minibatches."""
    model = ctx.model
    was_training = model.training
    model.eval()  # no mask is set yet: gradients of the whole network
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for i in range(batches):
            x, y = ctx.next_batch()  # every process draws every batch (same stream) and computes its own share
            if distributed.mine(i):
                (F.cross_entropy(model(x), y) / batches).backward()
    distributed.sum_grads(model.parameters())  # the gradient of all the batches, on every process
    imp = tp.importance.TaylorImportance(group_reduction="mean", normalizer=None)
    scores = tp_importance_scores(ctx, imp)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return ranked_selection(ctx, scores)
