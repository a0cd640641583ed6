"""Channel groups merged across a grouped convolution: concatenations and reorderings that feed one.

A grouped convolution with ``G`` groups (and a GroupNorm) can only lose channels position by position: position
``q`` of every one of its channel groups goes, or none. Torch-Pruning's groups do not always line up with that:
the branches of a concatenation read by one grouped convolution are separate groups, each covering some of its
channel groups, and a group may reach it in another order than its root's. Such groups are *pending*; every
pending group sharing a grouped layer with another is merged (transitively) into one :class:`ChannelGroup`
whose unit ``q`` is the channels at position ``q`` of every channel group of the first grouped layer, wherever
they come from. The merge is refused (with the reason) when the grouped layers read channels from outside the
merged groups, when two grouped layers order the channels differently, or when a root's channels do not spread
evenly over the units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn

from .group_types import ChannelGroup, Consumer, LeftWhole, Part, is_depthwise, is_grouped
from .norms import NORMS, norm_channels

WEIGHTED = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)
"""The layers whose weights read or make a group's channels (LowFormer's upsampling is a transposed convolution)."""


@dataclass
class Constraint:
    """A grouped layer the group reaches: ``mapping[root channel] = index`` in the layer's ``channels``."""

    key: tuple  # (module, "in" | "out")
    name: str
    channels: int
    groups: int
    mapping: dict[int, int]


@dataclass
class Pending:
    """A Torch-Pruning group waiting to be merged."""

    name: str
    root: nn.Module
    channels: int
    group: object  # torch_pruning's Group
    constraints: list[Constraint]


def constraints_of(dg: tp.DependencyGraph, group, names: dict) -> list[Constraint]:
    """The grouped convolutions (input and output side) and GroupNorms ``group`` reaches."""
    out = []
    for item in group.items:
        mod, handler = item.dep.target.module, item.dep.handler
        if isinstance(mod, nn.GroupNorm):
            key, channels, groups = (mod, "out"), mod.num_channels, mod.num_groups
        elif is_grouped(mod):
            side = "out" if dg.is_out_channel_pruning_fn(handler) else "in"
            key, groups = (mod, side), mod.groups
            channels = mod.out_channels if side == "out" else mod.in_channels
        else:
            continue
        mapping = {int(r): int(i) for i, r in zip(item.idxs, item.root_idxs) if r is not None}
        out.append(Constraint(key, names.get(mod, "?"), channels, groups, mapping))
    return out


def _extent(dg: tp.DependencyGraph, mod: nn.Module, handler) -> int | None:
    """How many channels a layer has on the side ``handler`` prunes (``None``: a layer type not checked)."""
    out = dg.is_out_channel_pruning_fn(handler)
    if isinstance(mod, nn.Conv2d):
        return mod.out_channels if out else mod.in_channels
    if isinstance(mod, nn.Linear):
        return mod.out_features if out else mod.in_features
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return mod.num_features
    if isinstance(mod, nn.GroupNorm):
        return mod.num_channels
    return None


def out_of_range(dg: tp.DependencyGraph, group, names: dict) -> str | None:
    """Why a Torch-Pruning group cannot be trusted: it maps channels past a layer's own (an index mapping it got
    wrong, e.g. through a concatenation whose sizes it could not infer), or ``None``."""
    for item in group.items:
        mod = item.dep.target.module
        n = _extent(dg, mod, item.dep.handler) if isinstance(mod, nn.Module) else None
        if n is not None and any(not 0 <= int(i) < n for i in item.idxs):
            return f"Torch-Pruning maps its channels outside the channels of {names.get(mod, '?')}"
    return None


def needs_merge(constraints: list[Constraint]) -> bool:
    """Whether a group reaches a grouped layer in another order, or covers only some of its channels."""
    return any(sorted(c.mapping.values()) != list(range(c.channels)) or any(r != i for r, i in c.mapping.items())
               for c in constraints)


