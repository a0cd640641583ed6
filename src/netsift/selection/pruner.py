"""Channel pruning as one step: find the groups, set the budget, run a method, remove the channels.

:func:`prune_channels` works on any ``nn.Module`` Torch-Pruning can trace; it knows nothing of run folders,
data sets or fine-tuning (the ``netsift.prune`` pipeline adds those).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from .. import progress as _progress
from ..errors import NetsiftError
from . import METHODS, PruneConfig
from .base import Selection, SelectionContext
from .budget import cost_model, least
from .estimate import Estimate, estimate as estimate_cost
from .groups import ChannelGroup, LeftWhole, build_graph, find_groups
from .removal import removal_error, remove_channels
from .widths import Budget


@dataclass
class Pruned:
    """What :func:`prune_channels` returns."""

    model: nn.Module  # the smaller network (a copy; the input is left unpruned)
    selection: Selection
    groups: list[ChannelGroup]
    widths: list[int] | None  # per-group budget (None in tolerance mode)
    selection_s: float
    estimate: Estimate | None = None  # the greedy selection's cost, said before it started
    removal_error: float | None = None  # pruned against masked outputs, relative (see removal.removal_error)


def _modules(model: nn.Module, items, what: str) -> list[nn.Module]:
    """Modules named or given in ``items`` (names are ``model.named_modules()`` names)."""
    named = dict(model.named_modules())
    out = []
    for item in items or []:
        if isinstance(item, nn.Module):
            if not any(item is m for m in named.values()):
                raise NetsiftError(f"{what}: a {type(item).__name__} that is not part of the model")
            out.append(item)
        elif isinstance(item, str) and item in named:
            out.append(named[item])
        else:
            raise NetsiftError(f"{what}: no layer named {item!r} in the model")
    return out


def fixed_widths(model: nn.Module, groups: list[ChannelGroup], layer_density: dict | None) -> dict[int, int]:
    """Group index -> kept width for the groups whose root or member layers ``layer_density`` names."""
    fixed: dict[int, int] = {}
    for key, fraction in (layer_density or {}).items():
        (module,) = _modules(model, [key], "layer_density")
        if not 0 < float(fraction) <= 1:
            raise NetsiftError(f"layer_density of {key!r} must be in (0, 1], got {fraction}")
        names = {m: n for n, m in model.named_modules()}
        hits = [gi for gi, g in enumerate(groups) if g.root is module or names.get(module) in g.members]
        if not hits:
            raise NetsiftError(f"layer_density: {names.get(module, key)!r} roots no prunable channel group")
        for gi in hits:  # an uneven group (a CSP block) keeps one unit of each kind, so no branch is emptied
            fixed[gi] = max(least(groups[gi], 1), int(round(float(fraction) * groups[gi].size)))
    return fixed


@dataclass
class Plan:
    """The channel groups of a network and their budget, checked before anything runs (see :func:`plan_channels`)."""

    model: nn.Module
    input_shape: tuple[int, ...]
    cfg: PruneConfig
    graph: object
    groups: list[ChannelGroup]
    widths: list[int] | None  # uniform widths of the budget (a learned allocation replaces them at selection)
    budget: Budget | None = None
    skipped: list[LeftWhole] = dataclasses.field(default_factory=list)  # channel groups kept whole, and why


def report_left_whole(skipped: list[LeftWhole]) -> None:
    """One progress line per channel group kept whole, with the reason (nothing is left whole in silence)."""
    if _progress.mode() == "off":
        return
    for s in skipped:
        _progress.write(f"channel group kept whole: {s.line()}")


GRAPH_TIMEOUT_ENV = "NETSIFT_GRAPH_TIMEOUT"
"""Seconds allowed for analysing a model's dependency graph (default 300)."""


