"""How the traced graph splits for one channel group: what depends on its mask, what the suffix reads.

:func:`make_plan` splits a ``torch.fx`` graph of the network for a group into the nodes that depend on the
group's mask (its consumers and everything downstream: the *suffix*) and, of the rest, what the suffix reads
(the *frontier*) and everything the frontier needs (the *prefix*). :func:`node_info` measures every node once
on one image (per-image shapes and MACs); :func:`size_plan` derives a plan's stacking limits and what sending
its prefix values would cost from them.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from .groups import ChannelGroup
from .scoring_stats import layer_macs


@dataclass
class NodeInfo:
    """One traced node's value for one image."""

    shape: tuple[int, ...] | None  # per image (None: not a tensor with a batch axis)
    dtype: torch.dtype | None
    numel: int  # per image
    macs: int  # per image


@dataclass
class GraphPlan:
    """A group's split of the traced graph (see the module docstring)."""

    modules: dict[str, nn.Module]
    input: fx.Node
    prefix: list[fx.Node]  # candidate-independent nodes to run once per call
    suffix: list[fx.Node]  # candidate-dependent nodes (and the output)
    consumers: set[fx.Node]  # calls of the group's consumers
    direct: list[fx.Node]  # consumer calls whose input is candidate-independent
    batched: set[fx.Node]  # candidate-independent values with a batch axis (derived from the input)
    broadcast: set[fx.Node]  # elementwise suffix nodes mixing stacked and batched values (broadcast them)
    inplace: set[fx.Node]  # suffix nodes that may modify an input in place
    free_after: dict[fx.Node, list[fx.Node]]
    output_depends: bool
    frontier: set[fx.Node] = field(default_factory=set)  # candidate-independent values the suffix reads
    scale: int = 1  # the network's largest activation per image / the suffix's
    act: int = 1  # the suffix's largest activation per image
    prefix_macs: int = 0  # per image
    shared: list[fx.Node] = field(default_factory=list)  # frontier values with a batch axis (not the input)
    shared_numel: int = -1  # their elements per image (-1: some value is not a batched tensor)


_ELEMENTWISE = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
                torch.div, torch.maximum, torch.minimum}
_ELEMENTWISE_METHODS = {"add", "sub", "mul", "div"}


