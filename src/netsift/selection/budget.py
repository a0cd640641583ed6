"""What a network costs as a function of its groups' widths (MACs, parameters), and sharing a budget out.

The MACs of a Conv2d/Linear layer are ``out · in/groups · k² · H·W`` (Linear: ``out · in`` per position; a
transposed convolution: ``H·W`` of its input), the same count ``torch.utils.flop_counter`` makes; its parameters
are ``out · in/groups · k²`` plus a bias per output. Removing channels of a group shrinks the ``out`` of its
member layers and the ``in`` of its consumers (and the per-channel parameters of the normalisation layers between
them), so the cost of any width assignment follows from one traced pass, without pruning anything
(:class:`MacsModel`, :class:`ParamsModel`). :func:`allocate` gives every group the same kept fraction ``r`` (so
every method prunes to the same architecture) and searches ``r``, then nudges single groups by one channel,
until the cost is as close as possible to the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import NetsiftError
from ..measure import flop_counter
from .groups import ChannelGroup
from .merged import WEIGHTED


@dataclass
class _Layer:
    module: nn.Module
    out: int
    in_per_group: int  # in_channels / groups (Linear: in_features)
    positions: int  # k² · H_out · W_out (Linear: rows per sample)
    depthwise: bool
    groups: int = 1  # a grouped convolution's groups (its inputs lost per group are 1/groups of those lost)


class MacsModel:
    """Analytic MACs of ``model`` for any per-group widths (from one traced forward pass)."""

    kind = "MACs"
    per_call = True  # a layer called twice costs twice (MACs); parameters count once

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], input_shape: tuple[int, ...]):
        self.groups = list(groups)
        self._quota_cache: dict[tuple[int, int], tuple[list[int], list[int]]] = {}  # (group, width) -> quotas
        self.layers: list[_Layer] = []
        hooks = []
        seen: set[nn.Module] = set()

        def hook(mod, inp, out):
            if not self.per_call and mod in seen:
                return
            seen.add(mod)
            if isinstance(mod, nn.Conv2d):
                k = mod.kernel_size[0] * mod.kernel_size[1]
                pos = k * out.shape[2] * out.shape[3] if self.per_call else k
                self.layers.append(_Layer(mod, mod.out_channels, mod.in_channels // mod.groups, pos,
                                          mod.groups > 1 and mod.groups == mod.in_channels, mod.groups))
            elif isinstance(mod, nn.ConvTranspose2d):  # each input position meets every kernel tap
                k = mod.kernel_size[0] * mod.kernel_size[1]
                pos = k * inp[0].shape[2] * inp[0].shape[3] if self.per_call else k
                self.layers.append(_Layer(mod, mod.out_channels, mod.in_channels // mod.groups, pos, False,
                                          mod.groups))
            else:
                pos = out.numel() // out.shape[-1] if self.per_call else 1
                self.layers.append(_Layer(mod, mod.out_features, mod.in_features, pos, False))

        for m in model.modules():
            if isinstance(m, WEIGHTED):
                hooks.append(m.register_forward_hook(hook))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), flop_counter(model) as counter:
                model(torch.zeros(1, *input_shape))
        finally:
            model.train(was_training)
            for h in hooks:
                h.remove()
        names = {m: n for n, m in model.named_modules()}
        # member -> [(group, its channels per unit, its channels of each unit where they differ by unit, or None)]:
        # a layer whose outputs are split among groups (Inception-ResNet's block output, added to a stream made of
        # concatenated branches) is a member of each
        self._out_group: dict[nn.Module, list[tuple[int, int, torch.Tensor | None]]] = {}
        self._in_reads: dict[nn.Module, list[tuple[int, torch.Tensor]]] = {}
        for gi, g in enumerate(self.groups):
            for n in g.members:
                counts = g.member_counts.get(n)
                self._out_group.setdefault(model.get_submodule(n), []).append(
                    (gi, g.member_unit(n), None if counts is None else counts.double()))
            for c in g.consumers:
                counts = torch.bincount(c.root_of[c.root_of >= 0], minlength=g.size).double()
                self._in_reads.setdefault(c.module, []).append((gi, counts))
        self._names = names
        # per layer: ([(out group, its channels per unit, per-unit counts or None)], out, depthwise, in per
        # group, positions, groups, [(group, counts, total)])
        self._plan = [(self._out_group.get(l.module, []), l.out, l.depthwise, l.in_per_group, l.positions, l.groups,
                       [(gj, counts, float(counts.sum())) for gj, counts in self._in_reads.get(l.module, [])])
                      for l in self.layers]
        # what no group changes (attention products, layers outside every group...): counted once
        self.fixed = self._dense_total(model, counter) - self._layer_macs(None, None)

    def _dense_total(self, model: nn.Module, counter: FlopCounterMode) -> float:
        return counter.get_total_flops() // 2

    def _out_now(self, outs: list, out: int, kept: dict, w: list[int]) -> float:
        """Output channels left of a layer with ``out`` channels holding those of the groups ``outs``."""
        for gi, per_unit, held in outs:
            if held is not None:
                out -= float(held.sum()) - self._held(gi, held, kept.get(gi), w[gi])
            else:
                out -= (self.groups[gi].size - w[gi]) * per_unit
        return out

    def _held(self, gi: int, counts: torch.Tensor, kept, width: int) -> float:
        """Channels of a layer holding (member) or reading (consumer) ``counts[u]`` channels of unit ``u`` of
        group ``gi`` (an uneven group) that stay: exactly for the units ``kept``; for ``width`` units, those of
        the group's quotas (:meth:`.ChannelGroup.quotas`, which every method selects to), each class of units at
        its mean count."""
        if kept is not None:
            return float(counts[sorted(set(int(u) for u in kept))].sum())
        if (gi, width) not in self._quota_cache:
            self._quota_cache[gi, width] = self.groups[gi].quotas(width)
        cls, quota = self._quota_cache[gi, width]
        cls_t = torch.as_tensor(cls)
        return sum(q * float(counts[cls_t == c].mean()) for c, q in enumerate(quota) if q)

    def macs(self, kept: dict[int, Sequence[int]] | None = None, widths: Sequence[int] | None = None) -> int:
        """MACs per sample keeping units ``kept[gi]`` (exact), or ``widths[gi]`` units of each group."""
        return int(round(self.fixed + self._layer_macs(kept, widths)))

    def cost(self, widths: Sequence[int] | None = None) -> int:
        """The cost (here MACs) with ``widths[gi]`` units of each group (``None``: the dense network)."""
        return self.macs(widths=widths)

    def _layer_macs(self, kept, widths) -> float:
        kept = kept or {}
        sizes = [g.size for g in self.groups]
        w = [len(set(kept[i])) if i in kept else (widths[i] if widths is not None else sizes[i])
             for i in range(len(sizes))]
        total = 0.0
        for outs, out, depthwise, inp, positions, groups, reads in self._plan:
            out = self._out_now(outs, out, kept, w)
            if depthwise:
                total += out * positions
                continue
            for gj, counts, count_total in reads:
                if gj in kept:
                    lost = count_total - float(counts[sorted(set(kept[gj]))].sum())
                elif self.groups[gj].member_counts:  # an uneven group: the units of its quotas
                    lost = count_total - self._held(gj, counts, None, w[gj])
                else:
                    lost = count_total * (sizes[gj] - w[gj]) / sizes[gj]
                inp -= lost / groups
            total += out * inp * positions
        return total


class ParamsModel(MacsModel):
    """Analytic parameter count of ``model`` for any per-group widths: Conv2d/Linear weights and biases, and
    the per-channel parameters of the layers that follow a group's channels (batch norm, say), found with
    Torch-Pruning's dependency ``graph``; every other parameter is counted as fixed."""

    kind = "parameters"
    per_call = False

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], input_shape: tuple[int, ...], graph):
        self._per_unit = [_channel_params(graph, g) for g in groups]
        super().__init__(model, groups, input_shape)

    def _dense_total(self, model: nn.Module, counter: FlopCounterMode) -> float:
        return sum(p.numel() for p in model.parameters())

    def _layer_macs(self, kept, widths) -> float:
        kept = kept or {}
        w = [len(set(kept[i])) if i in kept else (widths[i] if widths is not None else g.size)
             for i, g in enumerate(self.groups)]
        biases = sum(self._bias_out(l, w, kept) for l in self.layers)
        per_channel = 0.0
        for gi, (c, wi) in enumerate(zip(self._per_unit, w)):
            if isinstance(c, torch.Tensor):  # an uneven group: which units are kept decides
                per_channel += self._held(gi, c, kept.get(gi), wi)
            else:
                per_channel += c * wi
        return super()._layer_macs(kept, widths) + biases + per_channel

    def _bias_out(self, layer: _Layer, w: list[int], kept: dict) -> float:
        if getattr(layer.module, "bias", None) is None:
            return 0
        return self._out_now(self._out_group.get(layer.module, []), layer.out, kept, w)


