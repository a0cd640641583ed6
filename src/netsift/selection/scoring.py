"""Scoring many candidate masks of one channel group fast: :class:`BatchedScorer`, the entry point.

:class:`BatchedScorer` scores K candidate masks of one group on one minibatch, doing each candidate's own work
only: what does not depend on the candidate mask (the *prefix*, and at the group's first consumers the product
over the channels every candidate keeps) runs once per minibatch; the rest (the *suffix*) runs on K stacked
copies of what it reads, the k-th masked by the k-th candidate. It picks the path per group: the traced graph
(:mod:`.graph_scorer`) where it applies, checked against plain passes, else forward hooks (:mod:`.hook_scorer`).
The parts: :mod:`.masking` (masks), :mod:`.reference` (the plain one-forward-per-candidate computation of the
same numbers), :mod:`.scoring_stats` (the work done), :mod:`.bn_stats` (per-candidate batch statistics).
"""

from __future__ import annotations

import time
import warnings
from typing import Sequence

import torch
from torch import Tensor, nn

from .. import distributed
from .bn_stats import batch_norm_stats
from .graph_plan import GraphPlan
from .graph_scorer import GraphScorer, Modified
from .hook_scorer import HookScorer
from .masking import Masker
from .reference import reference_scores
from .scoring_stats import ScoringStats, layer_macs

# When the processes share a greedy step's prefix (one computes it, all receive it), the prefix must cost at
# least this many MACs per value sent and this many in all. benchmarks/gloo_cost.py on a 2-core CPU machine:
# sending a value took ~6 ns (all-gather at 0.3-0.9 GB/s, 0.5 ms per call), about 110 MACs of one core's
# convolution time (19.6 GMAC/s); 16 M MACs are ~0.8 ms, the order of one call's latency.
SEND_MACS_PER_VALUE = 128
SEND_MIN_MACS = 16_000_000