def is_inplace(n: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether node ``n`` may modify its first input in place."""
    if n.op == "call_module":
        return bool(getattr(modules[n.target], "inplace", False))
    if n.op == "call_method":
        return n.target.endswith("_") and not n.target.endswith("__")
    if n.op == "call_function":
        name = getattr(n.target, "__name__", "")
        return bool(n.kwargs.get("inplace")) or (name.startswith("i") and getattr(operator, name, None) is n.target
                                                  and name not in ("is_", "is_not", "index", "invert", "inv"))
    return False


def _closure(frontier: set[fx.Node]) -> set[fx.Node]:
    """``frontier`` and every node it needs."""
    need: set[fx.Node] = set()
    stack = list(frontier)
    while stack:
        n = stack.pop()
        if n not in need:
            need.add(n)
            stack.extend(n.all_input_nodes)
    return need


def _broadcast(suffix: list[fx.Node], consumers, dep, batched, modules) -> set[fx.Node]:
    """Elementwise suffix nodes of a stacked and a batched candidate-independent value (a residual add)."""
    out = set()
    for n in suffix:
        if n in consumers or n.op == "output" or is_inplace(n, modules):
            continue
        ins = [a for a in n.args if isinstance(a, fx.Node)]
        if (len(ins) == 2 and len(n.args) == 2 and not n.kwargs and any(a in dep for a in ins)
                and any(a not in dep and a in batched for a in ins)
                and ((n.op == "call_function" and n.target in _ELEMENTWISE)
                     or (n.op == "call_method" and n.target in _ELEMENTWISE_METHODS))):
            out.add(n)
    return out


def _free_after(nodes: list[fx.Node], frontier: set[fx.Node]) -> dict[fx.Node, list[fx.Node]]:
    """Each value's last reader -> the values to free after it (frontier values live for the whole call)."""
    order = {n: i for i, n in enumerate(nodes)}
    free_after: dict[fx.Node, list[fx.Node]] = {}
    for n in nodes:
        users = [u for u in n.users]
        if not users or n in frontier:
            continue
        last = max(users, key=order.get)
        free_after.setdefault(last, []).append(n)
    return free_after


def _refusal(prefix, suffix, frontier, batched, dep, modules) -> str:
    """Why the graph path cannot score the group ("": it can)."""
    for n in prefix:
        if is_inplace(n, modules) and n.args and n.args[0] in frontier:
            return f"{n.name} modifies a value the suffix reads in place"
    for a in frontier:
        if a in batched and a.op in ("call_method", "call_function") and a.target in ("size", getattr, len):
            return f"the suffix reads the size of a candidate-independent value ({a.name})"
    for n in suffix:
        if is_inplace(n, modules) and n.args and isinstance(n.args[0], fx.Node) and n.args[0] not in dep:
            return f"{n.name} modifies a candidate-independent value in place"
    return ""


def make_plan(graph: fx.Graph, model: nn.Module, group: ChannelGroup) -> tuple[str, GraphPlan | None]:
    """Split the traced graph for ``group``: what depends on its mask, what the suffix reads, what to free.

    Returns ``("", plan)``, or ``(why not, None)`` when the graph path cannot score the group.
    """
    modules = dict(model.named_modules())
    consumer_mods = {c.module for c in group.consumers}
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if not placeholders or any(not p.args for p in placeholders[1:]):
        return "the model takes more than one input", None
    consumers = {n for n in nodes if n.op == "call_module" and modules.get(n.target) in consumer_mods}
    if {modules[n.target] for n in consumers} != consumer_mods:
        return "a consumer is not called as a module", None
    norm_mods = {c.module for c in group.norms}  # computed over the kept channels: they depend on the mask
    norms = {n for n in nodes if n.op == "call_module" and modules.get(n.target) in norm_mods}
    if {modules[n.target] for n in norms} != norm_mods:
        return "a norm across its channels is not called as a module", None
    dep: set[fx.Node] = set()
    batched: set[fx.Node] = set()
    for n in nodes:
        if n in consumers or n in norms or any(a in dep for a in n.all_input_nodes):
            dep.add(n)
        if n is placeholders[0] or any(a in batched for a in n.all_input_nodes):
            batched.add(n)
    out_node = next(n for n in nodes if n.op == "output")
    # candidate-independent values the suffix reads, and everything they need
    frontier = {a for n in dep for a in n.all_input_nodes if a not in dep}
    need = _closure(frontier)
    prefix = [n for n in nodes if n in need]
    suffix = [n for n in nodes if n in dep or n is out_node]
    reason = _refusal(prefix, suffix, frontier, batched, dep, modules)
    if reason:
        return reason, None
    direct = [n for n in suffix if n in consumers and isinstance(n.args[0], fx.Node) and n.args[0] not in dep
              and len(n.args) == 1 and not n.kwargs]
    inplace = {n for n in suffix if is_inplace(n, modules)}
    return "", GraphPlan(modules, placeholders[0], prefix, suffix, consumers, direct, batched,
                         _broadcast(suffix, consumers, dep, batched, modules), inplace, _free_after(nodes, frontier),
                         out_node in dep or any(a in dep for a in out_node.all_input_nodes), frontier)


def run_simple(n: fx.Node, args, kwargs, model: nn.Module) -> Any:
    """The value of a function, method or attribute node ``n`` (not a module call) for ``args``."""
    if n.op == "call_function":
        return n.target(*args, **kwargs)
    if n.op == "call_method":
        obj, *rest = args
        return getattr(obj, n.target)(*rest, **kwargs)
    if n.op == "get_attr":
        obj = model
        for part in n.target.split("."):
            obj = getattr(obj, part)
        return obj
    raise RuntimeError(f"unexpected node {n.op}")


def node_info(graph: fx.Graph, model: nn.Module, modules: dict[str, nn.Module], input_node: fx.Node,
              x: Tensor) -> dict[fx.Node, NodeInfo]:
    """Every node's per-image shape, dtype, size and MACs, from one pass of the single image ``x`` (made once
    per network)."""
    nodes: dict[fx.Node, NodeInfo] = {}
    env: dict[fx.Node, Any] = {}
    for n in graph.nodes:
        if n.op == "placeholder":
            env[n] = x if n is input_node else (n.args[0] if n.args else None)
        elif n.op == "output":
            break
        else:
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: env[a])
            env[n] = modules[n.target](*args, **kwargs) if n.op == "call_module" else \
                run_simple(n, args, kwargs, model)
        v = env[n]
        if isinstance(v, Tensor):
            per_image = v.dim() > 0 and v.shape[0] == 1  # (a value with a batch axis has 1 row here)
            nodes[n] = NodeInfo(tuple(v.shape[1:]) if per_image else None, v.dtype, v.numel(),
                                layer_macs(modules[n.target], v) if n.op == "call_module" else 0)
        else:
            nodes[n] = NodeInfo(None, None, 0, 0)
    return nodes


def size_plan(plan: GraphPlan, info: dict[fx.Node, NodeInfo]) -> None:
    """Fill in ``plan``'s per-image figures: the stacking limits (the ratio of the network's largest activation
    to the suffix's, and the suffix's), the prefix's MACs and the prefix values the suffix reads."""
    largest = max((i.numel for i in info.values()), default=1)
    suffix = max(1, max((info[n].numel for n in plan.suffix if n in info), default=0))
    plan.scale, plan.act = max(1, largest // suffix), suffix
    plan.prefix_macs = sum(info[n].macs for n in plan.prefix if n in info)
    plan.shared = [n for n in plan.prefix if n in plan.frontier and n in plan.batched and n is not plan.input]
    sendable = all(n in info and info[n].shape is not None for n in plan.shared) and \
        len({info[n].dtype for n in plan.shared}) <= 1
    plan.shared_numel = sum(info[n].numel for n in plan.shared) if sendable else -1
