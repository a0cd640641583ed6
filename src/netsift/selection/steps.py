"""A greedy method's steps for one channel group: a fresh minibatch each, scores split over the processes.

:meth:`StepStream.steps` yields one :class:`Step` per greedy step: its minibatch ``(x, y)`` and, with several
processes, the group's prefix values for it; :meth:`Step.score` scores the step's candidate masks, each process
its share of them (:func:`~netsift.distributed.split_scores`), every process getting every score.

Prefix sharing (several processes): the prefix (the network up to the group's first consumers: the same for
every candidate) would be computed by every process at every step; instead up to N steps' minibatches are drawn
at once, process i computes step i's prefix and all receive all of them, where the scorer finds that cheaper
than computing (:meth:`~.scoring.BatchedScorer.shares_prefix`). No more steps are drawn than the group will
certainly take, so at the group's end the minibatch stream is where one process leaves it (a saved state
resumes alike, and 1 or N processes select the same channels).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

from .. import distributed


@dataclass
class Step:
    """One greedy step of group ``gi``: its minibatch, the prefix values for it (``None``: the scorer computes
    them) and ``left``, the steps the group will certainly take after this one."""

    stream: "StepStream"
    gi: int
    x: Tensor
    y: Tensor
    prefix: list[Tensor] | None
    left: int

    def score(self, masks: Tensor) -> Tensor:
        """Every candidate's score (mean cross-entropy on the step's minibatch), the (K, N) ``masks`` split
        across the processes."""
        return self.stream.split_scores(self.gi, masks, self.x, self.y, self.prefix, self.left)


class StepStream:
    """Minibatches for greedy steps, and the prefix sharing between processes (see the module docstring).

    ``next_batch()`` draws a fresh training minibatch; ``scorer()`` returns the
    :class:`~.scoring.BatchedScorer` in use (looked up at each step: a caller may swap it).
    """

    def __init__(self, next_batch: Callable[[], tuple[Tensor, Tensor]], scorer: Callable[[], Any]):
        self.next_batch, self.scorer = next_batch, scorer
        self._ahead: deque = deque()  # minibatches drawn ahead (see step_batch)
        self._pending: tuple | None = None  # the next round: minibatches and this process's prefix share, unsent

    def steps(self, gi: int, left: Callable[[], int]) -> Iterator[Step]:
        """Group ``gi``'s steps, one per round while ``left()`` (the steps the group will certainly still take,
        the next one included) is positive; it is asked again after each step was scored and taken."""
        while (n := left()) > 0:
            x, y, prefix = self.step_batch(gi, n)
            yield Step(self, gi, x, y, prefix, n - 1)

    def check_drained(self, gi: int) -> None:
        """At the end of group ``gi``: every minibatch drawn was used (else the stream would not resume where it
        stopped)."""
        if self._ahead or self._pending is not None:
            raise RuntimeError(f"internal error: minibatches drawn ahead for group {gi} were not used (the minibatch "
                               "stream would not resume where it stopped)")

    def step_batch(self, gi: int, guaranteed: int) -> tuple[Tensor, Tensor, list[Tensor] | None]:
        """A greedy step's minibatch ``(x, y)`` and the prefix values of group ``gi`` for it (``None``: the scorer
        computes them), for ``scorer.score(..., prefix=)``.

        With one process this is ``next_batch()``. ``guaranteed`` is how many steps the group will certainly still
        take, this one included: no more are drawn.
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
        scorer = self.scorer()

        def score(m: Tensor) -> Tensor:
            return scorer.score(gi, m, x, y) if prefix is None else scorer.score(gi, m, x, y, prefix=prefix)

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
                and self.scorer().shares_prefix(gi, batches[0][0]):
            return batches
        self._ahead.extend((x, y, None) for x, y in batches)
        return None

    def _own_prefix(self, gi: int, batches: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, list[Tensor]]:
        """Process i's part of a shared round: minibatch i's prefix values as bytes (a blank of the same size
        beyond the round's last minibatch), and empty tensors shaped like them."""
        r = distributed.rank()
        x = batches[min(r, len(batches) - 1)][0]
        scorer = self.scorer()
        like = scorer.prefix_values(gi, x, compute=False)
        values = scorer.prefix_values(gi, x) if r < len(batches) else like
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
