"""L1-norm filter pruning (Li et al. 2017): keep the channels whose weights have the largest L1 norm.

The norm is Torch-Pruning's group magnitude: the filter's L1 norm summed with the norms of every coupled
layer's slice of the same channel (the root filter alone when nothing is coupled).
"""

from __future__ import annotations

import torch_pruning as tp

from .base import Selection, SelectionContext, ranked_selection, tp_importance_scores


def select(ctx: SelectionContext) -> Selection:
    """Rank each group's channels by L1 norm."""
    imp = tp.importance.MagnitudeImportance(p=1, group_reduction="mean", normalizer=None)
    return ranked_selection(ctx, tp_importance_scores(ctx, imp))
