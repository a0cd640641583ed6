"""The interface every channel-selection method implements, and what ranking methods share.

A method is a function ``select(ctx: SelectionContext) -> Selection``. The context holds the network (with a
:class:`~.scoring.Masker` on it), its channel groups, the data (a fresh training minibatch per call, a fixed
held-out slice of the training set) and the stopping rule: per-group widths (a MACs budget, allocated by
:func:`.budget.allocate`) or an accuracy tolerance.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch_pruning as tp
from torch import Tensor, nn

from .. import distributed
from .. import progress as _progress
from .groups import ChannelGroup, unit_importance
from .methods import SelectionMethod  # noqa: F401  (declared torch-free)
from .scoring import BatchedScorer, Masker, masked_accuracy


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
        self._ahead: deque = deque()  # minibatches drawn ahead (see step_batch)
        self._pending: tuple | None = None  # the next round: minibatches and this process's prefix share, unsent

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

    def step_batch(self, gi: int, guaranteed: int) -> tuple[Tensor, Tensor, list[Tensor] | None]:
        """A greedy step's minibatch ``(x, y)`` and the prefix values of group ``gi`` for it (``None``: the scorer
        computes them), for ``scorer.score(..., prefix=)``.

        With one process this is ``next_batch()``. With N processes, the prefix (the network up to the group's
        first consumers: the same for every candidate) would be computed by every process at every step; instead
        up to N steps' minibatches are drawn at once, process i computes step i's prefix and all receive all of
        them (where the scorer finds that cheaper than computing: :meth:`~.scoring.BatchedScorer.shares_prefix`).
        ``guaranteed`` is how many steps the group will certainly still take, this one included: no more are drawn,
        so at the group's end the minibatch stream is where one process leaves it (a saved state resumes alike).
        """
        if not self._ahead and (batches := self._draw(gi, guaranteed)) is not None:
            mine = self._own_prefix(gi, batches)
            self._queue(batches, mine, distributed.gather(mine[0], "receiving a greedy step's prefix"))
        return self._ahead.popleft()

    def split_scores(self, gi: int, masks: Tensor, x: Tensor, y: Tensor, prefix: list[Tensor] | None,
                     left: int) -> Tensor:
        """Every candidate's score for one greedy step of group ``gi``, the candidates split across the processes
        (:func:`~netsift.distributed.split_scores`). ``left``: steps the group will certainly take after this one.

        With several processes and shared prefixes (:meth:`step_batch`), the next round's prefixes are prepared
        here: at a step followed by one already drawn, each process computes its share of the next round while
        the scores are being gathered (the time it would wait for a slower process), and the next step's
        collective carries them with its scores; at the last drawn step with none prepared, each process computes
        its share right after its candidates and it travels with this step's scores.
        """
        def score(m: Tensor) -> Tensor:
            return self.scorer.score(gi, m, x, y) if prefix is None else self.scorer.score(gi, m, x, y, prefix=prefix)

        if distributed.world_size() == 1:
            return distributed.split_scores(score, masks)
        if self._pending is not None:  # prepared during an earlier step's wait: it travels now
            batches, mine = self._pending
            self._pending = None
            scores, parts = distributed.split_scores(score, masks, carry=lambda: mine[0])
            self._queue(batches, mine, parts)
            return scores
        beyond = left - len(self._ahead)  # steps certain beyond those drawn already
        if beyond < 2:
            return distributed.split_scores(score, masks)
        if self._ahead:
            return distributed.split_scores(score, masks, meanwhile=lambda: self._prepare(gi, beyond))
        batches = self._draw(gi, beyond)
        if batches is None:
            return distributed.split_scores(score, masks)
        own: list = []
        scores, parts = distributed.split_scores(score, masks,
                                                 carry=lambda: own.extend(self._own_prefix(gi, batches)) or own[0])
        self._queue(batches, own, parts)
        return scores

    def _prepare(self, gi: int, guaranteed: int) -> None:
        """Draw the next round and compute this process's share of its prefixes (sent with the next scores)."""
        if (batches := self._draw(gi, guaranteed)) is not None:
            self._pending = (batches, self._own_prefix(gi, batches))

    def _draw(self, gi: int, guaranteed: int) -> list[tuple[Tensor, Tensor]] | None:
        """Draw the next min(N, ``guaranteed``) minibatches. Returns them when their prefixes are to be shared;
        otherwise queues them (each process computes their prefixes itself) and returns ``None``."""
        n = min(distributed.world_size(), max(1, guaranteed))
        batches = [self.next_batch() for _ in range(n)]
        if n > 1 and all(x.shape == batches[0][0].shape for x, _ in batches) \
                and self.scorer.shares_prefix(gi, batches[0][0]):
            return batches
        self._ahead.extend((x, y, None) for x, y in batches)
        return None

    def _own_prefix(self, gi: int, batches: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, list[Tensor]]:
        """Process i's part of a shared round: minibatch i's prefix values as bytes (a blank of the same size
        beyond the round's last minibatch), and empty tensors shaped like them."""
        r = distributed.rank()
        x = batches[min(r, len(batches) - 1)][0]
        like = self.scorer.prefix_values(gi, x, compute=False)
        values = self.scorer.prefix_values(gi, x) if r < len(batches) else like
        if [v.shape for v in values] != [v.shape for v in like]:
            raise RuntimeError(f"internal error: group {gi}'s prefix values have shapes {[v.shape for v in values]}, "
                               f"not the traced {[v.shape for v in like]}")
        values = [v.to(t.dtype) for v, t in zip(values, like)]  # every process sends the same bytes per value
        flat = torch.cat([v.detach().reshape(-1) for v in values]) if values else torch.zeros(0)
        return flat.cpu().view(torch.uint8), like

    def _queue(self, batches: list[tuple[Tensor, Tensor]], mine: tuple[Tensor, list[Tensor]],
               parts: list[Tensor]) -> None:
        """Queue the round's minibatches with the prefix values every process sent (views of what arrived)."""
        like = mine[1]
        for (x, y), part in zip(batches, parts):
            views, at = [], 0
            for v in like:
                size = v.numel() * v.element_size()
                views.append(part[at:at + size].view(v.dtype).view(v.shape).to(x.device))
                at += size
            self._ahead.append((x, y, views))

    def finish_group(self, gi: int, kept: Sequence[int], info: dict, rescale: bool = True) -> None:
        """Record group ``gi`` as finished (``kept`` as the masker has it) and call ``on_group_done``."""
        if self._ahead or self._pending is not None:
            raise RuntimeError(f"internal error: minibatches drawn ahead for group {gi} were not used (the minibatch "
                               "stream would not resume where it stopped)")
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

    def end_report(self) -> None:
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
        if (done := ctx.resumed(gi)) is not None:
            kept[g.name] = done.kept
            info.append(done.info)
            continue
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
