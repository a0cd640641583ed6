"""Channel groups: which output channels of a network can be selected, found on Torch-Pruning's dependency graph.

A :class:`ChannelGroup` is a set of ``N`` coupled channels (one conv's filters with its BN; or a whole residual
stream, pruned together across the blocks that add into it; depthwise convolutions follow their input). Its
*consumers* are the Conv2d/Linear layers that read the channels with weights: masking a channel at every
consumer's input is exactly removing it, and scaling a consumer's input by ``N/n`` is exactly multiplying the
consumer's weight columns by ``N/n`` (how the rescale is folded in at removal, see :mod:`.removal`).

Grouped convolutions (ResNeXt, RegNet) need every one of their ``G`` channel groups to keep the same positions,
as Torch-Pruning's pruners do: such a group is selected in *units* of ``G`` channels (unit ``j`` is channels
``j, j + N/G, ...``), and ``size`` counts units.

Groups are left out (and listed with the reason) when they reach a module traced as atomic (see
:mod:`.tracing`: attention keeps its width and heads, ShuffleNet's shuffled streams keep theirs), when they would
change the embedding width of an ``nn.MultiheadAttention`` (ViT reshapes with its fixed hidden width; the MLP
widths of transformer blocks are pruned), and when removing one unit of them, tried on a copy of the model,
fails in Torch-Pruning or in the forward pass (a width hard-coded in the model's code).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn

from ..errors import NetsiftError
from .tracing import OPAQUE, _first_line, build_graph, register_opaque, static_index_mapping  # noqa: F401

META_BYTES = 512 * 2**20  # trial removals of larger models run on the meta device (see _verified)


@dataclass
class Consumer:
    """A layer reading a group's channels: ``root_of[i]`` is the group unit feeding input index ``i``."""

    name: str
    module: nn.Module
    root_of: Tensor  # (in_features,) long, -1 where the input is not from this group


