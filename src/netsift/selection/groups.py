"""Channel groups: which output channels of a network can be selected, found on Torch-Pruning's dependency graph.

A :class:`ChannelGroup` is a set of ``N`` coupled channels (one conv's filters with its BN; or a whole residual
stream, pruned together across the blocks that add into it; depthwise convolutions follow their input). Its
*consumers* are the Conv2d/Linear (and transposed convolution) layers that read the channels with weights:
masking a channel at every consumer's input is exactly removing it, and scaling a consumer's input by ``N/n`` is
exactly multiplying the consumer's weight columns by ``N/n`` (how the rescale is folded in at removal, see
:mod:`.removal`). Its *norms* are the normalisers whose statistics span its channels (a LayerNorm over
channels), which the selection computes over the kept channels (:mod:`.norms`); its *member counts* say which
units each member layer holds where they differ (a CSP block's gated concatenation).

Grouped convolutions (ResNeXt, RegNet) need every one of their ``G`` channel groups to keep the same positions,
as Torch-Pruning's pruners do: such a group is selected in *units* of ``G`` channels (unit ``j`` is channels
``j, j + N/G, ...``), and ``size`` counts units.

When a group's channels reach a grouped convolution (or GroupNorm) in another order, or only some of its
channels (the branches of a concatenation read by one grouped convolution), the Torch-Pruning groups that share
that layer are merged into one: unit ``j`` is then the channels at position ``j`` of every channel group of the
grouped layer, wherever they come from (:class:`Part` lists each root's channels per unit), so any subset of units
keeps the grouped layer's channel groups equal and in the same order.

Every channel group left whole is listed (:class:`LeftWhole`: its layers, channels and the reason). Groups are
left whole when they reach a module traced as atomic (see
:mod:`.tracing`: attention keeps its width and heads, ShuffleNet's shuffled streams keep theirs), when they would
change the embedding width of an ``nn.MultiheadAttention`` (ViT reshapes with its fixed hidden width; the MLP
widths of transformer blocks are pruned), and when removing one unit of them, tried on a copy of the model,
fails in Torch-Pruning or in the forward pass (a width hard-coded in the model's code); also when they are one
unit wide, when no weighted layer reads them, and when they are coupled to the logits layer or to a layer in
``ignored_layers``. The logits layer itself is never pruned and not listed.
"""

from __future__ import annotations

import copy
import math

import torch
import torch_pruning as tp
from torch import nn

from ..errors import NetsiftError
from .group_types import ChannelGroup, Consumer, LeftWhole, Part, is_depthwise, is_grouped  # noqa: F401
from .merged import (WEIGHTED, Pending, add_reads, constraints_of, member_counts, members_and_reads, merge,
                     needs_merge, norm_reads, out_of_range)
from .tracing import (OPAQUE, WalkTooLong, _first_line, bounded_walks, build_graph, register_opaque,  # noqa: F401
                      static_index_mapping)

META_BYTES = 512 * 2**20  # trial removals of larger models run on the meta device (see _verified)



_is_depthwise, _is_grouped = is_depthwise, is_grouped  # the names other modules used


