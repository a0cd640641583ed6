"""Neuron (channel) selection in trained networks: the methods, one file each, behind one interface.

``METHODS[name](ctx) -> Selection``; see :mod:`.base` for the interface, :mod:`.groups` for the channel groups
(Torch-Pruning's dependency graph), :mod:`.scoring` for fast candidate scoring, :mod:`.budget` for MACs
budgets and :mod:`.removal` for the physical removal.
"""

from __future__ import annotations

from typing import Callable

from . import backward, bn_scale, gfs, l1, random_select, taylor
from .base import Selection, SelectionContext

METHODS: dict[str, Callable[[SelectionContext], Selection]] = {
    "gfs": gfs.select,
    "l1": l1.select,
    "taylor": taylor.select,
    "bn-scale": bn_scale.select,
    "random": random_select.select,
    "backward": backward.select,
}
"""Selection methods by the name ``netsift prune --method`` takes."""

RANKING_METHODS = ("l1", "taylor", "bn-scale", "random")

__all__ = ["METHODS", "RANKING_METHODS", "Selection", "SelectionContext"]