@contextmanager
def time_limit(seconds: float, message: str) -> Iterator[None]:
    """Raise a one-line :class:`NetsiftError` if the block runs longer than ``seconds`` (main thread, POSIX)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise NetsiftError(message)

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def plan_channels(model: nn.Module, input_shape: tuple[int, ...], cfg: PruneConfig, ignored_layers=None,
                  layer_density: dict | None = None) -> Plan:
    """Trace ``model``, find its channel groups and allocate the budget; check that ``cfg.method`` applies.

    Args:
        ignored_layers: layers (modules or names) whose output channels are kept, as in Torch-Pruning.
        layer_density: ``{layer: kept fraction of its channels}`` for some groups; the MACs budget is shared
            by the others.

    Raises:
        NetsiftError: the model cannot be traced, has no prunable channel group, or the method does not apply.
    """
    was_training = model.training
    model.eval()
    from ..env import get

    limit = float(get(GRAPH_TIMEOUT_ENV))  # validated in netsift.env (0: no limit)
    try:
        with time_limit(limit, f"Torch-Pruning could not resolve the model's channel dependencies within {limit:g} s "
                               f"(a layer it cannot follow?); pass that layer in ignored_layers or simplify the model"), \
                _progress.stage("analysing the channel dependencies (Torch-Pruning)"):
            graph = build_graph(model, input_shape)
            skipped: list[LeftWhole] = []
            groups = find_groups(model, input_shape, graph, skipped=skipped,
                                 ignored_layers=_modules(model, ignored_layers, "ignored_layers"))
        report_left_whole(skipped)
        fixed = fixed_widths(model, groups, layer_density)
        budget = _budget(model, input_shape, cfg, graph, groups, fixed)
        if budget is not None:
            widths = budget.uniform()
        elif fixed:
            widths = [fixed.get(gi, g.size) for gi, g in enumerate(groups)]
        else:
            widths = None
        plan = Plan(model, input_shape, cfg, graph, groups, widths, budget, skipped)
        check = METHODS[cfg.method].check
        if check is not None:
            ctx = _context(plan, lambda: None, (None, None), 0, False, None)
            try:
                check(ctx)
            finally:
                ctx.masker.remove()
    finally:
        model.train(was_training)
    return plan


def _budget(model: nn.Module, input_shape: tuple[int, ...], cfg: PruneConfig, graph, groups: list[ChannelGroup],
            fixed: dict[int, int]) -> Budget | None:
    """The plan's budget: its cost model (MACs, parameters or a latency table measured now) and target."""
    if cfg.budget is None:
        return None
    kind, fraction = cfg.budget
    if kind == "latency":
        from .latency import LatencyModel

        cost = LatencyModel(model, groups, input_shape, cfg.latency_batch, threads=cfg.latency_threads or 1)
        return Budget(kind, fraction, cost, cfg.round_to, fixed, learned=cfg.widths == "learned",
                      shape_model=cost_model("macs", model, groups, input_shape, graph))
    return Budget(kind, fraction, cost_model(kind, model, groups, input_shape, graph), cfg.round_to, fixed,
                  learned=cfg.widths == "learned")


def _context(plan: Plan, next_batch, holdout, seed: int, progress: bool, layer_finetune,
             **resume: Any) -> SelectionContext:
    cfg = plan.cfg
    return SelectionContext(plan.model, plan.groups, plan.graph, plan.input_shape, next_batch, holdout,
                            widths=plan.widths, tolerance=cfg.tolerance if plan.widths is None else None,
                            budget=plan.budget,
                            candidates=cfg.candidates, epsilon=cfg.epsilon, seed=seed, layer_finetune=layer_finetune,
                            progress=progress, bn_batch_stats=cfg.bn_batch_stats, label=cfg.method, **resume)


