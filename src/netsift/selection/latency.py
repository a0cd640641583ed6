"""Latency as a budget: a per-group latency table measured once, and widths that meet a latency target.

MACs are the wrong budget on a CPU: narrowing a group from 33 to 31 channels saves MACs but may save no time
at all (the vector kernels work in blocks of channels), and memory-bound layers (batch norm, activations) cost
time that MACs do not count. :class:`LatencyModel` times the real network on this device: for every channel
group, the whole network with that group narrowed to a few widths (the others whole), interleaved with the
dense network (NetAdapt builds per-layer tables the same way). The latency of any widths is the dense latency
times the product of each group's measured ratio (interpolated between the measured widths): a convolution
between two narrowed groups loses both factors, as its cost does. :func:`meet_latency` then checks the
allocation against the real pruned architecture, timed against the dense one, and corrects the target until
the measured ratio is within tolerance.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from torch import nn

from .. import progress as _progress
from ..errors import NetsiftError
from ..measure import compare_latency
from .groups import ChannelGroup
from .removal import remove_channels


class LatencyModel:
    """The network's forward latency at batch ``batch_size`` for any per-group widths (see the module notes).

    Attributes:
        table: per group, ``{"group", "widths", "ms"}``: the network's latency with the group at each width.
        dense_ms: the dense network's latency (the median of its per-group measurements).
    """

    kind = "latency"

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], input_shape: tuple[int, ...],
                 batch_size: int = 64, threads: int | None = 1, points: int = 4, rounds: int = 3):
        self.model, self.groups, self.input_shape = model, list(groups), tuple(input_shape)
        self.batch_size, self.threads, self.rounds = batch_size, threads, rounds
        self.table: list[dict] = []
        self._ratios: list[tuple[list[int], list[float]]] = []
        dense_runs = []
        with _progress.task("measuring the latency table (each group at a few widths)", len(self.groups),
                            "group", summary_after=2.0) as report:
            for g in self.groups:
                widths = sorted({max(1, round(g.size * k / points)) for k in range(1, points)} - {g.size})
                nets = {"dense": model, **{f"w{w}": self.at({g.name: w}) for w in widths}}
                times = self.time(nets)
                dense = times["dense"]
                dense_runs.append(dense)
                ms = [times[f"w{w}"] for w in widths] + [dense]
                self.table.append({"group": g.name, "widths": widths + [g.size], "ms": ms})
                self._ratios.append((widths + [g.size], [min(1.0, m / dense) for m in ms]))
                report.update()
        self.dense_ms = sorted(dense_runs)[len(dense_runs) // 2]

    def at(self, widths: dict[str, int]) -> nn.Module:
        """The architecture with the named groups at the given widths (their first channels within the groups'
        quotas, as every method selects: timing only)."""
        by_name = {g.name: g for g in self.groups}
        kept = {k: by_name[k].first_within_quotas(range(by_name[k].size), w) for k, w in widths.items()}
        return remove_channels(self.model, self.input_shape, kept, rescale=False, groups=self.groups)

    def time(self, nets: dict[str, nn.Module]) -> dict[str, float]:
        """Each network's latency in ms at the model's batch size, timed interleaved."""
        bs = self.batch_size
        r = compare_latency(nets, self.input_shape, (bs,), rounds=self.rounds,
                            passes={bs: 30 if bs <= 8 else 5}, threads=self.threads)
        return {name: r[name][f"b{bs}_ms"] for name in nets}

    def ratio(self, gi: int, width: int) -> float:
        """Group ``gi``'s latency ratio at ``width`` (linear between the measured widths, proportional below)."""
        ws, rs = self._ratios[gi]
        if width <= ws[0]:
            return rs[0] * width / ws[0]
        for (w0, r0), (w1, r1) in zip(zip(ws, rs), zip(ws[1:], rs[1:])):
            if width <= w1:
                return r0 + (r1 - r0) * (width - w0) / (w1 - w0)
        return 1.0

    def cost(self, widths: Sequence[int] | None = None) -> float:
        """Predicted latency (ms) with ``widths[gi]`` units of each group (``None``: the dense network)."""
        if widths is None:
            return self.dense_ms
        return self.dense_ms * math.prod(self.ratio(gi, w) for gi, w in enumerate(widths))


def _first_guess(model: LatencyModel, allocate: Callable[[float], list[int]], target: float) -> float:
    """The fraction to ask ``allocate`` for first: where the latency table predicts ``target`` (bisected)."""
    lo, hi = 0.0, 1.0
    for _ in range(12):
        mid = (lo + hi) / 2
        try:
            predicted = model.cost(allocate(mid)) / model.dense_ms
        except NetsiftError:  # below what the network can reach: ask for more
            lo = mid
            continue
        lo, hi = (mid, hi) if predicted < target else (lo, mid)
    return max(hi, 1e-3)


def meet_latency(model: LatencyModel, allocate: Callable[[float], list[int]], target: float,
                 tolerance: float = 0.05, tries: int = 5) -> tuple[list[int], dict]:
    """Widths whose measured latency is ``target`` of the dense network's, within ``tolerance`` if it can.

    ``allocate(f)`` gives widths for a fraction ``f`` of its own cost model (MACs); the latency table gives the
    first ``f`` to try. Each try's real pruned architecture is timed against the dense network, and ``f`` is
    corrected: by the ratio of target to measured until the target is bracketed, then by interpolating between
    the two closest tries on either side (measured latency rises with the MACs kept). The widths kept are
    timed once more, with more rounds, so that the recorded fraction is not the luckiest of the tries.
    Returns the widths and a record: every try's asked, predicted and measured fractions, and the final timing.
    """
    asked = _first_guess(model, allocate, target)
    tries_made, best, below, above = [], None, None, None
    for _ in range(tries):
        widths = allocate(min(1.0, asked))
        net = model.at({g.name: w for g, w in zip(model.groups, widths)})
        times = model.time({"dense": model.model, "pruned": net})
        measured = times["pruned"] / times["dense"]
        tries_made.append({"asked": asked, "predicted": model.cost(widths) / model.dense_ms, "measured": measured})
        if best is None or abs(measured - target) < abs(best[1] - target):
            best = (widths, measured)
        if abs(measured - target) <= tolerance * target:
            break
        if measured < target and (below is None or measured > below[1]):
            below = (asked, measured)
        if measured > target and (above is None or measured < above[1]):
            above = (asked, measured)
        if below is not None and above is not None and above[1] > below[1]:
            asked = below[0] + (above[0] - below[0]) * (target - below[1]) / (above[1] - below[1])
        else:
            asked = min(1.0, asked * target / measured)
    rounds, model.rounds = model.rounds, 2 * model.rounds
    try:
        net = model.at({g.name: w for g, w in zip(model.groups, best[0])})
        times = model.time({"dense": model.model, "pruned": net})
    finally:
        model.rounds = rounds
    return best[0], {"target": target, "measured": times["pruned"] / times["dense"], "measured_in_tries": best[1],
                     "tries": tries_made, "table": model.table, "batch_size": model.batch_size,
                     "threads": model.threads}