@dataclass
class ChannelGroup:
    """``size`` coupled units of ``unit`` channels rooted at layer ``name``; a selection keeps a subset of
    ``range(size)``."""

    name: str
    root: nn.Module
    size: int
    consumers: list[Consumer]
    members: list[str] = field(default_factory=list)  # every layer whose out channels are in the group
    order: int = 0  # position of the root in the forward pass
    unit: int = 1  # channels per unit: the channel groups of grouped convolutions touching the group

    @property
    def channels(self) -> int:
        """Channels of the group (``size · unit``)."""
        return self.size * self.unit

    def channel_indices(self, units) -> list[int]:
        """The channels of ``units``: unit ``j`` is channels ``j + k · size`` for ``k < unit``."""
        return sorted(int(j) + k * self.size for j in set(int(u) for u in units) for k in range(self.unit))

    def unit_scores(self, scores: Tensor) -> Tensor:
        """Per-unit scores from per-channel ones (the mean over a unit's channels)."""
        if self.unit == 1 or len(scores) == self.size:
            return scores
        return scores.reshape(self.unit, self.size).mean(0)

    def __repr__(self) -> str:
        unit = f"x{self.unit}" if self.unit > 1 else ""
        return f"ChannelGroup({self.name}, N={self.size}{unit}, consumers={[c.name for c in self.consumers]})"


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def _is_grouped(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups != m.out_channels


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

    hooks = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
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


def _unit(group, names: dict) -> tuple[int, str | None]:
    """Channels per unit (lcm of the grouped convolutions' groups), or a reason the layout does not fit."""
    unit = 1
    for item in group.items:
        mod = item.dep.target.module
        if isinstance(mod, nn.GroupNorm):
            unit = math.lcm(unit, mod.num_groups)
        if not _is_grouped(mod):
            continue
        if list(item.idxs) != [r for r in item.root_idxs]:
            return 0, f"its channels reach grouped convolution {names.get(mod, '?')} in another order"
        unit = math.lcm(unit, mod.groups)
    return unit, None


def find_groups(model: nn.Module, input_shape: tuple[int, ...], dg: tp.DependencyGraph | None = None,
                min_size: int = 2, ignored_layers: list[nn.Module] | None = None, verify: bool = True,
                skipped: list[tuple[str, str]] | None = None) -> list[ChannelGroup]:
    """Every prunable channel group of ``model``, in forward order (the logits layer is never pruned).

    ``ignored_layers`` keep their output channels, as in Torch-Pruning (and so does every layer coupled to one).
    Groups that cannot be pruned (see the module notes) are left out; with ``verify``, removing one unit of
    every group is tried on a copy of the model first, and groups whose removal fails (in Torch-Pruning or
    in the pruned network's forward pass) are left out too. ``skipped`` collects ``(layer, reason)`` of every
    group left out.

    Raises:
        NetsiftError: the model has no prunable channel group (naming the first layer left out and why).
    """
    dg = dg or build_graph(model, input_shape)
    names = {m: n for n, m in model.named_modules()}
    exec_order = _execution_order(model, input_shape)
    modules = dict(model.named_modules())
    groups: list[ChannelGroup] = []
    refused: list[tuple[str, str]] = []
    try:
        with static_index_mapping():
            all_groups = list(dg.get_all_groups(ignored_layers=output_layers(model) + list(ignored_layers or []),
                                                root_module_types=[nn.Conv2d, nn.Linear]))
    except Exception as e:
        raise NetsiftError(f"cannot find the model's channel groups: {_first_line(e)}") from None
    for group in all_groups:
        root = group[0].dep.target.module
        channels = len(group[0].idxs)
        reason = _refusal(dg, group, names)
        unit, layout = _unit(group, names)
        reason = reason or layout
        if reason is None and channels % unit:
            reason = f"its {channels} channels do not split into {unit} equal channel groups"
        if reason is not None:
            refused.append((names[root], reason))
            continue
        size = channels // unit
        if size < min_size:
            continue
        consumers: dict[nn.Module, Consumer] = {}
        members: list[str] = []
        for item in group.items:
            dep, mod = item.dep, item.dep.target.module
            if not isinstance(mod, (nn.Conv2d, nn.Linear)):
                continue
            if dg.is_out_channel_pruning_fn(dep.handler) or (_is_depthwise(mod) and dep.handler in (
                    tp.prune_depthwise_conv_in_channels, tp.prune_depthwise_conv_out_channels)):
                if names[mod] not in members:
                    members.append(names[mod])
                continue
            if dg.is_in_channel_pruning_fn(dep.handler) and not _is_depthwise(mod):
                n_in = mod.in_channels if isinstance(mod, nn.Conv2d) else mod.in_features
                c = consumers.setdefault(mod, Consumer(names[mod], mod, torch.full((n_in,), -1, dtype=torch.long)))
                for i, r in zip(item.idxs, item.root_idxs):
                    if r is not None:
                        c.root_of[i] = r % size
        if not consumers:
            continue
        order = min(exec_order.get(modules[n], 10**9) for n in members) if members else exec_order.get(root, 10**9)
        groups.append(ChannelGroup(names[root], root, size, list(consumers.values()), members, order, unit))
    groups.sort(key=lambda g: g.order)
    if verify and groups:
        groups = _verified(model, input_shape, groups, refused)
    if skipped is not None:
        skipped.extend(refused)
    if not groups:
        why = f": {refused[0][0]} is not pruned because {refused[0][1]}" if refused else ""
        raise NetsiftError("the model has no prunable channel groups (nothing between its input and logits "
                           f"can lose channels){why}")
    return groups


def prune_groups(model: nn.Module, dg: tp.DependencyGraph, drops: list[tuple[ChannelGroup, list[int]]]) -> None:
    """Remove units ``drop`` of each group from ``model`` in place, with Torch-Pruning's handlers.

    Every group's pruning plan is made on the intact graph and the plans are merged per layer, so each layer
    is cut once (Torch-Pruning's own loop re-derives the whole graph's index mappings after every group).

    Raises:
        NetsiftError: a handler failed (one line naming the group and the layer).
    """
    plan: dict = {}
    try:
        with static_index_mapping():
            for g, drop in drops:
                if not drop:
                    continue
                pruner = dg.get_pruner_of_module(g.root)
                for item in dg.get_pruning_group(g.root, pruner.prune_out_channels, g.channel_indices(drop)).items:
                    entry = plan.setdefault((item.dep.target, item.dep.handler), (item.dep, set(), g.name))
                    entry[1].update(int(i) for i in item.idxs)
    except Exception as e:
        raise NetsiftError(f"cannot plan the removal of channels: {_first_line(e)}") from None
    for dep, idxs, name in plan.values():
        one = tp.dependency.Group()
        one._DG = dg
        one.add_dep(dep, sorted(idxs))
        try:
            one.prune(record_history=False)
        except Exception as e:
            layer = dg._module2name.get(dep.target.module, dep.target.name) if not isinstance(
                dep.target.module, nn.Parameter) else dep.target.name
            raise NetsiftError(f"cannot remove channels of group {name} at {layer}: {_first_line(e)}") from None


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
              refused: list[tuple[str, str]]) -> list[ChannelGroup]:
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
            refused.append((g.name, f"removing its channels fails ({why})"))
        ok = [g for g in ok if all(g is not b for b, _ in found)]
        if not ok:
            return ok
        failure = _try_removal(model, input_shape, ok)
        if failure is None:
            return ok
    refused.extend((g.name, f"removing its channels fails ({failure})") for g in ok)
    return []
