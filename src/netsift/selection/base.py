"""The interface every channel-selection method implements, and what ranking methods share.

A method is a function ``select(ctx: SelectionContext) -> Selection``. The context holds the network (with a
:class:`~.masking.Masker` on it), its channel groups, the data (a fresh training minibatch per call, a fixed
held-out slice of the training set) and the stopping rule: per-group widths (a MACs budget, allocated by
:func:`.budget.allocate`) or an accuracy tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch_pruning as tp
from torch import Tensor, nn

from .. import progress as _progress
from .groups import ChannelGroup, unit_importance
from .masking import Masker
from .methods import SelectionMethod  # noqa: F401  (declared torch-free)
from .reference import masked_accuracy
from .scoring import BatchedScorer
from .steps import Step, StepStream
from .widths import Budget, score_curve


@dataclass
class GroupRecord:
    """What a finished channel group leaves: the kept channels (a multiset for GFS with replacement), whether
    they are rescaled by N/n, and the method's info row."""

    kept: list[int]
    rescale: bool
    info: dict


@dataclass
class SelectionContext:
    """Everything a selection method may use.

    Methods that go group by group call :meth:`resumed` at the start of each group (a group finished before an
    interruption comes back from ``done`` without work) and :meth:`finish_group` at its end (``on_group_done``
    saves the state there, for ``netsift prune --resume``).
    """

    model: nn.Module
    groups: list[ChannelGroup]
    graph: tp.DependencyGraph
    input_shape: tuple[int, ...]
    next_batch: Callable[[], tuple[Tensor, Tensor]]
    holdout: tuple[Tensor, Tensor]
    widths: list[int] | None = None  # budget mode: channels to keep per group
    budget: "Budget | None" = None  # the budget the widths share out (a method learning its widths re-allocates it)
    tolerance: float | None = None  # tolerance mode: keep accuracy >= (1 - tol) · accuracy at the layer's start
    candidates: int = 50  # candidates scored per greedy step (0: all)
    epsilon: float | None = None  # derive candidates from ε: (N/k)·log(1/ε)
    replacement: bool = False  # GFS theory variant: a channel may be chosen again (multiset)
    seed: int = 0
    layer_finetune: Callable[[nn.Module], None] | None = None
    max_batch: int = 256
    bn_batch_stats: bool = False  # score with batch-norm statistics of the minibatch (per candidate), not running
    progress: bool = True  # report each group's steps and one line per finished group (netsift.progress)
    label: str = "selection"  # how progress lines name the selection (the method's name)
    done: dict[int, GroupRecord] = field(default_factory=dict)  # groups finished before an interruption
    resumed_widths: list[int] | None = None  # learned widths saved before an interruption
    on_group_done: Callable[["SelectionContext", int], None] | None = None  # after each group (saves the state)
    on_resume: Callable[["SelectionContext"], None] | None = None  # at the first group not in ``done``
    masker: Masker = field(init=False)
    scorer: BatchedScorer = field(init=False)

    def __post_init__(self):
        self.masker = Masker(self.model, self.groups)
        self.scorer = BatchedScorer(self.model, self.masker, self.max_batch, self.bn_batch_stats)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.report: _progress.Task | None = None  # the whole selection's progress (see start_report)
        self.records: dict[int, GroupRecord] = {}
        self._resumed = False
        self.stream = StepStream(lambda: self.next_batch(), lambda: self.scorer)  # the greedy steps' minibatches
        self.step_losses: dict[int, list[float]] = {}  # per group: the loss of each greedy step's pick

    def resumed(self, gi: int) -> GroupRecord | None:
        """Group ``gi``'s record if it was finished before an interruption (its mask is set again), else ``None``.

        At the first group that is not finished, ``on_resume`` restores the state saved after the last one
        (random generators, minibatch stream), so the rest runs as it would have without the interruption.
        """
        record = self.done.get(gi)
        if record is not None:
            self.masker.set_kept(gi, record.kept, record.rescale)
            self.records[gi] = record
            return record
        if self.done and not self._resumed and self.on_resume is not None:
            self._resumed = True
            self.on_resume(self)
        return None

    def learn_widths(self, curves: Callable[[], list[list[float]]], per_cost: bool = True) -> None:
        """With a learned-widths budget, replace the uniform widths by the allocation of the groups' loss curves
        (``curves()``: measured now, unless an interrupted run saved its widths)."""
        if self.budget is None or not self.budget.learned:
            return
        self.widths = self.resumed_widths or self.budget.learn(curves(), per_cost)

    def steps(self, gi: int, left: Callable[[], int]) -> Iterator[Step]:
        """Group ``gi``'s greedy steps (:meth:`.steps.StepStream.steps`): a fresh minibatch each (with several
        processes, and the group's prefix values for it), while ``left()`` (the steps the group will certainly
        still take, the next one included) is positive; ``step.score(masks)`` splits the candidates over the
        processes."""
        return self.stream.steps(gi, left)

    def finish_group(self, gi: int, kept: Sequence[int], info: dict, rescale: bool = True) -> None:
        """Record group ``gi`` as finished (``kept`` as the masker has it) and call ``on_group_done``."""
        self.stream.check_drained(gi)
        self.records[gi] = GroupRecord(sorted(int(i) for i in kept), rescale, dict(info))
        if self.on_group_done is not None:
            self.on_group_done(self, gi)

    def accuracy(self) -> float:
        """Held-out accuracy of the network with the masks set so far."""
        return masked_accuracy(self.model, *self.holdout, bn_batch_stats=self.bn_batch_stats)

    def n_candidates(self, gi: int, available: int) -> int:
        """How many candidates to score at one step of group ``gi``."""
        if self.epsilon is not None:
            n = self.groups[gi].size
            k = self.widths[gi] if self.widths else max(1, n // 2)
            return min(available, max(1, math.ceil(n / k * math.log(1 / self.epsilon))))
        return available if self.candidates <= 0 else min(available, self.candidates)

    def sample(self, pool: Sequence[int], k: int) -> list[int]:
        """``k`` members of ``pool`` drawn uniformly without replacement (all of them when k ≥ len)."""
        pool = list(pool)
        if k >= len(pool):
            return pool
        idx = torch.randperm(len(pool), generator=self.generator)[:k]
        return [pool[i] for i in idx.tolist()]

    def bar(self, total: int, desc: str) -> _progress.Task:
        """Progress of one group's steps: a live bar in a terminal, heartbeat lines in a log file (nothing when
        ``progress`` is off). ``update(n)`` it, ``close()`` it."""
        return _progress.begin(desc, total, "channel", enabled=None if self.progress else False)

    def _weight(self, gi: int) -> int:
        """A group's share of the selection's work, for the ETA: its kept width (budget mode) or its size."""
        return max(1, self.widths[gi] if self.widths is not None else self.groups[gi].size)

    def start_report(self) -> None:
        """Begin the selection's progress report (:func:`~.pruner.prune_channels` does; end it with :meth:`end_report`).
        Its units are channels (kept widths, or group sizes in tolerance mode), so the ETA weighs wide groups."""
        total = sum(self._weight(gi) for gi in range(len(self.groups)))
        self.report = _progress.begin(f"{self.label} selection", total, "channel",
                                      enabled=None if self.progress else False, summary_after=2.0)

    def group_done(self, gi: int, row: dict) -> None:
        """One progress line for a finished group: channels kept, held-out accuracy when known, elapsed, ETA."""
        if self.report is None:
            self.start_report()
        self.report.update(self._weight(gi))
        acc = row.get("acc_end")
        start = row.get("acc_start")
        acc_text = "" if acc is None else \
            f", held-out acc {acc:.4f}" + ("" if start is None else f" (start {start:.4f})")
        self.report.log(f"{self.label} group {gi + 1}/{len(self.groups)} ({row['group']}): kept {row['kept']}/"
                        f"{row['size']} channels{acc_text}, {self.report.timing()}")

    def end_report(self, summary: bool = True) -> None:
        """End the selection's progress report (``summary``: with its "done in ..." line when it was slow)."""
        if self.report is not None:
            self.report.end(summary)
            self.report = None


@dataclass
class Selection:
    """Kept channels per group name (repeats allowed for with-replacement selection) and per-group facts."""

    kept: dict[str, list[int]]
    rescale: bool
    info: list[dict] = field(default_factory=list)


def ranked_selection(ctx: SelectionContext, scores: list[Tensor], rescale: bool = False) -> Selection:
    """Keep each group's highest-scoring channels.

    Budget mode: the top ``widths[g]``. Tolerance mode: group by group from input to output, the shortest
    prefix of the ranking whose held-out accuracy is within the tolerance of the accuracy at the group's start
    (binary search; earlier groups stay pruned).
    """
    ctx.learn_widths(lambda: [score_curve(s) for s in scores], per_cost=False)  # as Torch-Pruning's global pruning
    kept, info = {}, []
    for gi, g in enumerate(ctx.groups):
        if (done := ctx.resumed(gi)) is not None:
            kept[g.name] = done.kept
            info.append(done.info)
            continue
        order = torch.argsort(scores[gi].float(), descending=True, stable=True).tolist()
        if ctx.widths is not None:
            n = ctx.widths[gi]
            order = g.first_within_quotas(order, n)  # an uneven group (CSP): each kind of unit its share
            row = {"group": g.name, "size": g.size, "kept": n}
        else:
            start = ctx.accuracy()
            lo, hi = 1, g.size
            while lo < hi:
                mid = (lo + hi) // 2
                ctx.masker.set_kept(gi, order[:mid], rescale)
                if ctx.accuracy() >= (1 - ctx.tolerance) * start:
                    hi = mid
                else:
                    lo = mid + 1
            n = lo
            row = {"group": g.name, "size": g.size, "kept": n, "acc_start": start}
        kept[g.name] = sorted(order[:n])
        ctx.masker.set_kept(gi, kept[g.name], rescale)
        if ctx.widths is None:
            row["acc_end"] = ctx.accuracy()
            ctx.group_done(gi, row)  # tolerance mode searches per group: report each; budget mode is instant
        info.append(row)
        ctx.finish_group(gi, kept[g.name], row, rescale)
    return Selection(kept, rescale, info)


def tp_group(ctx: SelectionContext, gi: int):
    """Torch-Pruning's group of every channel of ``ctx.groups[gi]`` (for its importance criteria)."""
    g = ctx.groups[gi]
    pruner = ctx.graph.get_pruner_of_module(g.root)
    return ctx.graph.get_pruning_group(g.root, pruner.prune_out_channels, list(range(g.channels)))


def tp_importance_scores(ctx: SelectionContext, importance: tp.importance.Importance) -> list[Tensor]:
    """Per-channel scores of every group from one of Torch-Pruning's importance criteria.

    Raises:
        NetsiftError: the criterion cannot score some group (e.g. BN scale on a group without batch norm).
    """
    from ..errors import NetsiftError

    scores = []
    for g in ctx.groups:
        s = unit_importance(ctx.graph, g, importance)  # per unit (merged groups: over every root)
        if s is None or len(s) != g.size:
            raise NetsiftError(f"{type(importance).__name__} cannot score channel group {g.name} "
                               "(the criterion does not apply to this layer type)")
        scores.append(s.detach().cpu())
    return scores
