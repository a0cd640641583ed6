"""Random channels: the floor every selection method must beat."""

from __future__ import annotations

import torch

from .base import Selection, SelectionContext, ranked_selection


def select(ctx: SelectionContext) -> Selection:
    """Rank each group's channels in a random order drawn from the context's seed."""
    scores = [torch.rand(g.size, generator=ctx.generator) for g in ctx.groups]
    return ranked_selection(ctx, scores)