def _channel_params(graph, group: ChannelGroup) -> int | torch.Tensor:
    """Parameters removed with one unit of ``group`` outside Conv2d/Linear layers (batch-norm scales, ...); for
    an uneven group (:attr:`.ChannelGroup.member_counts`), those of each unit, a ``(size,)`` tensor."""
    from .tracing import static_index_mapping

    if graph is None:
        return 0
    with static_index_mapping():
        pruner = graph.get_pruner_of_module(group.root)
        items = graph.get_pruning_group(group.root, pruner.prune_out_channels, list(range(group.channels))).items
    uneven = bool(group.member_counts) and group.parts is None
    total, per = 0, torch.zeros(group.size, dtype=torch.float64)
    seen = set()
    for item in items:
        mod = item.dep.target.module
        if isinstance(mod, WEIGHTED) or not isinstance(mod, nn.Module) or mod in seen:
            continue
        seen.add(mod)
        per_channel = sum(p.numel() // p.shape[0] for p in mod.parameters(recurse=False) if p.dim() >= 1
                          and p.shape[0] == group.channels)
        if uneven and not per_channel:  # a layer sized by part of the group (a branch's batch norm)
            n = sum(p.numel() // p.shape[0] for p in mod.parameters(recurse=False) if p.dim() >= 1
                    and p.shape[0] == len(item.idxs))
            for r in item.root_idxs:
                if r is not None:
                    per[int(r) % group.size] += n
        elif uneven:
            per += per_channel * group.unit
        total += per_channel * group.unit
    return per if uneven else total