class BatchedScorer:
    """Scores K candidate masks of one group on one minibatch, with each candidate's own work only.

    Graph path (any model ``torch.fx`` can trace; :class:`~.graph_scorer.GraphScorer`): checked against a plain
    forward pass on a group's first call, with a fall-back to the hook path if they differ. Hook path
    (fall-back; :class:`~.hook_scorer.HookScorer`).

    Stacked passes: on a CPU, passes much larger than the caches are slower per image (measured: 128–256
    images at 28×28 beat 1024+; MobileNetV2's 28×28 layers run 1.3–1.8× faster per image at 128 than at 256),
    so a pass holds as many candidates as keep the suffix's largest activation within ``max_elements`` floats
    (at least one candidate), and at most ``max_batch`` images times the ratio of the network's largest
    activation per image to the suffix's (late groups, whose suffix runs on small feature maps, stack many).
    ``stats`` (a :class:`~.scoring_stats.ScoringStats`) accumulates the work done, ``group_stats[gi]`` per
    group. ``mode``: "auto" (graph path where it applies), "graph" (raise where it does not) or "hooks".
    """

    def __init__(self, model: nn.Module, masker: Masker, max_batch: int = 256, bn_batch_stats: bool = False,
                 mode: str = "auto", max_elements: int = 1 << 21):
        if mode not in ("auto", "graph", "hooks"):
            raise ValueError(f"unknown scoring mode {mode!r}")
        self.model, self.masker, self.max_batch, self.max_elements = model, masker, max_batch, max_elements
        self.bn_batch_stats = bn_batch_stats
        self.mode = mode
        self.stats = ScoringStats()
        self.group_stats: dict[int, ScoringStats] = {}
        self.graph = GraphScorer(model, masker, bn_batch_stats)
        self.hooks = HookScorer(model, masker, bn_batch_stats)
        self._checked: set[int] = set()
        self._sharing: dict[int, GraphPlan | None] = {}  # per group: the plan whose prefix values are sent, or None
        self._dense_per_image: int | None = None

    def reset_stats(self) -> None:
        self.stats = ScoringStats()
        self.group_stats = {}

    def _add(self, gi: int, st: ScoringStats) -> None:
        self.stats.add(st)
        self.group_stats.setdefault(gi, ScoringStats()).add(st)

    @torch.no_grad()
    def score(self, gi: int, masks: Tensor, x: Tensor, y: Tensor, prefix: Sequence[Tensor] | None = None) -> Tensor:
        """Mean cross-entropy on ``(x, y)`` for each of the (K, N) candidate ``masks`` of group ``gi``.

        ``prefix``: :meth:`prefix_values` of ``x`` for this group, computed elsewhere (another process); the call
        then does not compute them. Ignored where the group is scored by the hook path.
        """
        was_training = self.model.training
        self.model.eval()
        t = time.perf_counter()
        st = ScoringStats(calls=1, candidates=masks.shape[0], path="graph")
        if masks.shape[0] == 0:
            return torch.zeros(0)
        try:
            plan = self.graph.plan(gi, x, self.mode == "graph") if self.mode != "hooks" else None
            out = self._score_checked(plan, gi, masks, x, y, st, prefix) if plan is not None else None
            if out is None:
                st = ScoringStats(calls=1, candidates=masks.shape[0], path="hooks")
                out = self.hooks.score(gi, masks, x, y, st, self.max_batch)
        finally:
            self.model.train(was_training)
        st.seconds = time.perf_counter() - t
        self._add(gi, st)
        return out

    def _score_checked(self, plan: GraphPlan, gi: int, masks: Tensor, x: Tensor, y: Tensor,
                       st: ScoringStats, prefix: Sequence[Tensor] | None = None) -> Tensor | None:
        """Graph-path scores; on a group's first call also one plain forward pass to check them. ``None``
        (after a warning) when the graph path turns out not to apply: the group then uses the hook path."""
        problem = None
        try:
            out = self.graph.score(plan, gi, masks.float(), x, y, st, prefix, self.max_batch, self.max_elements)
        except Modified:
            problem = "the network modifies a cached value in place"
        if problem is None and gi not in self._checked:
            k = 1  # one plain forward pass: catches a traced graph that does not compute what the model does
            want = reference_scores(self.model, self.masker, gi, masks[:k], x, y, self.bn_batch_stats)
            st.check_macs += k * self._dense_macs(x)
            if not torch.allclose(out[:k], want, rtol=1e-4, atol=1e-4):
                problem = (f"its scores differ from plain forward passes "
                           f"(by up to {float((out[:k] - want).abs().max()):.2e})")
        self._checked.add(gi)
        if problem is None:
            return out
        if self.mode == "graph":
            raise RuntimeError(f"graph scoring of group {gi}: {problem}")
        warnings.warn(f"netsift: graph scoring of group {gi}: {problem}; using the hook path")
        self.graph.drop(gi)
        return None

    def _dense_macs(self, x: Tensor) -> int:
        """MACs of one plain forward pass of ``x`` (measured once, on one image)."""
        if self._dense_per_image is None:
            total = 0

            def post(mod, args, out):
                nonlocal total
                total += layer_macs(mod, out)

            hs = [m.register_forward_hook(post) for m in self.model.modules()
                  if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
            try:
                with batch_norm_stats(self.model, 1, self.bn_batch_stats):
                    self.model(x[:1])
            finally:
                for h in hs:
                    h.remove()
            self._dense_per_image = total
        return self._dense_per_image * x.shape[0]

    # ------------------------------------------------------------------------- prefix computed elsewhere

    def shares_prefix(self, gi: int, x: Tensor) -> bool:
        """Whether group ``gi``'s prefix values for a minibatch like ``x`` are worth computing once and sending
        (:meth:`prefix_values`) rather than computing in every process: the graph path applies, every value is
        a tensor with a batch axis, and the prefix costs at least :data:`SEND_MACS_PER_VALUE` MACs per value
        sent and :data:`SEND_MIN_MACS` in all, on a CPU (:func:`~netsift.distributed.share_policy` "auto";
        "always" skips those conditions, "never" says no)."""
        if gi not in self._sharing:  # decided once per group, so every process keeps deciding alike
            policy = distributed.share_policy()
            plan = self.graph.plan(gi, x, self.mode == "graph") if self.mode != "hooks" and policy != "never" \
                else None
            ok = plan is not None and plan.shared_numel >= 0
            if ok and policy == "auto":  # (on a GPU the values would travel through the CPU: never worth it)
                ok = x.device.type == "cpu"
            if ok and policy == "auto":
                macs, sent = plan.prefix_macs * x.shape[0], plan.shared_numel * x.shape[0]
                ok = macs >= SEND_MIN_MACS and macs >= SEND_MACS_PER_VALUE * sent
            self._sharing[gi] = plan if ok else None
        return self._sharing[gi] is not None

    @torch.no_grad()
    def prefix_values(self, gi: int, x: Tensor, compute: bool = True) -> list[Tensor]:
        """The candidate-independent values group ``gi``'s suffix reads for minibatch ``x`` (only where
        :meth:`shares_prefix`), in a fixed order; with ``compute=False``, empty tensors of their shapes (to
        receive them into)."""
        plan = self._sharing[gi]
        if not compute:
            return self.graph.blank_prefix(plan, x)
        was_training = self.model.training
        self.model.eval()
        st = ScoringStats(path="graph")
        try:
            env = self.graph.prefix(plan, x, st)
        finally:
            self.model.train(was_training)
        self._add(gi, st)
        return [env[n] for n in plan.shared]
