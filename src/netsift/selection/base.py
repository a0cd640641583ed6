"""The interface every channel-selection method implements, and what ranking methods share.

A method is a function ``select(ctx: SelectionContext) -> Selection``. The context holds the network (with a
:class:`~.scoring.Masker` on it), its channel groups, the data (a fresh training minibatch per call, a fixed
held-out slice of the training set) and the stopping rule: per-group widths (a MACs budget, allocated by
:func:`.budget.allocate`) or an accuracy tolerance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch_pruning as tp
from torch import Tensor, nn

from .. import progress as _progress
from .groups import ChannelGroup
from .methods import SelectionMethod  # noqa: F401  (declared torch-free)
from .scoring import BatchedScorer, Masker, masked_accuracy


@dataclass
class SelectionContext:
    """Everything a selection method may use."""

    model: nn.Module
    groups: list[ChannelGroup]
    graph: tp.DependencyGraph
    input_shape: tuple[int, ...]
    next_batch: Callable[[], tuple[Tensor, Tensor]]
    holdout: tuple[Tensor, Tensor]
    widths: list[int] | None = None  # budget mode: channels to keep per group
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
    masker: Masker = field(init=False)
    scorer: BatchedScorer = field(init=False)

    def __post_init__(self):
        self.masker = Masker(self.model, self.groups)
        self.scorer = BatchedScorer(self.model, self.masker, self.max_batch, self.bn_batch_stats)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.report: _progress.Task | None = None  # the whole selection's progress (see start_report)

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
        """Begin the selection's progress report (:func:`~.pruner.prune_channels` does; end it with :meth:`done`).
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

    def done(self) -> None:
        """End the selection's progress report."""
        if self.report is not None:
            self.report.end()
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
    kept, info = {}, []
    for gi, g in enumerate(ctx.groups):
        order = torch.argsort(scores[gi].float(), descending=True, stable=True).tolist()
        if ctx.widths is not None:
            n = ctx.widths[gi]
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
    return Selection(kept, rescale, info)


def tp_group(ctx: SelectionContext, gi: int):
    """Torch-Pruning's group of every channel of ``ctx.groups[gi]`` (for its importance criteria)."""
    g = ctx.groups[gi]
    pruner = ctx.graph.get_pruner_of_module(g.root)
    return ctx.graph.get_pruning_group(g.root, pruner.prune_out_channels, list(range(g.size)))


def tp_importance_scores(ctx: SelectionContext, importance: tp.importance.Importance) -> list[Tensor]:
    """Per-channel scores of every group from one of Torch-Pruning's importance criteria.

    Raises:
        NetsiftError: the criterion cannot score some group (e.g. BN scale on a group without batch norm).
    """
    from ..errors import NetsiftError

    scores = []
    for gi, g in enumerate(ctx.groups):
        s = importance(tp_group(ctx, gi))
        if s is None or len(s) != g.size:
            raise NetsiftError(f"{type(importance).__name__} cannot score channel group {g.name} "
                               "(the criterion does not apply to this layer type)")
        scores.append(s.detach().cpu())
    return scores
