"""The plain computations the fast scorers are checked against: one whole forward pass per candidate mask
(:func:`reference_scores`), and held-out accuracy with the masks set (:func:`masked_accuracy`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bn_stats import batch_norm_stats
from .masking import Masker


@torch.no_grad()
def reference_scores(model: nn.Module, masker: Masker, gi: int, masks: Tensor, x: Tensor, y: Tensor,
                     bn_batch_stats: bool = False) -> Tensor:
    """The plain computation: one whole forward pass per candidate mask."""
    was_training = model.training
    model.eval()
    old = masker.masks[gi]
    out = []
    try:
        for mask in masks:
            masker.set(gi, mask)
            with batch_norm_stats(model, 1, bn_batch_stats):
                out.append(F.cross_entropy(model(x).float(), y))
    finally:
        masker.set(gi, old)
        model.train(was_training)
    return torch.stack(out)


@torch.no_grad()
def masked_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024,
                    bn_batch_stats: bool = False) -> float:
    """Accuracy of ``model`` (with whatever masks are set) on the held-out tensors ``(x, y)``."""
    was_training = model.training
    model.eval()
    correct = 0
    for s in range(0, len(y), batch_size):
        with batch_norm_stats(model, 1, bn_batch_stats):
            correct += (model(x[s:s + batch_size]).argmax(1) == y[s:s + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(1, len(y))