def output_layers(model: nn.Module) -> list[nn.Module]:
    """The layers producing the logits (never pruned): the last Linear, or the last Conv2d if there is none."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        last = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return last[-1:]


def _execution_order(model: nn.Module, input_shape: tuple[int, ...]) -> dict[nn.Module, int]:
    order: dict[nn.Module, int] = {}

    def hook(mod, inp):
        order.setdefault(mod, len(order))

    hooks = [m.register_forward_pre_hook(hook) for m in model.modules()
             if isinstance(m, WEIGHTED)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return order


def _refusal(dg: tp.DependencyGraph, group, names: dict) -> str | None:
    """Why a Torch-Pruning group must not be pruned, or ``None``."""
    opaque = getattr(dg, "netsift_opaque", {})
    for item in group.items:
        node, mod = item.dep.target, item.dep.target.module
        if node in opaque and opaque[node][1] == "atomic":
            return f"its channels pass through {opaque[node][0]}, which is kept whole"
        if isinstance(mod, nn.MultiheadAttention):
            return f"it would change the embedding width of attention layer {names.get(mod, '?')}"
    return None


def _unit(group) -> int:
    """Channels per unit: the lcm of the groups of the grouped convolutions and GroupNorms in ``group``."""
    unit = 1
    for item in group.items:
        mod = item.dep.target.module
        if isinstance(mod, nn.GroupNorm):
            unit = math.lcm(unit, mod.num_groups)
        elif is_grouped(mod):
            unit = math.lcm(unit, mod.groups)
    return unit


_TYING = (tp.ops.OPTYPE.SPLIT, tp.ops.OPTYPE.CONCAT)


def _tied(dg: tp.DependencyGraph, group) -> int | None:
    """Root channels that go together, for a group through a split or a concatenation. A gated MLP's
    ``fc1(x).chunk(2, -1)`` multiplies the halves, so channel ``c`` and ``c + C/2`` of ``fc1`` reach one input of
    ``fc2`` and must go as one unit. A Ghost module's ``cat([x1, dw(x1)])`` (GhostNet), multiplied by a
    squeeze-excitation gate or added to a residual, ties channel ``c`` to ``c + C/2`` through the depthwise
    convolution. Found by walking from the root's channel 0 alone: ``k`` channels ``{0, C/k, 2C/k, ...}`` give
    units of ``k`` (``None``: tied in another pattern)."""
    if not any(getattr(it.dep.target, "type", None) in _TYING for it in group.items):
        return 1
    root, channels = group[0].dep.target.module, len(group[0].idxs)
    with static_index_mapping(), bounded_walks(dg.model, dg):
        probe = dg.get_pruning_group(root, group[0].dep.handler, [0])
    own = sorted({int(i) for it in probe.items if it.dep.target.module is root
                  and dg.is_out_channel_pruning_fn(it.dep.handler) for i in it.idxs})
    k = len(own)
    if k <= 1:
        return 1
    return k if channels % k == 0 and own == [j * (channels // k) for j in range(k)] else None


def _left(dg: tp.DependencyGraph, group, names: dict, reason: str) -> LeftWhole:
    root = group[0].dep.target.module
    members, _ = members_and_reads(dg, group, names)
    return LeftWhole(tuple([names[root]] + [m for m in members if m != names[root]]), len(group[0].idxs), reason)


def _plain_group(dg: tp.DependencyGraph, group, names: dict, exec_order: dict, modules: dict,
                 min_size: int) -> ChannelGroup | LeftWhole:
    """One Torch-Pruning group as a :class:`ChannelGroup`, or why it is left whole."""
    root = group[0].dep.target.module
    channels = len(group[0].idxs)
    tied = _tied(dg, group)
    if tied is None:
        return _left(dg, group, names,
                     "a split or a concatenation ties its channels to others in an irregular pattern")
    unit = math.lcm(_unit(group), tied)
    if channels % unit:
        return _left(dg, group, names, f"its {channels} channels do not split into {unit} equal channel groups")
    size = channels // unit
    if size < min_size:
        return _left(dg, group, names, "it has a single channel" if channels == 1 else
                     f"its {channels} channels form one unit of its grouped layers")
    members, reads = members_and_reads(dg, group, names)
    consumers: dict[nn.Module, Consumer] = {}
    norms: dict[nn.Module, Consumer] = {}
    why = add_reads(consumers, reads, names, lambda r: r % size) or add_reads(
        norms, norm_reads(dg, group), names, lambda r: r % size)
    if why:
        return _left(dg, group, names, why)
    if not consumers:
        return _left(dg, group, names, "no weighted layer reads its channels")
    order = min(exec_order.get(modules[n], 10**9) for n in members) if members else exec_order.get(root, 10**9)
    return ChannelGroup(names[root], root, size, list(consumers.values()), members, order, unit,
                        member_units=_member_units(dg, group, names, size, unit), norms=list(norms.values()),
                        member_counts=member_counts(dg, group, names, size, lambda r: r % size))


def _member_units(dg: tp.DependencyGraph, group, names: dict, size: int, unit: int) -> dict[str, int]:
    """Output channels per unit of the members that hold fewer or more than ``unit`` (a Ghost module's
    ``cat([x1, dw(x1)])`` in a group of tied pairs: each of the two convolutions holds one channel of each
    unit), for the cost models."""
    out: dict[str, set[int]] = {}
    for it in group.items:
        if dg.is_out_channel_pruning_fn(it.dep.handler) and it.dep.target.module in names:
            out.setdefault(names[it.dep.target.module], set()).update(int(i) for i in it.idxs)
    return {n: len(idxs) // size for n, idxs in out.items() if len(idxs) % size == 0 and len(idxs) // size != unit}


def _uncovered(model: nn.Module, dg: tp.DependencyGraph, covered: set, ignored: list[nn.Module],
               names: dict) -> list[LeftWhole]:
    """Layers in no group Torch-Pruning yields: coupled to the logits or to ``ignored_layers`` (the logits layer
    itself is not listed)."""
    outputs = output_layers(model)
    opaque = sorted({name for name, _ in getattr(dg, "netsift_opaque", {}).values()}, key=len, reverse=True)
    left = []
    for m in model.modules():
        if not isinstance(m, WEIGHTED) or m in covered or m in outputs:
            continue
        if m not in dg.module2node:  # inside a module traced as one operation, or never called
            inside = next((o for o in opaque if names[m].startswith(o + ".")), None)
            channels = m.out_channels if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) else m.out_features
            left.append(LeftWhole((names[m],), channels, f"it is inside {inside}, which is traced as one operation"
                                  if inside else "the forward pass does not reach it"))
            continue
        try:
            pruner = dg.get_pruner_of_module(m)
            with static_index_mapping(), bounded_walks(model, dg):
                group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except Exception as e:  # noqa: BLE001 - listed with its reason
            why = str(e) if isinstance(e, WalkTooLong) else f"Torch-Pruning cannot follow it ({_first_line(e)})"
            left.append(LeftWhole((names[m],), 0, why))
            covered.add(m)
            continue
        outs = [it.dep.target.module for it in group.items if dg.is_out_channel_pruning_fn(it.dep.handler)]
        covered.update(outs)
        logits = next((o for o in outs if o in outputs), None)
        held = next((o for o in outs if o in ignored), None)
        reason = (f"its channels are coupled to the logits layer {names.get(logits, '?')}" if logits is not None
                  else "it is in ignored_layers" if held is m
                  else f"its channels are coupled to {names.get(held, '?')}, which is in ignored_layers"
                  if held is not None else "Torch-Pruning gives no group for it")
        left.append(_left(dg, group, names, reason))
    return left


def _all_groups(model: nn.Module, dg: tp.DependencyGraph, ignored: list[nn.Module],
                names: dict) -> tuple[list, list[tuple[nn.Module, str]]]:
    """Torch-Pruning's groups, one walk per root layer as in ``DependencyGraph.get_all_groups``, but a root
    whose walk fails or runs away (:func:`.tracing.bounded_walks`) is left whole with the reason instead of
    ending the search: ``(groups, [(root, reason)])``. A group coupled to an ``ignored`` layer is not
    returned (:func:`_uncovered` says why)."""
    skip = {id(m) for m in ignored + list(dg.IGNORED_LAYERS_IN_TRACING)}
    visited: set[int] = set()
    found, failed = [], []
    with static_index_mapping(), bounded_walks(model, dg):
        for m in list(dg.module2node):
            if id(m) in skip or id(m) in visited or not isinstance(m, WEIGHTED):
                continue
            pruner = dg.get_pruner_of_module(m)
            if pruner is None or pruner.get_out_channels(m) is None:
                continue
            try:
                group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
            except Exception as e:  # noqa: BLE001 - one root Torch-Pruning cannot walk does not end the search
                why = str(e) if isinstance(e, WalkTooLong) else f"Torch-Pruning cannot follow it ({_first_line(e)})"
                failed.append((m, why))
                visited.add(id(m))
                continue
            outs = [it.dep.target.module for it in group.items if dg.is_out_channel_pruning_fn(it.dep.handler)]
            visited.update(id(o) for o in outs)
            if not any(id(o) in skip for o in outs):
                found.append(group)
    return found, failed


def find_groups(model: nn.Module, input_shape: tuple[int, ...], dg: tp.DependencyGraph | None = None,
                min_size: int = 2, ignored_layers: list[nn.Module] | None = None, verify: bool = True,
                skipped: list[LeftWhole] | None = None) -> list[ChannelGroup]:
    """Every prunable channel group of ``model``, in forward order (the logits layer is never pruned).

    ``ignored_layers`` keep their output channels, as in Torch-Pruning (and so does every layer coupled to one).
    Groups that cannot be pruned (see the module notes) are left out; with ``verify``, removing one unit of
    every group is tried on a copy of the model first, and groups whose removal fails (in Torch-Pruning or
    in the pruned network's forward pass) are left out too. ``skipped`` collects a :class:`LeftWhole` for every
    group left whole.

    Raises:
        NetsiftError: the model has no prunable channel group (naming the first layer left out and why).
    """
    dg = dg or build_graph(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    exec_order = _execution_order(model, input_shape)
    modules = dict(model.named_modules())
    ignored = list(ignored_layers or [])
    groups: list[ChannelGroup] = []
    refused: list[LeftWhole] = []
    pending: list[Pending] = []
    covered: set = set()
    all_groups, failed = _all_groups(model, dg, output_layers(model) + ignored, names)
    for root, why in failed:
        covered.add(root)
        channels = root.out_channels if isinstance(root, (nn.Conv2d, nn.ConvTranspose2d)) else root.out_features
        refused.append(LeftWhole((names[root],), channels, why))
    for group in all_groups:
        covered.update(it.dep.target.module for it in group.items if dg.is_out_channel_pruning_fn(it.dep.handler))
        root = group[0].dep.target.module
        reason = _refusal(dg, group, names) or out_of_range(dg, group, names)
        if reason is not None:
            refused.append(_left(dg, group, names, reason))
            continue
        found = constraints_of(dg, group, names)
        if needs_merge(found):
            pending.append(Pending(names[root], root, len(group[0].idxs), group, found))
            continue
        made = _plain_group(dg, group, names, exec_order, modules, min_size)
        (refused if isinstance(made, LeftWhole) else groups).append(made)
    merged, left = merge(pending, dg, names, exec_order, min_size)
    groups += merged
    refused += left
    refused += _uncovered(model, dg, covered, ignored, names)
    groups.sort(key=lambda g: g.order)
    if verify and groups:
        groups = _verified(model, input_shape, groups, refused)
    if skipped is not None:
        skipped.extend(refused)
    if not groups:
        why = f": {refused[0].layers[0]} is not pruned because {refused[0].reason}" if refused else ""
        raise NetsiftError("the model has no prunable channel groups (nothing between its input and logits "
                           f"can lose channels){why}")
    return groups


def unit_importance(dg: tp.DependencyGraph, g: ChannelGroup, importance) -> torch.Tensor | None:
    """Per-unit scores of group ``g`` from a Torch-Pruning importance criterion (``None``: it cannot score it).

    The criterion scores Torch-Pruning's group of every channel of each root; a unit's score is the mean over its
    channels (over every root of a merged group).
    """
    modules = dict(dg.model.named_modules()) if g.parts else {}
    with static_index_mapping():  # nothing is removed while scoring
        roots = [(g.root, list(range(g.channels)), None)] if g.parts is None else \
            [(modules[p.name], sorted(int(c) for c in p.channels.reshape(-1)), p) for p in g.parts]
        tp_groups = [(dg.get_pruning_group(r, dg.get_pruner_of_module(r).prune_out_channels, idxs), idxs, p)
                     for r, idxs, p in roots]
    if g.parts is None:
        s = importance(tp_groups[0][0])
        return g.unit_scores(s) if s is not None and len(s) == g.channels else s
    total = torch.zeros(g.size, dtype=torch.float64)
    for group, idxs, part in tp_groups:
        s = importance(group)
        if s is None or len(s) != len(idxs):
            return None
        at = {c: i for i, c in enumerate(idxs)}
        per_channel = s.detach().double().cpu()
        total += per_channel[torch.tensor([[at[int(c)] for c in row] for row in part.channels.tolist()])].sum(1)
    return (total / g.unit).float()


def prune_groups(model: nn.Module, dg: tp.DependencyGraph, drops: list[tuple[ChannelGroup, list[int]]]) -> None:
    """Remove units ``drop`` of each group from ``model`` in place, with Torch-Pruning's handlers.

    Every group's pruning plan is made on the intact graph and the plans are merged per layer, so each layer
    is cut once (Torch-Pruning's own loop re-derives the whole graph's index mappings after every group).

    Raises:
        NetsiftError: a handler failed (one line naming the group and the layer).
    """
    plan: dict = {}
    modules = dict(model.named_modules())
    try:
        with static_index_mapping():
            for g, drop in drops:
                if not drop:
                    continue
                for name, channels in g.root_channels(drop):  # a merged group has one entry per root
                    root = g.root if name == g.name else modules[name]
                    pruner = dg.get_pruner_of_module(root)
                    for item in dg.get_pruning_group(root, pruner.prune_out_channels, channels).items:
                        entry = plan.setdefault((item.dep.target, item.dep.handler), (item.dep, set(), g.name))
                        entry[1].update(int(i) for i in item.idxs)
    except Exception as e:
        raise NetsiftError(f"cannot plan the removal of channels: {_first_line(e)}") from None
    for dep, idxs, name in plan.values():
        one = tp.dependency.Group()
        one._DG = dg
        one.add_dep(dep, sorted(idxs))
        extra = _extra_out_tensors(dep.target.module) if dg.is_out_channel_pruning_fn(dep.handler) else {}
        try:
            one.prune(record_history=False)
            _cut_extra(dep.target.module, extra, idxs)
        except Exception as e:
            layer = dg._module2name.get(dep.target.module, dep.target.name) if not isinstance(
                dep.target.module, nn.Parameter) else dep.target.name
            raise NetsiftError(f"cannot remove channels of group {name} at {layer}: {_first_line(e)}") from None


_HANDLED = frozenset({"weight", "bias"})  # what Torch-Pruning's handlers cut


def _extra_out_tensors(m) -> dict[str, int]:
    """A Conv2d/Linear subclass's own per-output-channel tensors beyond weight and bias (timm's
    ``ScaledStdConv2d.gain``), which Torch-Pruning's handlers do not know: ``{name: out channels}``."""
    if not isinstance(m, (nn.Conv2d, nn.Linear)) or type(m) in (nn.Conv2d, nn.Linear):
        return {}
    out = m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
    tensors = {**m._parameters, **m._buffers}
    return {k: out for k, t in tensors.items() if k not in _HANDLED and t is not None and t.dim() >= 1
            and t.shape[0] == out}