def members_and_reads(dg: tp.DependencyGraph, group, names: dict) -> tuple[list[str], list[tuple]]:
    """The group's member layers (output channels) and its weighted reads: ``(module, idxs, root_idxs)``."""
    members, reads = [], []
    for item in group.items:
        dep, mod = item.dep, item.dep.target.module
        if not isinstance(mod, WEIGHTED):
            continue
        if _holds(dg, item):
            if names[mod] not in members:
                members.append(names[mod])
        elif dg.is_in_channel_pruning_fn(dep.handler) and not is_depthwise(mod):
            reads.append((mod, list(item.idxs), list(item.root_idxs)))
    return members, reads


def _holds(dg: tp.DependencyGraph, item) -> bool:
    """Whether a Torch-Pruning group item cuts its layer's output channels (a member; a depthwise convolution
    follows its input)."""
    mod = item.dep.target.module
    return dg.is_out_channel_pruning_fn(item.dep.handler) or (is_depthwise(mod) and item.dep.handler in (
        tp.prune_depthwise_conv_in_channels, tp.prune_depthwise_conv_out_channels))


def member_counts(dg: tp.DependencyGraph, group, names: dict, size: int, unit_of) -> dict[str, Tensor]:
    """Output channels of each member layer per unit (``(size,)`` counts, unit of root channel ``r``:
    ``unit_of(r)``), for the members that hold different numbers of channels of different units: a CSP block's
    ``cat([main, short])`` under an attention gate puts ``main``'s channels in some units and ``short``'s in the
    others, so which units are kept decides which convolution shrinks."""
    held: dict[str, set[tuple[int, int]]] = {}
    for item in group.items:
        mod = item.dep.target.module
        if isinstance(mod, WEIGHTED) and mod in names and _holds(dg, item):
            held.setdefault(names[mod], set()).update(
                (int(i), unit_of(int(r))) for i, r in zip(item.idxs, item.root_idxs) if r is not None)
    out = {}
    for name, pairs in held.items():
        counts = torch.bincount(torch.tensor([u for _, u in pairs], dtype=torch.long), minlength=size)
        if len(counts) == size and int(counts.min()) != int(counts.max()):
            out[name] = counts
    return out


def norm_reads(dg: tp.DependencyGraph, group) -> list[tuple]:
    """The group's norms across channels (:data:`.norms.NORMS`): ``(module, idxs, root_idxs)``."""
    out = []
    for item in group.items:
        mod = item.dep.target.module
        if isinstance(mod, NORMS) and norm_channels(mod) is not None and dg.is_out_channel_pruning_fn(
                item.dep.handler):
            out.append((mod, list(item.idxs), list(item.root_idxs)))
    return out


def add_reads(table: dict, reads: list[tuple], names: dict, unit_of) -> str:
    """Record ``reads`` (``(module, idxs, root_idxs)``) in ``table`` (module -> :class:`Consumer`), input index
    ``i`` fed by unit ``unit_of(root index)``; the reason when an index is outside the module's inputs."""
    for mod, idxs, root_idxs in reads:
        n_in = mod.in_channels if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)) else mod.in_features \
            if isinstance(mod, nn.Linear) else norm_channels(mod)
        if any(not 0 <= int(i) < n_in for i in idxs):
            return f"Torch-Pruning maps its channels outside the inputs of {names[mod]}"
        c = table.setdefault(mod, Consumer(names[mod], mod, torch.full((n_in,), -1, dtype=torch.long)))
        for i, r in zip(idxs, root_idxs):
            if r is not None:
                c.root_of[i] = unit_of(int(r))
    return ""


