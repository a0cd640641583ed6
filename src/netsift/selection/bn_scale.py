"""BN-scale (network slimming, Liu et al. 2017): keep the channels with the largest |γ| of their batch norm."""

from __future__ import annotations

import torch_pruning as tp

from .base import Selection, SelectionContext, ranked_selection, tp_importance_scores


def select(ctx: SelectionContext) -> Selection:
    """Rank each group's channels by the magnitude of their BN scale (Torch-Pruning's ``BNScaleImportance``)."""
    imp = tp.importance.BNScaleImportance(group_reduction="mean", normalizer=None)
    return ranked_selection(ctx, tp_importance_scores(ctx, imp))
