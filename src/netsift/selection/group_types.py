"""The records of channel groups: what :mod:`.groups` finds and every selection method works on.

Kept apart from the search itself so that :mod:`.merged` (groups merged across a grouped convolution) and
:mod:`.groups` can both build them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class Consumer:
    """A layer reading a group's channels: ``root_of[i]`` is the group unit feeding input index ``i``."""

    name: str
    module: nn.Module
    root_of: Tensor  # (in_features,) long, -1 where the input is not from this group


@dataclass
class Part:
    """One Torch-Pruning root of a merged group: ``channels[j]`` are the root layer's output channels in unit
    ``j`` (the same number in every unit)."""

    name: str
    channels: Tensor  # (size, channels per unit) long


@dataclass
class ChannelGroup:
    """``size`` coupled units of ``unit`` channels rooted at layer ``name``; a selection keeps a subset of
    ``range(size)``.

    A merged group (``parts``) spans several Torch-Pruning roots whose channels reach one grouped convolution:
    each part lists its root's channels per unit, and ``member_units`` how many output channels per unit each
    member layer has (``unit`` where a member is not listed).

    ``norms`` are the normalisers whose statistics span the group's channels (a LayerNorm over channels), with
    the unit of each of their channels (``root_of``): the selection computes them over the kept channels only,
    as the pruned network does (:mod:`.norms`). ``member_counts`` gives, for the members that hold different
    numbers of channels of different units (a CSP block's concatenation under an attention gate), their
    output channels per unit; which units are kept then decides their width (the cost models count it).
    """

    name: str
    root: nn.Module
    size: int
    consumers: list[Consumer]
    members: list[str] = field(default_factory=list)  # every layer whose out channels are in the group
    order: int = 0  # position of the root in the forward pass
    unit: int = 1  # channels per unit: the channel groups of grouped convolutions touching the group
    parts: list[Part] | None = None
    member_units: dict[str, int] = field(default_factory=dict)
    norms: list[Consumer] = field(default_factory=list)  # norms across channels (LayerNorm...) holding them
    member_counts: dict[str, Tensor] = field(default_factory=dict)  # members holding units unevenly: per unit

    @property
    def channels(self) -> int:
        """Channels of the group (``size · unit``)."""
        return self.size * self.unit

    def channel_indices(self, units) -> list[int]:
        """The channels of ``units``: unit ``j`` is channels ``j + k · size`` for ``k < unit``."""
        return sorted(int(j) + k * self.size for j in set(int(u) for u in units) for k in range(self.unit))

    def root_channels(self, units) -> list[tuple[str, list[int]]]:
        """``(root layer name, its output channels)`` of ``units``, one entry per Torch-Pruning root."""
        if self.parts is None:
            return [(self.name, self.channel_indices(units))]
        picked = sorted(set(int(u) for u in units))
        return [(p.name, sorted(int(c) for c in p.channels[picked].reshape(-1))) for p in self.parts]

    def member_unit(self, name: str) -> int:
        """Output channels per unit of member layer ``name``."""
        return self.member_units.get(name, self.unit)

    def quotas(self, width: int) -> tuple[list[int], list[int]] | None:
        """For a group whose members hold units unevenly: each unit's class (the units the same members hold)
        and how many of ``width`` kept units each class gets, its share of the group rounded (largest
        remainders; every class at least one where ``width`` allows). Selecting to these quotas makes the kept
        units cost what the cost models assume for ``width`` (up to the rounding), whichever units they are,
        and leaves no member layer without a channel. ``None`` for an even group (any units cost the same)."""
        if not self.member_counts:
            return None
        held = torch.stack([c > 0 for c in self.member_counts.values()], 1)
        _, cls = torch.unique(held, dim=0, return_inverse=True)
        sizes = torch.bincount(cls).tolist()
        share = [width * s / self.size for s in sizes]
        quota = [int(x) for x in share]
        for c in sorted(range(len(sizes)), key=lambda c: quota[c] - share[c])[:width - sum(quota)]:
            quota[c] += 1
        for c in range(len(sizes)):  # a class left at 0 takes one unit from the largest quota
            if quota[c] == 0 and width >= len(sizes):
                quota[max(range(len(sizes)), key=lambda j: quota[j])] -= 1
                quota[c] = 1
        return cls.tolist(), quota

    def allowed(self, pool, kept, width: int, grow: bool = True) -> list[int]:
        """The units of ``pool`` a selection to ``width`` units may add (``grow``) or drop next and still meet
        :meth:`quotas`, given the units ``kept``; all of ``pool`` for an even group."""
        q = self.quotas(width)
        if q is None:
            return list(pool)
        cls, quota = q
        have = [0] * len(quota)
        for u in set(int(u) for u in kept):
            have[cls[u]] += 1
        ok = [(have[c] < quota[c]) if grow else (have[c] > quota[c]) for c in range(len(quota))]
        return [u for u in pool if ok[cls[int(u)]]]

    def first_within_quotas(self, order, width: int) -> list[int]:
        """The first ``width`` units of ``order`` (a ranking) that meet :meth:`quotas`."""
        q = self.quotas(width)
        if q is None:
            return [int(u) for u in order[:width]]
        cls, quota = q
        have, out = [0] * len(quota), []
        for u in order:
            if len(out) == width:
                break
            if have[cls[int(u)]] < quota[cls[int(u)]]:
                out.append(int(u))
                have[cls[int(u)]] += 1
        return out

    def unit_scores(self, scores: Tensor) -> Tensor:
        """Per-unit scores from per-channel ones (the mean over a unit's channels)."""
        if self.unit == 1 or len(scores) == self.size:
            return scores
        return scores.reshape(self.unit, self.size).mean(0)

    def __repr__(self) -> str:
        unit = f"x{self.unit}" if self.unit > 1 else ""
        merged = f", parts={[p.name for p in self.parts]}" if self.parts else ""
        return f"ChannelGroup({self.name}, N={self.size}{unit}, consumers={[c.name for c in self.consumers]}{merged})"


@dataclass(frozen=True)
class LeftWhole:
    """A channel group netsift keeps whole: its layers (whose output channels stay), channels and the reason."""

    layers: tuple[str, ...]
    channels: int
    reason: str

    def as_dict(self) -> dict:
        """The ``groups_skipped`` entry of ``result.json``."""
        return {"layers": list(self.layers), "channels": self.channels, "reason": self.reason}

    def line(self) -> str:
        """One line for the progress output and the reports."""
        more = f" (+{len(self.layers) - 1} coupled layer{'s' if len(self.layers) > 2 else ''})" \
            if len(self.layers) > 1 else ""
        return f"{self.layers[0] if self.layers else '?'}{more}, {self.channels} channels: {self.reason}"


def is_depthwise(m: nn.Module) -> bool:
    """A depthwise convolution (one input channel per group)."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def is_grouped(m: nn.Module) -> bool:
    """A grouped convolution that is not depthwise (ResNeXt, RegNet)."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups != m.out_channels