def prune_channels(plan: Plan, next_batch: Callable[[], tuple[Tensor, Tensor]], holdout: tuple[Tensor, Tensor],
                   seed: int = 0, progress: bool = True,
                   layer_finetune: Callable[[nn.Module], None] | None = None, **resume: Any) -> Pruned:
    """Select channels of ``plan.model`` with the plan's method and return a physically smaller copy.

    Args:
        plan: from :func:`plan_channels`.
        next_batch: a fresh training minibatch at each call.
        holdout: held-out training tensors for the tolerance check.
        layer_finetune: called on the model after each group (the published 0.1-epoch fine-tune); the
            input model's weights then change.
        resume: ``done``, ``on_group_done``, ``on_resume`` of :class:`~.base.SelectionContext` (resuming an
            interrupted selection group by group).
    """
    model, cfg = plan.model, plan.cfg
    was_training = model.training
    model.eval()
    ctx = _context(plan, next_batch, holdout, seed, progress, layer_finetune, **resume)
    try:
        estimate = say_estimate(ctx, cfg, progress)
        t0 = time.perf_counter()
        ctx.start_report()
        with _progress.scope():  # ends the per-group bars a failing method leaves open
            selection = METHODS[cfg.method].select(ctx, **cfg.options)
        selection_s = time.perf_counter() - t0
    except BaseException:  # an error, Ctrl-C or SIGTERM: no "selection: done in ..." line that reads as success
        ctx.end_report(summary=False)
        raise
    finally:
        ctx.end_report()
        ctx.masker.remove()
        model.train(was_training)
    rescale = selection.rescale if cfg.rescale == "auto" else cfg.rescale == "on"
    for line in keep_every_member(plan.groups, selection):
        if progress:
            _progress.write(line)
    pruned = remove_channels(model, plan.input_shape, selection.kept, rescale)
    error = removal_error(model, pruned, plan.groups, selection.kept, rescale, _check_inputs(model, plan, holdout))
    return Pruned(pruned, selection, plan.groups, ctx.widths, selection_s, estimate, error)


def predicted_fraction(plan: Plan, selection: Selection) -> float | None:
    """The fraction of the dense cost (MACs or parameters, the plan's budget) that the cost model gives the
    units ``selection`` kept (``None``: no such budget)."""
    budget = plan.budget
    if budget is None or budget.kind == "latency":
        return None
    index = {g.name: gi for gi, g in enumerate(plan.groups)}
    kept = {index[name]: units for name, units in selection.kept.items() if name in index}
    return budget.model.macs(kept=kept) / budget.model.cost(None)


def keep_every_member(groups: list[ChannelGroup], selection: Selection) -> list[str]:
    """Add one unit to a group whose selection left a member layer no channel (a CSP block's ``short`` branch,
    whose channels are some of its group's units only): the first of that member's units, so the pruned network
    runs. Returns one line per unit added."""
    lines = []
    for g in groups:
        kept = selection.kept.get(g.name)
        if kept is None or not g.member_counts:
            continue
        for member, counts in g.member_counts.items():
            if int(counts[sorted(set(int(u) for u in kept))].sum()) == 0:
                unit = int(torch.nonzero(counts)[0])
                kept.append(unit)
                for row in selection.info:
                    if row.get("group") == g.name and "kept" in row:
                        row["kept"] = len(set(int(u) for u in kept))
                lines.append(f"group {g.name}: the selection kept no channel of {member}; unit {unit} added so "
                             f"the pruned network runs")
    return lines


REMOVAL_TOLERANCE = 1e-3
"""The largest relative difference between the pruned network and the masked subnetwork its selection scored
that passes as float rounding; above it netsift warns (a layer computing differently on fewer channels, or channel
groups that do not fit the network)."""


def _check_inputs(model: nn.Module, plan: Plan, holdout: tuple[Tensor, Tensor] | None) -> Tensor:
    """Up to 16 held-out training images for the removal check (seeded noise when none are held out)."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if holdout is not None and len(holdout[0]):
        return holdout[0][:16].to(device)
    return torch.randn(8, *plan.input_shape, generator=torch.Generator().manual_seed(0)).to(device)


GREEDY = ("gfs", "backward")
"""The methods whose cost grows with candidates x steps: their cost is estimated and said before they start."""


def say_estimate(ctx: SelectionContext, cfg: PruneConfig, progress: bool) -> Estimate | None:
    """For a greedy method, estimate its cost (:mod:`.estimate`) and say it on the progress output."""
    if cfg.method not in GREEDY:
        return None
    from .. import distributed

    est = estimate_cost(ctx, cfg.method, cfg.select_batch, distributed.world_size())
    if progress and _progress.mode() != "off":
        _progress.write(est.line(cfg.method))
    return est
