"""BN-scale (network slimming, Liu et al. 2017): keep the channels with the largest |γ| of their batch norm."""

from __future__ import annotations

import torch_pruning as tp

from torch import nn

from ..errors import NetsiftError
from .base import Selection, SelectionContext, ranked_selection, tp_importance_scores


def select(ctx: SelectionContext) -> Selection:
    """Rank each group's channels by the magnitude of their BN scale (Torch-Pruning's ``BNScaleImportance``)."""
    imp = tp.importance.BNScaleImportance(group_reduction="mean", normalizer=None)
    return ranked_selection(ctx, tp_importance_scores(ctx, imp))


def check(ctx: SelectionContext) -> None:
    """Raise a one-line error unless every group has a batch norm to read γ from."""
    for gi, g in enumerate(ctx.groups):
        group = ctx.graph.get_pruning_group(g.root, ctx.graph.get_pruner_of_module(g.root).prune_out_channels, [0])
        if not any(isinstance(it.dep.target.module, nn.modules.batchnorm._BatchNorm) for it in group.items):
            raise NetsiftError(f"--method bn-scale needs batch norm, but channel group {g.name} has none")
