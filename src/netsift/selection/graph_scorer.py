"""The traced-graph path of candidate scoring (any network ``torch.fx`` can trace).

- The network's graph is split for the group (:func:`~.graph_plan.make_plan`): the nodes that depend on the
  group's mask (its consumers and everything downstream: the *suffix*) and, of the rest, only what the suffix
  reads (e.g. the last activation before the first consumer, or a block input a residual add reads), computed
  once per call on the B images (:meth:`GraphScorer.prefix`; or received from another process).
- The group's first consumers compute their product over the mask all candidates share once per call, and each
  candidate adds its own channels (:mod:`.graph_direct`).
- The suffix runs on K·B stacked images, candidate k in rows k·B…(k+1)·B. A candidate-independent value that
  meets a stacked one in an elementwise op (a residual add) is broadcast, never copied; other ops get one
  expanded copy per chunk size, reused across chunks.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .bn_stats import call_module
from .graph_direct import Direct, mask_stacked, prepare_direct, run_direct
from .graph_plan import GraphPlan, NodeInfo, make_plan, node_info, run_simple, size_plan
from .masking import Masker
from .norms import NORMS
from .scoring_stats import ScoringStats, layer_macs


class Modified(Exception):
    """Raised when the suffix modified a value that later chunks read (the graph path cannot score the group)."""


class _Stack:
    """One chunk of K candidates in the suffix: the stacked (K·B rows) values of the nodes run so far."""

    def __init__(self, plan: GraphPlan, env: dict, expanded: dict[fx.Node, Tensor], k: int, b: int):
        self.plan, self.env, self.expanded, self.k, self.b = plan, env, expanded, k, b
        self.dep: dict[fx.Node, Any] = {}

    def value(self, a: fx.Node, how: str) -> Any:
        """``a``'s value for a suffix node: stacked (K·B, …); "broadcast": stacked ones as (K, B, …), batched
        independent ones as they are; "fresh": a private stacked copy (in-place ops)."""
        k, b = self.k, self.b
        if a in self.dep:
            v = self.dep[a]
            return v.view(k, b, *v.shape[1:]) if how == "broadcast" and isinstance(v, Tensor) else v
        v = self.env[a]
        if how == "broadcast" or a not in self.plan.batched:
            return v
        if how == "fresh":
            return v.unsqueeze(0).expand(k, *v.shape).reshape(k * b, *v.shape[1:]).clone()
        big = self.expanded.get(a)
        if big is None or big.shape[0] < k * b:
            big = v.unsqueeze(0).expand(k, *v.shape).reshape(k * b, *v.shape[1:])
            self.expanded[a] = big
        return big[:k * b]


def _versions(env: dict, expanded: dict, direct: dict[fx.Node, Direct]) -> list[tuple[Tensor, int]]:
    """Every value kept across chunks with its version: an in-place change would leak into later chunks."""
    return [(v, v._version) for v in (*env.values(), *expanded.values(), *(d.x for d in direct.values()),
                                      *(d.base for d in direct.values())) if isinstance(v, Tensor)]


def _modified(seen: list[tuple[Tensor, int]]) -> bool:
    """Whether a value of ``seen`` changed in place since its version was taken. (Each value is checked against
    its own version: values cached during a chunk come in between, so positions in two lists do not match.)"""
    return any(v._version != version for v, version in seen)


def chunk_size(plan: GraphPlan, k: int, b: int, max_batch: int, max_elements: int) -> int:
    """Candidates per stacked suffix pass: the suffix's largest activation within ``max_elements`` floats, and
    at most ``max_batch`` images times the ratio of the network's largest activation to the suffix's."""
    if max_elements:
        k = min(k, max(1, max_elements // (plan.act * b)))
    if max_batch:
        k = min(k, max(1, max_batch * plan.scale // b))
    return k


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer, keeping every norm across channels (timm's ``LayerNorm2d`` too) as one module
    call, where the :class:`~.masking.Masker`'s hook recomputes it over the kept channels."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, NORMS) or super().is_leaf_module(m, module_qualified_name)


class GraphScorer:
    """Scores a group's candidate masks on the traced graph (see the module docstring)."""

    def __init__(self, model: nn.Module, masker: Masker, bn_batch_stats: bool = False):
        self.model, self.masker, self.bn_batch_stats = model, masker, bn_batch_stats
        self.graph: fx.Graph | None | bool = None  # None: not traced yet; False: tracing failed
        self.plans: dict[int, GraphPlan | None] = {}
        self.nodes: dict[fx.Node, NodeInfo] | None = None  # per-image shapes and MACs of the traced graph

    # ------------------------------------------------------------------------------------------- plans

    def _trace(self, strict: bool) -> None:
        try:
            self.graph = _Tracer().trace(self.model)
        except Exception as e:  # tracing failures come in many types
            if strict:
                raise
            warnings.warn(f"netsift: cannot trace the model ({str(e).splitlines()[0] if str(e) else e!r}); "
                          "scoring with the hook path")
            self.graph = False

    def plan(self, gi: int, x: Tensor, strict: bool = False) -> GraphPlan | None:
        """Group ``gi``'s plan (made once), ``None`` where the graph path does not apply (a warning says why;
        ``strict``: raise instead)."""
        if gi in self.plans:
            return self.plans[gi]
        if self.graph is None:
            self._trace(strict)
        plan = None
        if self.graph is not False:
            reason, plan = make_plan(self.graph, self.model, self.masker.groups[gi])
            if plan is None:
                if strict:
                    raise RuntimeError(f"graph scoring does not apply to group {gi}: {reason}")
                warnings.warn(f"netsift: graph scoring does not apply to group {gi} ({reason}); "
                              "scoring it with the hook path")
        if plan is not None:
            if self.nodes is None:
                self.nodes = node_info(self.graph, self.model, plan.modules, plan.input, x[:1])
            size_plan(plan, self.nodes)
        self.plans[gi] = plan
        return plan

    def drop(self, gi: int) -> None:
        """Score group ``gi`` with the hook path from now on."""
        self.plans[gi] = None

    # ------------------------------------------------------------------------------------------ prefix

    def prefix(self, plan: GraphPlan, x: Tensor, st: ScoringStats,
               received: Sequence[Tensor] | None = None) -> dict[fx.Node, Any]:
        """Run the prefix on ``x``: the values the suffix reads (and a few dead ones). ``received``: its batched
        values computed elsewhere; then only what does not depend on the images (parameters, constants) is
        computed here."""
        env: dict[fx.Node, Any] = {}
        if received is not None:
            if len(received) != len(plan.shared) or any(v.shape[0] != x.shape[0] for v in received):
                raise ValueError("prefix values do not match the group's plan or the minibatch")
            env.update(zip(plan.shared, received))
        for n in plan.prefix:
            if n in env or (received is not None and n in plan.batched and n.op != "placeholder"):
                continue
            if n.op == "placeholder":
                env[n] = x if n is plan.input else (n.args[0] if n.args else None)
                continue
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: env[a])
            if n.op == "call_module":
                mod = plan.modules[n.target]
                out = call_module(mod, args, kwargs, 1, self.bn_batch_stats)
                st.prefix_macs += layer_macs(mod, out)
            else:
                out = run_simple(n, args, kwargs, self.model)
            env[n] = out
            for dead in plan.free_after.get(n, ()):
                env.pop(dead, None)
        return env

    def blank_prefix(self, plan: GraphPlan, x: Tensor) -> list[Tensor]:
        """Empty tensors shaped like the prefix values the suffix reads for a minibatch like ``x``."""
        info = self.nodes
        return [torch.empty((x.shape[0], *info[n].shape), dtype=info[n].dtype, device=x.device)
                for n in plan.shared]

    # ------------------------------------------------------------------------------------------ scores

    @torch.no_grad()
    def score(self, plan: GraphPlan, gi: int, masks: Tensor, x: Tensor, y: Tensor, st: ScoringStats,
              prefix: Sequence[Tensor] | None = None, max_batch: int = 256, max_elements: int = 1 << 21) -> Tensor:
        """Mean cross-entropy on ``(x, y)`` for each of the (K, N) candidate ``masks`` of group ``gi``.

        Raises:
            Modified: the network modified a value that later chunks read, in place.
        """
        b = x.shape[0]
        # candidate-independent values the suffix reads, once per call (or received)
        env = self.prefix(plan, x, st, prefix)
        # consumers reading candidate-independent inputs: the shared product, once per call
        direct = {n: prepare_direct(self.masker, gi, plan.modules[n.target], env[n.args[0]], masks, st)
                  for n in plan.direct}
        # the suffix on stacked candidates, in chunks
        k_max = chunk_size(plan, masks.shape[0], b, max_batch, max_elements)
        expanded: dict[fx.Node, Tensor] = {}
        seen = _versions(env, expanded, direct)
        losses = []
        for start in range(0, masks.shape[0], k_max):
            chunk = masks[start:start + k_max]
            k = chunk.shape[0]
            with self.masker.trial(gi, chunk):  # the group's norms read the candidates' masks (Masker's hooks)
                logits = self._suffix(plan, gi, _Stack(plan, env, expanded, k, b), direct, chunk, start, st)
            ce = F.cross_entropy(logits.float(), y.repeat(k), reduction="none").view(k, b).mean(1)
            losses.append(ce)
            if start + k < masks.shape[0]:
                if _modified(seen):
                    raise Modified(gi)
                seen = _versions(env, expanded, direct)
        return torch.cat(losses)

    def _suffix(self, plan: GraphPlan, gi: int, s: _Stack, direct: dict[fx.Node, Direct], chunk: Tensor,
                start: int, st: ScoringStats) -> Tensor:
        """The logits of one chunk of candidates (K·B rows)."""
        for n in plan.suffix:
            if n.op == "output":
                logits = fx.node.map_arg(n.args[0], lambda a: s.value(a, "stack"))
                break
            s.dep[n] = self._node(plan, gi, n, s, direct, chunk, start, st)
            for dead in plan.free_after.get(n, ()):
                s.dep.pop(dead, None)
        if not plan.output_depends:
            logits = logits.unsqueeze(0).expand(s.k, *logits.shape).reshape(s.k * s.b, *logits.shape[1:])
        return logits

    def _node(self, plan: GraphPlan, gi: int, n: fx.Node, s: _Stack, direct: dict[fx.Node, Direct],
              chunk: Tensor, start: int, st: ScoringStats) -> Any:
        """One suffix node's stacked value."""
        k = s.k
        if n in direct:
            return run_direct(direct[n], plan.modules[n.target], start, k, st)
        if n in plan.consumers:
            mod = plan.modules[n.target]
            xin = fx.node.map_arg(n.args[0], lambda a: s.value(a, "stack"))
            xin = mask_stacked(self.masker, gi, mod, xin, chunk, k)
            out = mod.forward(xin)
            st.candidate_macs += layer_macs(mod, out)
            st.plain_suffix_macs += layer_macs(mod, out)
            return out
        bc = n in plan.broadcast
        how = "broadcast" if bc else "fresh" if n in plan.inplace else "stack"
        args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: s.value(a, how))
        if n.op == "call_module":
            mod = plan.modules[n.target]
            out = call_module(mod, args, kwargs, k, self.bn_batch_stats)
            macs = layer_macs(mod, out)
            st.candidate_macs += macs
            st.plain_suffix_macs += macs
        else:
            out = run_simple(n, args, kwargs, self.model)
        if bc:
            out = out.reshape(k * s.b, *out.shape[2:])
        return out
