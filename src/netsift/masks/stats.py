"""Per-epoch statistics of a masked network: how dense the extracted mask is and how settled its logits are.

:class:`MaskStats` is a :class:`netsift.training.Callback`; at the end of every epoch it adds to the epoch's
``metrics.jsonl`` row:

- ``mask_density``: the density of the mask that extraction would keep now (logit masks: m̂ ≥ 0; other
  methods: their ``hard_mask``), over all masked weights;
- ``undecided`` (logit masks only): the share of weights whose keep-probability σ(m̂) is still in (0.1, 0.9),
  i.e. |m̂| < ln 9 — the masks that sampling still flips often;
- ``mask_changed``: the share of extracted-mask bits that differ from the previous epoch's (``None`` on the
  first epoch);
- ``layer_density`` and, for learned scales, ``scales``: per masked layer, in layer order.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..training import Callback
from .base import masked_layers
from .gumbel import LogitMask

UNDECIDED = (0.1, 0.9)
"""σ(m̂) in this open interval counts as undecided."""


@torch.no_grad()
def mask_stats(model: nn.Module, low: float = UNDECIDED[0], high: float = UNDECIDED[1]) -> dict:
    """``mask_density``, ``undecided`` (``None`` unless every masked layer has logits), ``layer_density`` and
    ``scales`` of a masked model now."""
    kept, total, undecided, layer_density, scales = 0, 0, 0, [], []
    logit_masks = True
    lo, hi = math.log(low / (1 - low)), math.log(high / (1 - high))
    for _, _, p in masked_layers(model):
        mask = p.hard_mask()
        n, k = mask.numel(), int(mask.sum())
        kept, total = kept + k, total + n
        layer_density.append(k / n)
        if isinstance(p, LogitMask):
            m = p.logits.detach()
            undecided += int(((m > lo) & (m < hi)).sum())
        else:
            logit_masks = False
        if isinstance(p.scale, nn.Parameter):
            scales.append(float(p.scale.detach()))
    out = {"mask_density": kept / total if total else None,
           "undecided": undecided / total if logit_masks and total else None,
           "layer_density": layer_density}
    if scales:
        out["scales"] = scales
    return out


class MaskStats(Callback):
    """Adds :func:`mask_stats` and ``mask_changed`` to every epoch's metrics row (see the module docstring)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.previous: torch.Tensor | None = None

    def _bits(self) -> torch.Tensor:
        return torch.cat([p.hard_mask().detach().reshape(-1).cpu() for _, _, p in masked_layers(self.model)])

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        metrics.update(mask_stats(self.model))
        bits = self._bits()
        changed = None
        if self.previous is not None and self.previous.numel() == bits.numel():
            changed = float((bits != self.previous).float().mean())
        metrics["mask_changed"] = changed
        self.previous = bits

    def state_dict(self) -> dict:
        return {"previous": self.previous.to(torch.uint8)} if self.previous is not None else {}

    def load_state_dict(self, state: dict) -> None:
        previous = state.get("previous")
        self.previous = previous.bool() if previous is not None else None
