"""Learned widths: a budget shared out among the channel groups by what their channels are worth.

Each group comes with a loss curve: ``curve[k]`` estimates the loss of the network with the group's ``k`` best
units kept (``k = 0 .. N``, so ``curve[N]`` is the loss with the group whole). A ranking method's curve sums the
normalised scores of the units left out (Torch-Pruning's global pruning ranks channels across groups by such
scores); GFS's is the whole network's cross-entropy after each greedy step. :func:`allocate_learned` starts from
every group at full width and repeatedly narrows the group whose next step raises the loss least per unit of cost
saved (MACs, parameters or latency: any model with ``cost(widths)``), until the budget is met; then single groups
are nudged while that brings the cost closer to the target. The budget is met by construction, not by tuning.
"""

from __future__ import annotations

import heapq
from typing import Sequence

import torch
from torch import Tensor

from ..errors import NetsiftError
from .budget import _step, least


def monotone(curve: Sequence[float]) -> list[float]:
    """The closest non-increasing sequence to ``curve`` in least squares (pool adjacent violators): a loss that
    cannot rise when a channel is added, whatever the noise of the minibatches it was measured on."""
    blocks: list[list[float]] = []  # [mean, weight]
    for v in curve:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] < blocks[-1][0]:
            m2, w2 = blocks.pop()
            m1, w1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    out: list[float] = []
    for mean, weight in blocks:
        out.extend([mean] * int(weight))
    return out


def score_curve(scores: Tensor) -> list[float]:
    """The loss curve of a ranking: ``curve[k]`` = the sum of the scores, normalised by their mean, of every unit
    but the ``k`` best (the mean normaliser of Torch-Pruning's global pruning)."""
    s = scores.detach().double().flatten().clamp_min(0)
    mean = float(s.mean())
    s = s / mean if mean > 0 else torch.ones_like(s)
    ranked = torch.sort(s, descending=True).values
    tail = torch.cat([torch.flip(torch.cumsum(torch.flip(ranked, [0]), 0), [0]), torch.zeros(1, dtype=s.dtype)])
    return tail.tolist()