def _cut_extra(m, extra: dict[str, int], drop) -> None:
    """Remove the dropped output channels from ``extra`` tensors of ``m`` (dim 0), as from its weight."""
    for k, out in extra.items():
        keep = torch.tensor(sorted(set(range(out)) - {int(i) for i in drop}), device=getattr(m, k).device)
        old = getattr(m, k)
        if isinstance(old, nn.Parameter):
            m._parameters[k] = nn.Parameter(old.data.index_select(0, keep).clone(), requires_grad=old.requires_grad)
        else:
            m._buffers[k] = old.index_select(0, keep).clone()


def _try_removal(model: nn.Module, input_shape: tuple[int, ...], groups: list[ChannelGroup],
                 meta: bool = False) -> str | None:
    """Remove one unit of each group on a copy of ``model`` and run it; the failure's first line, or ``None``.

    With ``meta`` the copy holds no data (PyTorch's meta device): only shapes are propagated, which is what can
    fail, at no cost in memory or time.
    """
    device = "meta" if meta else "cpu"
    trial = _meta_copy(model) if meta else copy.deepcopy(model)
    try:
        dg = build_graph(trial, input_shape, device)
        by_name = dict(trial.named_modules())
        moved = [(copy.copy(g), [g.size - 1]) for g in groups]
        for g, _ in moved:
            g.root = by_name[g.name]
        prune_groups(trial, dg, moved)
        with torch.no_grad():
            trial.eval()(torch.zeros(1, *input_shape, device=device))
    except NetsiftError as e:
        return str(e)
    except Exception as e:
        return _first_line(e)
    return None


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers live on the meta device (shapes, no data)."""
    memo: dict[int, object] = {}
    for t in model.parameters():
        memo[id(t)] = nn.Parameter(torch.empty_like(t, device="meta"), requires_grad=t.requires_grad)
    for t in model.buffers():
        memo[id(t)] = torch.empty_like(t, device="meta")
    return copy.deepcopy(model, memo)


def _verified(model: nn.Module, input_shape: tuple[int, ...], groups: list[ChannelGroup],
              refused: list[LeftWhole]) -> list[ChannelGroup]:
    """``groups`` minus those whose removal fails (bisection: a few trial removals even with failures).

    Models over ``META_BYTES`` of weights are tried on the meta device first (no copy of the weights; slower
    per operation, batch norm has no fast meta kernel); a failure there is confirmed on a real copy (an
    operation without a meta implementation must not cost a group).
    """
    big = sum(t.numel() * t.element_size() for t in model.state_dict().values()) > META_BYTES
    if big and _try_removal(model, input_shape, groups, meta=True) is None:
        return groups
    failure = _try_removal(model, input_shape, groups)
    if failure is None:
        return groups

    def bad(subset: list[ChannelGroup], why: str) -> list[tuple[ChannelGroup, str]]:
        if len(subset) == 1:
            return [(subset[0], why)]
        half = len(subset) // 2
        out = []
        for part in (subset[:half], subset[half:]):
            f = _try_removal(model, input_shape, part)
            if f is not None:
                out += bad(part, f)
        return out

    ok = list(groups)
    for _ in range(3):  # groups failing only together with others: bisect again
        found = bad(ok, failure)
        if not found:
            return ok
        for g, why in found:
            refused.append(_failed(g, why))
        ok = [g for g in ok if all(g is not b for b, _ in found)]
        if not ok:
            return ok
        failure = _try_removal(model, input_shape, ok)
        if failure is None:
            return ok
    refused.extend(_failed(g, failure) for g in ok)
    return []


def _failed(g: ChannelGroup, why: str) -> LeftWhole:
    return LeftWhole(tuple([g.name] + [m for m in g.members if m != g.name]), g.channels,
                     f"removing its channels fails ({why})")