def cost_model(kind: str, model: nn.Module, groups: Sequence[ChannelGroup], input_shape: tuple[int, ...],
               graph=None) -> MacsModel:
    """The :class:`MacsModel` (``kind`` ``macs``) or :class:`ParamsModel` (``params``) of ``model``."""
    if kind == "params":
        return ParamsModel(model, groups, input_shape, graph)
    return MacsModel(model, groups, input_shape)


def _step(size: int, round_to: int) -> int:
    """The width granularity of a group: ``round_to``, or 1 for groups narrower than two steps."""
    return round_to if size >= 2 * round_to else 1


def least(group: ChannelGroup, round_to: int) -> int:
    """The narrowest width of ``group``: one step, and for an uneven group one unit of each kind (no member
    layer left without a channel, :meth:`.ChannelGroup.quotas`)."""
    q = _step(group.size, round_to)
    kinds = group.quotas(group.size)
    if kinds is None:
        return q
    return min(group.size, q * -(-len(kinds[1]) // q))


def widths_for_ratio(groups: Sequence[ChannelGroup], r: float, round_to: int = 1,
                     fixed: dict[int, int] | None = None) -> list[int]:
    """Every group keeps ``r · N`` channels rounded to a multiple of ``round_to`` (at least one step).

    Groups narrower than ``2 · round_to`` channels are rounded to single channels instead; groups in
    ``fixed`` keep the width given there.
    """
    out = []
    fixed = fixed or {}
    for gi, g in enumerate(groups):
        if gi in fixed:
            out.append(fixed[gi])
            continue
        q = _step(g.size, round_to)
        out.append(max(least(g, round_to), min(g.size, q * int(round(r * g.size / q)))))
    return out


def allocate(macs_model: MacsModel, target_fraction: float, round_to: int = 1,
             fixed: dict[int, int] | None = None) -> list[int]:
    """Per-group widths whose MACs are as close as possible to ``target_fraction`` of the dense MACs.

    With ``round_to`` > 1 each group keeps a multiple of ``round_to`` channels (CPU and accelerator kernels
    run fastest on channel counts that fill their vector width), or all of them. Groups in ``fixed`` (index:
    width) keep that width; the others share the rest of the budget.

    Raises:
        NetsiftError: the target is below the MACs left with every group at its narrowest (the rest of the
            network, e.g. attention kept whole, is not pruned).
    """
    fixed = fixed or {}
    groups = macs_model.groups
    dense = macs_model.cost([g.size for g in groups])
    target = target_fraction * dense
    floor = macs_model.cost(widths_for_ratio(groups, 0.0, round_to, fixed)) / dense
    flag = {"MACs": "--macs", "parameters": "--params", "latency": "--latency"}.get(macs_model.kind, "--macs")
    if target_fraction < floor - min(0.005, 0.02 * floor):  # 2% of slack (at most 0.005) for rounding to channels
        raise NetsiftError(f"a {macs_model.kind} budget of {target_fraction:g} is out of reach: with every prunable "
                           f"channel group at its narrowest the network keeps {floor:.3f} of its {macs_model.kind}; "
                           f"the smallest reachable budget is {flag} {floor:.3g}")
    ceiling = macs_model.cost(widths_for_ratio(groups, 1.0, round_to, fixed)) / dense
    if target_fraction > ceiling + min(0.005, 0.02 * ceiling):  # the fixed groups (layer_density) cap the rest
        raise NetsiftError(f"a {macs_model.kind} budget of {target_fraction:g} is out of reach: with the layer "
                           f"densities given and every other channel group whole the network keeps {ceiling:.3f} of "
                           f"its {macs_model.kind}; the largest reachable budget is {flag} {ceiling:.3g}")
    lo, hi = 0.0, 1.0
    best = widths_for_ratio(groups, 1.0, round_to, fixed)
    best_err = abs(macs_model.cost(best) - target)
    for _ in range(40):
        mid = (lo + hi) / 2
        w = widths_for_ratio(groups, mid, round_to, fixed)
        m = macs_model.cost(w)
        if abs(m - target) < best_err:
            best, best_err = w, abs(m - target)
        if m > target:
            hi = mid
        else:
            lo = mid
    # nudge single groups by one step while that brings the MACs closer to the target
    improved = True
    while improved and best_err > 0.002 * target:
        improved = False
        for gi in sorted((i for i in range(len(groups)) if i not in fixed), key=lambda i: -groups[i].size):
            q = _step(groups[gi].size, round_to)
            for new in (q * ((best[gi] - 1) // q), min(groups[gi].size, q * (best[gi] // q + 1))):
                w = list(best)
                w[gi] = new
                if not least(groups[gi], round_to) <= new <= groups[gi].size or new == best[gi]:
                    continue
                err = abs(macs_model.cost(w) - target)
                if err < best_err:
                    best, best_err, improved = w, err, True
    return best