def allocate_learned(model, curves: Sequence[Sequence[float]], target_fraction: float, round_to: int = 1,
                     fixed: dict[int, int] | None = None, per_cost: bool = True) -> list[int]:
    """Per-group widths whose cost is as close as possible to ``target_fraction`` of the dense cost, narrowing
    first where a unit of cost is cheapest in loss (see the module notes).

    Args:
        model: the cost of any widths (:class:`~.budget.MacsModel`, :class:`~.budget.ParamsModel`, a latency
            model): ``model.groups`` and ``model.cost(widths)``.
        curves: one loss curve per group, ``N + 1`` values (made non-increasing here).
        round_to: widths are multiples of ``round_to`` (groups narrower than two steps: single units).
        fixed: group index -> width kept as given.
        per_cost: narrow where the loss added per unit of cost saved is least (GFS); ``False``: where the loss
            added is least, whatever the cost saved (Torch-Pruning's global pruning of ranked channels).

    Raises:
        NetsiftError: the target is below the cost left with every group at its narrowest.
    """
    groups, fixed = model.groups, fixed or {}
    curves = [monotone(c) for c in curves]
    for g, c in zip(groups, curves):
        if len(c) != g.size + 1:
            raise ValueError(f"group {g.name}: a loss curve needs {g.size + 1} values, got {len(c)}")
    widths = [fixed.get(i, g.size) for i, g in enumerate(groups)]
    dense = model.cost([g.size for g in groups])
    target = target_fraction * dense
    cost = model.cost(widths)
    steps = [_step(g.size, round_to) for g in groups]
    floors = [least(g, round_to) for g in groups]

    def ratio(gi: int) -> float | None:
        """Loss added per unit of cost saved by narrowing group ``gi`` one step (``None``: it cannot narrow)."""
        new = widths[gi] - steps[gi] if widths[gi] % steps[gi] == 0 else steps[gi] * (widths[gi] // steps[gi])
        if gi in fixed or new < floors[gi]:
            return None
        trial = list(widths)
        trial[gi] = new
        saved = cost - model.cost(trial)
        added = curves[gi][new] - curves[gi][widths[gi]]
        if saved <= 0:
            return None
        return added / saved if per_cost else added

    heap = [(r, gi) for gi in range(len(groups)) if (r := ratio(gi)) is not None]
    heapq.heapify(heap)
    while cost > target and heap:
        _, gi = heapq.heappop(heap)
        r = ratio(gi)  # the neighbours may have narrowed since it was queued
        if r is None:
            continue
        if heap and r > heap[0][0] * (1 + 1e-9):
            heapq.heappush(heap, (r, gi))
            continue
        widths[gi] = widths[gi] - steps[gi] if widths[gi] % steps[gi] == 0 else steps[gi] * (widths[gi] // steps[gi])
        cost = model.cost(widths)
        if (r := ratio(gi)) is not None:
            heapq.heappush(heap, (r, gi))
    if cost > target * 1.005:
        raise NetsiftError(f"a {model.kind} budget of {target_fraction:g} is out of reach: with every prunable "
                           f"channel group at its narrowest the network keeps {cost / dense:.3f} of its "
                           f"{model.kind}")
    return _nudge(model, widths, steps, target, fixed, curves, floors)


def _moves(model, best: list[int], steps: list[int], fixed: dict[int, int], curves: list[list[float]],
           floors: list[int]):
    """Every one-step move of a single group: (loss saved per unit of cost, group, new width); widening moves
    have a positive value (loss removed per cost added), narrowing ones a negative one (loss added per cost
    saved)."""
    base, out = model.cost(best), []
    for gi, g in enumerate(model.groups):
        if gi in fixed:
            continue
        for new in (min(g.size, best[gi] + steps[gi]), best[gi] - steps[gi]):
            if new == best[gi] or not floors[gi] <= new <= g.size:
                continue
            trial = list(best)
            trial[gi] = new
            delta = model.cost(trial) - base
            if delta != 0:
                loss = curves[gi][min(new, best[gi])] - curves[gi][max(new, best[gi])]
                out.append((loss / abs(delta) * (1 if new > best[gi] else -1), gi, new))
    return out


def _nudge(model, widths: list[int], steps: list[int], target: float, fixed: dict[int, int],
           curves: list[list[float]], floors: list[int], pairs: int = 8) -> list[int]:
    """Move groups by one step while that brings the cost closer to ``target`` (the narrowing stops at the first
    step below it, and a coarse step may overshoot): single moves, else a widening with a narrowing (among the
    ``pairs`` best of each), the move that costs least loss per unit of cost first."""
    best, err = list(widths), abs(model.cost(widths) - target)
    while err > 0.001 * target:
        moves = _moves(model, best, steps, fixed, curves, floors)
        options = []
        for value, gi, new in moves:
            trial = list(best)
            trial[gi] = new
            options.append((value, abs(model.cost(trial) - target), trial))
        options = [o for o in options if o[1] < err]
        if not options:
            up = sorted((m for m in moves if m[0] > 0), reverse=True)[:pairs]
            down = sorted((m for m in moves if m[0] <= 0), reverse=True)[:pairs]
            for (v1, g1, n1) in up:
                for (v2, g2, n2) in down:
                    if g1 != g2:
                        trial = list(best)
                        trial[g1], trial[g2] = n1, n2
                        e = abs(model.cost(trial) - target)
                        if e < err:
                            options.append((v1 + v2, e, trial))
        if not options:
            break
        _, err, best = max(options, key=lambda o: o[0])
    return best


class Budget:
    """A budget (a fraction of the dense network's MACs, parameters or latency) and how it is shared out.

    ``uniform()``: every group the same kept fraction; ``learn(curves)``: the allocation of
    :func:`allocate_learned`. A latency budget (``model`` a :class:`.latency.LatencyModel`) allocates with the
    MACs model ``shape_model`` (the shape of the allocation: which groups keep what) and chooses how many MACs to
    keep by timing the real pruned architecture against the dense one (:func:`.latency.meet_latency`; the
    per-group latency table gives the first guess); ``record`` keeps what was measured.
    """

    def __init__(self, kind: str, fraction: float, model, round_to: int = 1, fixed: dict[int, int] | None = None,
                 learned: bool = False, shape_model=None):
        self.kind, self.fraction, self.model = kind, fraction, model
        self.round_to, self.fixed, self.learned = round_to, dict(fixed or {}), learned
        self.shape_model = shape_model if shape_model is not None else model
        self.record: dict | None = None

    def _meet(self, allocate) -> list[int]:
        if self.kind != "latency":
            return allocate(self.fraction)
        from .latency import meet_latency

        widths, self.record = meet_latency(self.model, allocate, self.fraction)
        return widths

    def uniform(self) -> list[int]:
        """Every group keeps the same fraction of its channels."""
        from .budget import allocate

        return self._meet(lambda f: allocate(self.shape_model, f, self.round_to, self.fixed))

    def learn(self, curves: Sequence[Sequence[float]], per_cost: bool = True) -> list[int]:
        """Widths from the groups' loss curves (see :func:`allocate_learned`)."""
        return self._meet(lambda f: allocate_learned(self.shape_model, curves, f, self.round_to, self.fixed,
                                                     per_cost))

    def achieved(self, widths: Sequence[int]) -> float:
        """The fraction of the dense cost that ``widths`` keep (predicted; latency is measured on the result)."""
        return self.model.cost(widths) / self.model.cost(None)