def _clusters(pending: list[Pending]) -> list[list[Pending]]:
    """Pending groups joined by the grouped layers they share (connected components, in input order)."""
    parent = list(range(len(pending)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict = {}
    for i, p in enumerate(pending):
        for c in p.constraints:
            j = owner.setdefault(c.key, i)
            parent[find(i)] = find(j)
    out: dict[int, list[Pending]] = {}
    for i, p in enumerate(pending):
        out.setdefault(find(i), []).append(p)
    return list(out.values())


def _units(cluster: list[Pending]) -> tuple[dict[tuple[int, int], int], int, int] | str:
    """``{(part, root channel): unit}``, size and unit width from the first grouped layer, or why not."""
    layers: dict = {}
    for pi, p in enumerate(cluster):
        for c in p.constraints:
            entry = layers.setdefault(c.key, (c, {}))
            for r, i in c.mapping.items():
                if i in entry[1]:
                    return f"its channels reach grouped layer {c.name} twice"
                entry[1][i] = (pi, r)
    for c, seen in layers.values():
        if sorted(seen) != list(range(c.channels)):
            return f"grouped layer {c.name} also reads channels that cannot be pruned with it"
    first, seen0 = next(iter(layers.values()))
    if len(set(seen0.values())) != len(seen0) or len(seen0) != sum(p.channels for p in cluster):
        return f"only some of its channels reach grouped layer {first.name}"
    per = first.channels // first.groups
    unit_of = {key: i % per for i, key in seen0.items()}
    for c, seen in layers.values():  # every unit must hit every channel group of every grouped layer equally
        counts = torch.zeros(per, c.groups, dtype=torch.long)
        for i, key in seen.items():
            counts[unit_of[key], i // (c.channels // c.groups)] += 1
        if (counts != counts[0, 0]).any():
            return f"grouped layers {first.name} and {c.name} order its channels differently"
    return unit_of, per, first.groups


def merge(pending: list[Pending], dg: tp.DependencyGraph, names: dict, exec_order: dict, min_size: int
          ) -> tuple[list[ChannelGroup], list[LeftWhole]]:
    """Merged channel groups from ``pending``, and the groups left whole with the reason."""
    groups, left = [], []
    for cluster in _clusters(pending):
        built = _build(cluster, dg, names, exec_order, min_size)
        if isinstance(built, str):
            left.extend(_left(dg, p, names, built) for p in cluster)
        else:
            groups.append(built)
    return groups, left


def _build(cluster: list[Pending], dg: tp.DependencyGraph, names: dict, exec_order: dict, min_size: int
           ) -> ChannelGroup | str:
    """One merged group from a cluster of pending groups, or why it cannot be pruned."""
    built = _units(cluster)
    if isinstance(built, str):
        return built
    unit_of, size, unit = built
    parts, member_units, consumers, norms, counts = [], {}, {}, {}, {}
    for pi, p in enumerate(cluster):
        per_unit = [[] for _ in range(size)]
        for r in range(p.channels):
            per_unit[unit_of[(pi, r)]].append(r)
        if len({len(u) for u in per_unit}) != 1:
            return "its channels do not spread evenly over the channel groups of the grouped layers"
        parts.append(Part(p.name, torch.tensor(per_unit, dtype=torch.long)))
        members, reads = members_and_reads(dg, p.group, names)
        for m in members:
            member_units[m] = member_units.get(m, 0) + len(per_unit[0])
        for m, c in member_counts(dg, p.group, names, size, lambda r, pi=pi: unit_of[(pi, r)]).items():
            counts[m] = counts[m] + c if m in counts else c
        why = add_reads(consumers, reads, names, lambda r, pi=pi: unit_of[(pi, r)]) or add_reads(
            norms, norm_reads(dg, p.group), names, lambda r, pi=pi: unit_of[(pi, r)])
        if why:
            return why
    if not consumers:
        return "no weighted layer reads its channels"
    if size < min_size:
        return f"its {size * unit} channels form one unit of its grouped layers"
    modules = {n: m for m, n in names.items()}
    order = min(exec_order.get(modules[n], 10**9) for n in member_units)
    head = min(parts, key=lambda part: exec_order.get(modules[part.name], 10**9))
    return ChannelGroup(head.name, modules[head.name], size, list(consumers.values()), list(member_units), order,
                        unit, parts, member_units, list(norms.values()), counts)


def _left(dg: tp.DependencyGraph, p: Pending, names: dict, reason: str) -> LeftWhole:
    members, _ = members_and_reads(dg, p.group, names)
    layers = [p.name] + [m for m in members if m != p.name]
    return LeftWhole(tuple(layers), p.channels, reason)
