"""What candidate scoring costs: :class:`ScoringStats` (MACs executed, by part, and wall time) and the MACs of
one layer call (:func:`layer_macs`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch import Tensor, nn


@dataclass
class ScoringStats:
    """Work done by a :class:`~.scoring.BatchedScorer`: MACs (multiply-accumulates of Conv/Linear layers, as executed)
    and wall time.

    ``prefix_macs``: candidate-independent layers, run once per call up to the values the suffix reads.
    ``shared_macs``: each first consumer's product over the part of the masks all candidates share (S),
    once per call. ``candidate_macs``: the per-candidate work (each candidate's own term at those consumers,
    then the rest of the network on the stacked candidates). ``suffix_macs`` = shared + candidate: the MACs
    of all suffix passes. ``plain_suffix_macs``: what one plain suffix pass per candidate would execute (the
    first consumers in full). ``check_macs``: the one-off plain passes that check a group's first scores.
    """

    calls: int = 0
    candidates: int = 0
    prefix_macs: int = 0
    shared_macs: int = 0
    candidate_macs: int = 0
    plain_suffix_macs: int = 0
    check_macs: int = 0
    seconds: float = 0.0
    path: str = ""

    @property
    def suffix_macs(self) -> int:
        return self.shared_macs + self.candidate_macs

    @property
    def total_macs(self) -> int:
        return self.prefix_macs + self.suffix_macs + self.check_macs

    def add(self, other: "ScoringStats") -> None:
        for f in ("calls", "candidates", "prefix_macs", "shared_macs", "candidate_macs", "plain_suffix_macs",
                  "check_macs", "seconds"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        if other.path and other.path not in self.path.split("+"):
            self.path = other.path if not self.path else f"{self.path}+{other.path}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["suffix_macs"], d["total_macs"] = self.suffix_macs, self.total_macs
        return d


def layer_macs(module: nn.Module, out: Tensor) -> int:
    """MACs of one call of a Conv/Linear ``module`` that produced ``out`` (0 for other modules)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return out.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def layer_macs_grouped(out: Tensor, per_group_in: int, mod: nn.Conv2d) -> int:
    """MACs of a grouped convolution with ``mod``'s kernel and ``per_group_in`` inputs per group that produced
    ``out``."""
    return out.numel() * per_group_in * math.prod(mod.kernel_size)
