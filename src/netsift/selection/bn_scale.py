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


def check(ctx_graph: tp.DependencyGraph, groups) -> None:
    """Raise a one-line error unless every group has a batch norm to read γ from."""
    for g in groups:
        pruner = ctx_graph.get_pruner_of_module(g.root)
        tp_group = ctx_graph.get_pruning_group(g.root, pruner.prune_out_channels, [0])
        if not any(isinstance(it.dep.target.module, nn.modules.batchnorm._BatchNorm) for it in tp_group.items):
            raise NetsiftError(f"--method bn-scale needs batch norm, but channel group {g.name} has none")
