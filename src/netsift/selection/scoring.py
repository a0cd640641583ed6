"""Masking channel groups and scoring many candidate masks fast.

:class:`Masker` multiplies every consumer's input by the scaled 0/1 mask of the groups it reads (forward
pre-hooks, so the network's code is untouched). :class:`BatchedScorer` scores K candidate masks of one group
on one minibatch, doing each candidate's own work only: what does not depend on the candidate mask (the
*prefix*, and at the group's first consumers the product over the channels every candidate keeps) runs once
per minibatch; the rest (the *suffix*) runs on K stacked copies of what it reads, the k-th masked by the k-th
candidate. :func:`reference_scores` is the plain one-forward-per-candidate computation of the same numbers.
"""


from __future__ import annotations

import functools
import math
import operator
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .. import distributed
from .groups import ChannelGroup


class Masker:
    """Applies per-group channel masks at the consumers' inputs.

    ``set(g, mask)`` fixes group ``g``'s mask (a length-N vector: 0 for removed channels, the rescale factor for
    kept ones); ``trial(g, masks)`` temporarily gives group ``g`` a (K, N) stack of candidate masks, the k-th
    applying to the k-th block of B samples of a K·B batch.
    """

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup]):
        self.model, self.groups = model, list(groups)
        self.masks: dict[int, Tensor | None] = {i: None for i in range(len(self.groups))}
        self._trial: tuple[int, Tensor] | None = None
        self._readers: dict[nn.Module, list[tuple[int, Tensor]]] = {}
        for gi, g in enumerate(self.groups):
            for c in g.consumers:
                self._readers.setdefault(c.module, []).append((gi, c.root_of))
        self._cache: dict[nn.Module, Tensor | None] = {}
        self._handles = [m.register_forward_pre_hook(self._hook) for m in self._readers]

    def remove(self) -> None:
        """Detach the hooks (the model computes unmasked again)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def set(self, gi: int, mask: Tensor | None) -> None:
        """Fix group ``gi``'s mask (``None``: every channel, unscaled)."""
        self.masks[gi] = None if mask is None else mask.detach().float()
        self._cache = {}

    def set_kept(self, gi: int, kept: Sequence[int], rescale: bool = True) -> None:
        """Keep channels ``kept`` of group ``gi`` (a multiset counts repeats), scaled by N/n if ``rescale``."""
        self.set(gi, kept_mask(self.groups[gi].size, kept, rescale))

    @contextmanager
    def trial(self, gi: int, masks: Tensor) -> Iterator[None]:
        """Within the block, group ``gi`` uses the (K, N) candidate ``masks``."""
        self._trial = (gi, masks.float())
        try:
            yield
        finally:
            self._trial = None

    def _scale(self, module: nn.Module, exclude: int | None) -> Tensor | None:
        key = module if exclude is None else (module, exclude)
        if key in self._cache:
            return self._cache[key]
        scale = None
        for gi, root_of in self._readers[module]:
            mask = self.masks[gi]
            if gi == exclude or mask is None:
                continue
            if scale is None:
                scale = torch.ones(len(root_of))
            sel = root_of >= 0
            scale[sel] = scale[sel] * mask[root_of[sel]]
        self._cache[key] = scale
        return scale

    def fixed_scale(self, module: nn.Module, exclude: int | None = None) -> Tensor | None:
        """The product of the fixed masks of the groups ``module`` reads, in its input space (``exclude``: one
        group left out); ``None`` when no mask applies."""
        return self._scale(module, exclude)

    def input_masks(self, module: nn.Module, gi: int, masks: Tensor) -> Tensor:
        """Group ``gi``'s (K, N) candidate ``masks`` in ``module``'s input space: (K, C), 1 off the group."""
        for g, root_of in self._readers[module]:
            if g == gi:
                sel = root_of >= 0
                out = torch.ones(masks.shape[0], len(root_of), dtype=masks.dtype, device=masks.device)
                out[:, sel] = masks[:, root_of[sel]]
                return out
        raise KeyError(f"the module does not read group {gi}")

    def _hook(self, module: nn.Module, args: tuple) -> tuple | None:
        x = args[0]
        trial_gi = self._trial[0] if self._trial is not None else None
        fixed = self._scale(module, trial_gi)
        trial = None
        if self._trial is not None:
            for gi, root_of in self._readers[module]:
                if gi == trial_gi:
                    masks = self._trial[1]
                    sel = root_of >= 0
                    trial = torch.ones(masks.shape[0], len(root_of))
                    trial[:, sel] = masks[:, root_of[sel]]
        if fixed is None and trial is None:
            return None
        # a Linear reads features on the last axis (tokens: (B, T, C), channels-last maps: (B, H, W, C))
        last = isinstance(module, nn.Linear)
        shape = (1,) * (x.dim() - 1) + (-1,) if last else (1, -1) + (1,) * (x.dim() - 2)
        if fixed is not None:
            x = x * fixed.to(x.device, x.dtype).view(shape)
        if trial is not None:
            k = trial.shape[0]
            xs = x.view(k, x.shape[0] // k, *x.shape[1:])
            x = (xs * trial.to(x.device, x.dtype).view(k, *shape)).view_as(x)
        return (x, *args[1:])


def kept_mask(size: int, kept: Sequence[int], rescale: bool = True) -> Tensor:
    """The scaled mask keeping ``kept`` of ``size`` channels; repeats count (with-replacement selection)."""
    mask = torch.zeros(size)
    for j in kept:
        mask[j] += 1.0
    if rescale and len(kept):
        mask *= size / len(kept)
    return mask


@dataclass
class ScoringStats:
    """Work done by a :class:`BatchedScorer`: MACs (multiply-accumulates of Conv/Linear layers, as executed)
    and wall time.

    ``prefix_macs``: candidate-independent layers, run once per call up to the values the suffix reads.
    ``shared_macs``: each first consumer's product over the part of the masks all candidates share (S),
    once per call. ``candidate_macs``: the per-candidate work (each candidate's own term at those consumers,
    then the rest of the network on the stacked candidates). ``suffix_macs`` = shared + candidate: the MACs
    of all suffix passes. ``plain_suffix_macs``: what one plain suffix pass per candidate would execute (the
    first consumers in full). ``check_macs``: the one-off plain passes that check a group's first scores.
    """

    calls: int = 0
    candidates: int = 0
    prefix_macs: int = 0
    shared_macs: int = 0
    candidate_macs: int = 0
    plain_suffix_macs: int = 0
    check_macs: int = 0
    seconds: float = 0.0
    path: str = ""

    @property
    def suffix_macs(self) -> int:
        return self.shared_macs + self.candidate_macs

    @property
    def total_macs(self) -> int:
        return self.prefix_macs + self.suffix_macs + self.check_macs

    def add(self, other: "ScoringStats") -> None:
        for f in ("calls", "candidates", "prefix_macs", "shared_macs", "candidate_macs", "plain_suffix_macs",
                  "check_macs", "seconds"):
            setattr(self, f, getattr(self, f) + getattr(other, f))
        if other.path and other.path not in self.path.split("+"):
            self.path = other.path if not self.path else f"{self.path}+{other.path}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["suffix_macs"], d["total_macs"] = self.suffix_macs, self.total_macs
        return d


def layer_macs(module: nn.Module, out: Tensor) -> int:
    """MACs of one call of a Conv/Linear ``module`` that produced ``out`` (0 for other modules)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        return out.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    return 0


def candidate_masks(size: int, kept: Sequence[int], add: Sequence[int] = (), drop: Sequence[int] = (),
                    rescale: bool = True) -> Tensor:
    """The (K, size) stack of :func:`kept_mask` (bit for bit) of ``kept`` plus one candidate each (``add``: a
    greedy forward step) or of ``kept`` less one candidate each (``drop``: a backward-elimination step)."""
    base = torch.zeros(size)
    if len(kept):
        base.index_put_((torch.as_tensor(list(kept)),), torch.ones(len(kept)), accumulate=True)
    cands, sign = (add, 1.0) if len(add) else (drop, -1.0)
    masks = base.repeat(len(cands), 1)
    masks[torch.arange(len(cands)), torch.as_tensor(list(cands), dtype=torch.long)] += sign
    n = len(kept) + (1 if len(add) else -1)
    if rescale and n > 0:
        masks *= size / n
    return masks


class BatchedScorer:
    """Scores K candidate masks of one group on one minibatch, with each candidate's own work only.

    Graph path (any model ``torch.fx`` can trace; checked against a plain forward pass on a group's first
    call, with a fall-back to the hook path if they differ):

    - The network's graph is split into the nodes that depend on the group's mask (its consumers and
      everything downstream: the *suffix*) and the rest. Of the rest, only what the suffix reads is kept
      (e.g. the last activation before the first consumer, or a block input a residual add reads), computed
      once per call on the B images.
    - A consumer whose input is candidate-independent is linear in its input: with the (K, C) candidate masks
      written as a shared part ``u`` (their per-channel mode: c·1_S for GFS) plus a sparse per-candidate rest
      ``d_k`` (c·e_j), ``W(x ⊙ m_k) + b = [W(x ⊙ u) + b] + W(x ⊙ d_k)``. The bracket runs once per call; each
      candidate adds its own channel's contribution (a grouped convolution over the candidates). Grouped
      convolutions, non-zero padding modes, masks without a sparse rest, and consumers whose input already
      depends on the candidate (later consumers of a residual stream) take the plain masked computation.
    - The suffix runs on K·B stacked images, candidate k in rows k·B…(k+1)·B. A candidate-independent value
      that meets a stacked one in an elementwise op (a residual add) is broadcast, never copied; other ops get
      one expanded copy per chunk size, reused across chunks.

    Hook path (fall-back): runs the network once up to the group's first consumer, caching the outermost
    modules finished by then, and then the whole network on the stacked candidates with those modules
    replaced by their cached outputs (tiled once per call, not per chunk).

    Stacked passes: on a CPU, passes much larger than the caches are slower per image (measured: 128–256
    images at 28×28 beat 1024+; MobileNetV2's 28×28 layers run 1.3–1.8× faster per image at 128 than at 256),
    so a pass holds as many candidates as keep the suffix's largest activation within ``max_elements`` floats
    (at least one candidate), and at most ``max_batch`` images times the ratio of the network's largest
    activation per image to the suffix's (late groups, whose suffix runs on small feature maps, stack many).
    ``stats`` (a :class:`ScoringStats`) accumulates the work done, ``group_stats[gi]`` per group. ``mode``:
    "auto" (graph path where it applies), "graph" (raise where it does not) or "hooks".
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
        self._calls: dict[nn.Module, int] | None = None
        self._graph: fx.Graph | None | bool = None  # None: not traced yet; False: tracing failed
        self._plans: dict[int, _Plan | None] = {}
        self._checked: set[int] = set()
        self._nodes: dict[fx.Node, _NodeInfo] | None = None  # per-image shapes and MACs of the traced graph
        self._sharing: dict[int, _Plan | None] = {}  # per group: the plan whose prefix values are sent, or None

    def reset_stats(self) -> None:
        self.stats = ScoringStats()
        self.group_stats = {}

    # ------------------------------------------------------------------------------------------ entry point

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
            plan = self._plan(gi, x) if self.mode != "hooks" else None
            out = self._score_checked(plan, gi, masks, x, y, st, prefix) if plan is not None else None
            if out is None:
                st = ScoringStats(calls=1, candidates=masks.shape[0], path="hooks")
                out = self._score_hooks(gi, masks, x, y, st)
        finally:
            self.model.train(was_training)
        st.seconds = time.perf_counter() - t
        self.stats.add(st)
        self.group_stats.setdefault(gi, ScoringStats()).add(st)
        return out

    def _score_checked(self, plan: "_Plan", gi: int, masks: Tensor, x: Tensor, y: Tensor,
                       st: ScoringStats, prefix: Sequence[Tensor] | None = None) -> Tensor | None:
        """Graph-path scores; on a group's first call also one plain forward pass to check them. ``None``
        (after a warning) when the graph path turns out not to apply: the group then uses the hook path."""
        problem = None
        try:
            out = self._score_graph(plan, gi, masks.float(), x, y, st, prefix)
        except _Modified:
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
        self._plans[gi] = None
        return None

    def _dense_macs(self, x: Tensor) -> int:
        if not hasattr(self, "_dense_per_image"):
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

    # ----------------------------------------------------------------------------------------- graph path

    def _plan(self, gi: int, x: Tensor) -> "_Plan | None":
        if gi in self._plans:
            return self._plans[gi]
        if self._graph is None:
            try:
                self._graph = fx.Tracer().trace(self.model)
            except Exception as e:  # tracing failures come in many types
                if self.mode == "graph":
                    raise
                warnings.warn(f"netsift: cannot trace the model ({str(e).splitlines()[0] if str(e) else e!r}); "
                              "scoring with the hook path")
                self._graph = False
        plan = None
        if self._graph is not False:
            reason, plan = _make_plan(self._graph, self.model, self.masker.groups[gi])
            if plan is None:
                if self.mode == "graph":
                    raise RuntimeError(f"graph scoring does not apply to group {gi}: {reason}")
                warnings.warn(f"netsift: graph scoring does not apply to group {gi} ({reason}); "
                              "scoring it with the hook path")
        if plan is not None:
            self._measure(plan, x[:1])
        self._plans[gi] = plan
        return plan

    def _measure(self, plan: "_Plan", x: Tensor) -> None:
        """Fill in ``plan``'s per-image figures from one pass of one image through the graph (made once): the
        stacking limits (the ratio of the network's largest activation to the suffix's, and the suffix's), the
        prefix's MACs and the shapes of the prefix values the suffix reads."""
        if self._nodes is None:
            nodes: dict[fx.Node, _NodeInfo] = {}
            env: dict[fx.Node, Any] = {}
            for n in self._graph.nodes:
                if n.op == "placeholder":
                    env[n] = x if n is plan.input else (n.args[0] if n.args else None)
                elif n.op == "output":
                    break
                else:
                    args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: env[a])
                    env[n] = plan.modules[n.target](*args, **kwargs) if n.op == "call_module" else \
                        _run_simple(n, args, kwargs, self.model)
                v = env[n]
                if isinstance(v, Tensor):
                    per_image = v.dim() > 0 and v.shape[0] == 1  # (a value with a batch axis has 1 row here)
                    nodes[n] = _NodeInfo(tuple(v.shape[1:]) if per_image else None, v.dtype, v.numel(),
                                         layer_macs(plan.modules[n.target], v) if n.op == "call_module" else 0)
                else:
                    nodes[n] = _NodeInfo(None, None, 0, 0)
            self._nodes = nodes
        info = self._nodes
        largest = max((i.numel for i in info.values()), default=1)
        suffix = max(1, max((info[n].numel for n in plan.suffix if n in info), default=0))
        plan.scale, plan.act = max(1, largest // suffix), suffix
        plan.prefix_macs = sum(info[n].macs for n in plan.prefix if n in info)
        plan.shared = [n for n in plan.prefix if n in plan.frontier and n in plan.batched and n is not plan.input]
        sendable = all(n in info and info[n].shape is not None for n in plan.shared) and \
            len({info[n].dtype for n in plan.shared}) <= 1
        plan.shared_numel = sum(info[n].numel for n in plan.shared) if sendable else -1

    # ------------------------------------------------------------------------- prefix computed elsewhere

    def shares_prefix(self, gi: int, x: Tensor) -> bool:
        """Whether group ``gi``'s prefix values for a minibatch like ``x`` are worth computing once and sending
        (:meth:`prefix_values`) rather than computing in every process: the graph path applies, every value is
        a tensor with a batch axis, and the prefix costs at least :data:`SEND_MACS_PER_VALUE` MACs per value
        sent and :data:`SEND_MIN_MACS` in all, on a CPU (:func:`~netsift.distributed.share_policy` "auto";
        "always" skips those conditions, "never" says no)."""
        if gi not in self._sharing:  # decided once per group, so every process keeps deciding alike
            policy = distributed.share_policy()
            plan = self._plan(gi, x) if self.mode != "hooks" and policy != "never" else None
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
        info = self._nodes
        if not compute:
            return [torch.empty((x.shape[0], *info[n].shape), dtype=info[n].dtype, device=x.device)
                    for n in plan.shared]
        was_training = self.model.training
        self.model.eval()
        st = ScoringStats(path="graph")
        try:
            env = self._prefix(plan, x, st)
        finally:
            self.model.train(was_training)
        self.stats.add(st)
        self.group_stats.setdefault(gi, ScoringStats()).add(st)
        return [env[n] for n in plan.shared]

    def _prefix(self, plan: "_Plan", x: Tensor, st: ScoringStats,
                received: Sequence[Tensor] | None = None) -> dict[fx.Node, Any]:
        """Run the prefix on ``x``: the values the suffix reads (and a few dead ones). ``received``: its batched
        values from :meth:`prefix_values` computed elsewhere; then only what does not depend on the images
        (parameters, constants) is computed here."""
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
                out = self._call(mod, args, kwargs, 1)
                st.prefix_macs += layer_macs(mod, out)
            else:
                out = _run_simple(n, args, kwargs, self.model)
            env[n] = out
            for dead in plan.free_after.get(n, ()):
                env.pop(dead, None)
        return env

    def _call(self, mod: nn.Module, args, kwargs, blocks: int) -> Any:
        if self.bn_batch_stats and isinstance(mod, nn.modules.batchnorm._BatchNorm):
            return _bn_blocks(mod, args[0], blocks)
        return mod(*args, **kwargs)

    def _score_graph(self, plan: "_Plan", gi: int, masks: Tensor, x: Tensor, y: Tensor, st: ScoringStats,
                     prefix: Sequence[Tensor] | None = None) -> Tensor:
        b = x.shape[0]
        modules = plan.modules
        # candidate-independent values the suffix reads, once per call (or received)
        env = self._prefix(plan, x, st, prefix)
        # consumers reading candidate-independent inputs: the shared product, once per call
        direct: dict[fx.Node, _Direct] = {}
        for n in plan.direct:
            mod = modules[n.target]
            direct[n] = self._prepare_direct(gi, mod, env[n.args[0]], masks, st)
        # the suffix on stacked candidates, in chunks
        k_max = masks.shape[0]
        if self.max_elements:
            k_max = min(k_max, max(1, self.max_elements // (plan.act * b)))
        if self.max_batch:
            k_max = min(k_max, max(1, self.max_batch * plan.scale // b))
        expanded: dict[fx.Node, Tensor] = {}

        def versions():  # of every value kept across chunks: an in-place change would leak into later chunks
            return [v._version for v in (*env.values(), *expanded.values(), *(d.x for d in direct.values()),
                                         *(d.base for d in direct.values())) if isinstance(v, Tensor)]

        seen = versions()
        losses = []
        for start in range(0, masks.shape[0], k_max):
            chunk = masks[start:start + k_max]
            k = chunk.shape[0]
            dep: dict[fx.Node, Any] = {}

            def value(a: fx.Node, how: str):
                """``a``'s value for a suffix node: stacked (K·B, …); "broadcast": stacked ones as (K, B, …),
                batched independent ones as they are; "fresh": a private stacked copy (in-place ops)."""
                if a in dep:
                    v = dep[a]
                    return v.view(k, b, *v.shape[1:]) if how == "broadcast" and isinstance(v, Tensor) else v
                v = env[a]
                if how == "broadcast" or a not in plan.batched:
                    return v
                if how == "fresh":
                    return v.unsqueeze(0).expand(k, *v.shape).reshape(k * b, *v.shape[1:]).clone()
                big = expanded.get(a)
                if big is None or big.shape[0] < k * b:
                    big = v.unsqueeze(0).expand(k, *v.shape).reshape(k * b, *v.shape[1:])
                    expanded[a] = big
                return big[:k * b]

            for n in plan.suffix:
                if n.op == "output":
                    logits = fx.node.map_arg(n.args[0], lambda a: value(a, "stack"))
                    break
                if n in direct:
                    out = self._run_direct(direct[n], modules[n.target], start, k, st)
                elif n in plan.consumers:
                    mod = modules[n.target]
                    xin = fx.node.map_arg(n.args[0], lambda a: value(a, "stack"))
                    xin = self._mask_stacked(gi, mod, xin, chunk, k)
                    out = mod.forward(xin)
                    st.candidate_macs += layer_macs(mod, out)
                    st.plain_suffix_macs += layer_macs(mod, out)
                else:
                    bc = n in plan.broadcast
                    how = "broadcast" if bc else "fresh" if n in plan.inplace else "stack"
                    args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: value(a, how))
                    if n.op == "call_module":
                        mod = modules[n.target]
                        out = self._call(mod, args, kwargs, k)
                        macs = layer_macs(mod, out)
                        st.candidate_macs += macs
                        st.plain_suffix_macs += macs
                    else:
                        out = _run_simple(n, args, kwargs, self.model)
                    if bc:
                        out = out.reshape(k * b, *out.shape[2:])
                dep[n] = out
                for dead in plan.free_after.get(n, ()):
                    dep.pop(dead, None)
            if not plan.output_depends:
                logits = logits.unsqueeze(0).expand(k, *logits.shape).reshape(k * b, *logits.shape[1:])
            ce = F.cross_entropy(logits.float(), y.repeat(k), reduction="none").view(k, b).mean(1)
            losses.append(ce)
            if start + k < masks.shape[0]:
                now = versions()
                if now[:len(seen)] != seen:
                    raise _Modified(gi)
                seen = now
        return torch.cat(losses)

    def _mask_stacked(self, gi: int, mod: nn.Module, x: Tensor, chunk: Tensor, k: int) -> Tensor:
        """Scale a consumer's stacked input (K·B, C, …) by the fixed masks and the k-th candidate's mask."""
        scale = self.masker.input_masks(mod, gi, chunk)  # (K, C)
        fixed = self.masker.fixed_scale(mod, gi)
        if fixed is not None:
            scale = scale * fixed
        xs = x.view(k, x.shape[0] // k, *x.shape[1:])
        return (xs * _channel_view(mod, scale.to(x.device, x.dtype), xs.dim(), stacked=True)).view_as(x)

    def _prepare_direct(self, gi: int, mod: nn.Module, x: Tensor, masks: Tensor, st: ScoringStats) -> "_Direct":
        """Per call: the consumer's input with fixed masks applied, and its product over the shared mask."""
        fixed = self.masker.fixed_scale(mod, gi)
        xe = x if fixed is None else x * _channel_view(mod, fixed.to(x.device, x.dtype), x.dim())
        trial = self.masker.input_masks(mod, gi, masks).to(x.device, x.dtype)  # (K, C)
        shared = torch.mode(trial, 0).values
        rest = trial - shared
        r = int((rest != 0).sum(1).max()) if rest.numel() else 0
        linear_ok = (isinstance(mod, nn.Linear) and xe.dim() == 2) or (
            isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.padding_mode == "zeros")
        if not linear_ok or 2 * r > trial.shape[1]:
            return _Direct(xe, trial, None, None, None)
        base = mod.forward(xe * _channel_view(mod, shared, xe.dim()))
        macs = layer_macs(mod, base)
        st.shared_macs += macs
        _, idx = rest.abs().topk(max(r, 1), dim=1)
        vals = rest.gather(1, idx)
        return _Direct(xe, trial, base, idx, vals, macs)

    def _run_direct(self, d: "_Direct", mod: nn.Module, start: int, k: int, st: ScoringStats) -> Tensor:
        xe = d.x
        b = xe.shape[0]
        if d.base is None:  # plain masked product of each candidate
            m = d.trial[start:start + k]
            xs = xe.unsqueeze(0) * _channel_view(mod, m, xe.dim() + 1, stacked=True)
            out = mod.forward(xs.view(k * b, *xe.shape[1:]))
            st.candidate_macs += layer_macs(mod, out)
            st.plain_suffix_macs += layer_macs(mod, out)
            return out
        idx, vals = d.idx[start:start + k], d.vals[start:start + k]  # (K, R)
        r = idx.shape[1]
        st.plain_suffix_macs += k * d.base_macs
        if isinstance(mod, nn.Linear):
            xg = xe[:, idx]  # (B, K, R)
            wg = mod.weight[:, idx] * vals  # (O, K, R)
            delta = torch.einsum("bkr,okr->kbo", xg, wg)
            st.candidate_macs += delta.numel() * r
            return (delta + d.base).reshape(k * b, -1)
        flat = idx.reshape(-1)
        w = mod.weight[:, flat] * vals.reshape(1, -1, 1, 1)  # (O, K·R, kh, kw)
        o = w.shape[0]
        w = w.view(o, k, r, *w.shape[2:]).transpose(0, 1).reshape(k * o, r, *w.shape[2:])
        delta = F.conv2d(xe[:, flat], w, None, mod.stride, mod.padding, mod.dilation, k)  # (B, K·O, H, W)
        st.candidate_macs += layer_macs_grouped(delta, r, mod)
        base = d.base
        out = torch.empty((k, b) + tuple(base.shape[1:]), dtype=base.dtype, device=base.device)
        torch.add(delta.view(b, k, *base.shape[1:]).transpose(0, 1), base, out=out)
        return out.view(k * b, *base.shape[1:])

    # ------------------------------------------------------------------------------------------ hook path

    def _record(self, gi: int, x: Tensor, st: ScoringStats | None = None) -> dict[nn.Module, list[Tensor]]:
        """Run ``x`` up to group ``gi``'s first consumer; return the outputs of the modules finished by then.

        A module qualifies when every call it makes in the forward pass has finished before that point; only
        the outermost qualifying modules are kept. The pass stops at the first consumer (the suffix is not run).
        """
        consumers = {c.module for c in self.masker.groups[gi].consumers}
        if self._calls is None:
            self._calls = _call_counts(self.model, x[:1])
        names = {m: n for n, m in self.model.named_modules() if n}
        before: dict[nn.Module, list[Tensor]] = {}

        def pre(mod, args):
            if mod in consumers:
                raise _Stop

        def post(mod, args, out):
            if isinstance(out, Tensor):
                before.setdefault(mod, []).append(out.detach().clone())
                if st is not None:
                    st.prefix_macs += layer_macs(mod, out)

        handles = []
        for m in names:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        try:
            with batch_norm_stats(self.model, 1, self.bn_batch_stats):
                self.model(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        qualified = {m for m, outs in before.items() if len(outs) == self._calls.get(m, -1)}
        modules = dict(self.model.named_modules())
        return {m: before[m] for m in qualified
                if not ((parent := names[m].rpartition(".")[0]) and modules[parent] in qualified)}

    def _score_hooks(self, gi: int, masks: Tensor, x: Tensor, y: Tensor, st: ScoringStats) -> Tensor:
        cached = self._record(gi, x, st)
        b = x.shape[0]
        per_chunk = min(max(1, self.max_batch // b), masks.shape[0])

        def tile():
            t = {m: [o.repeat(per_chunk, *(1,) * (o.dim() - 1)) for o in outs] for m, outs in cached.items()}
            return t, x.unsqueeze(0).expand(per_chunk, *x.shape).reshape(per_chunk * b, *x.shape[1:])

        def versions():
            return [o._version for outs in tiled.values() for o in outs] + [xs_all._version]

        tiled, xs_all = tile()  # once per call; again only after the network modified them in place
        macs = 0

        def count(mod, args, out):
            nonlocal macs
            if mod not in cached:
                macs += layer_macs(mod, out)

        hs = [m.register_forward_hook(count) for m in self.model.modules()
              if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
        losses = []
        try:
            for start in range(0, masks.shape[0], per_chunk):
                chunk = masks[start:start + per_chunk]
                k = chunk.shape[0]
                if start and versions() != seen:
                    tiled, xs_all = tile()
                seen = versions()
                with batch_norm_stats(self.model, k, self.bn_batch_stats), _replay(tiled, k * b), \
                        self.masker.trial(gi, chunk):
                    logits = self.model(xs_all[:k * b])
                ce = F.cross_entropy(logits.float(), y.repeat(k), reduction="none").view(k, b).mean(1)
                losses.append(ce)
        finally:
            for h in hs:
                h.remove()
        st.candidate_macs += macs
        st.plain_suffix_macs += macs
        return torch.cat(losses)


def layer_macs_grouped(out: Tensor, per_group_in: int, mod: nn.Conv2d) -> int:
    return out.numel() * per_group_in * math.prod(mod.kernel_size)


def _channel_view(mod: nn.Module, v: Tensor, x_dim: int, stacked: bool = False) -> Tensor:
    """``v`` ((C,), or (K, C) if ``stacked``) shaped to scale the channel axis of an input with ``x_dim``
    dimensions ((B, C, …) for a convolution, (B, …, C) for a linear layer; (K, B, …) if ``stacked``)."""
    lead = (v.shape[0], 1) if stacked else (1,)
    if isinstance(mod, nn.Linear):
        return v.view(*lead, *(1,) * (x_dim - len(lead) - 1), -1)
    return v.view(*lead, -1, *(1,) * (x_dim - len(lead) - 1))


# When the processes share a greedy step's prefix (one computes it, all receive it), the prefix must cost at
# least this many MACs per value sent and this many in all. benchmarks/gloo_cost.py on a 2-core CPU machine:
# sending a value took ~6 ns (all-gather at 0.3-0.9 GB/s, 0.5 ms per call), about 110 MACs of one core's
# convolution time (19.6 GMAC/s); 16 M MACs are ~0.8 ms, the order of one call's latency.
SEND_MACS_PER_VALUE = 128
SEND_MIN_MACS = 16_000_000


@dataclass
class _NodeInfo:
    shape: tuple[int, ...] | None  # per image (None: not a tensor with a batch axis)
    dtype: torch.dtype | None
    numel: int  # per image
    macs: int  # per image


@dataclass
class _Direct:
    x: Tensor  # the consumer's input with the fixed masks of other groups applied (B, C, …)
    trial: Tensor  # (K, C) candidate masks in the consumer's input space
    base: Tensor | None  # the product over the shared mask (B, O, …), or None: plain masked products
    idx: Tensor | None  # (K, R) input channels where a candidate's mask differs from the shared one
    vals: Tensor | None  # (K, R) by how much
    base_macs: int = 0


@dataclass
class _Plan:
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


def _is_inplace(n: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if n.op == "call_module":
        return bool(getattr(modules[n.target], "inplace", False))
    if n.op == "call_method":
        return n.target.endswith("_") and not n.target.endswith("__")
    if n.op == "call_function":
        name = getattr(n.target, "__name__", "")
        return bool(n.kwargs.get("inplace")) or (name.startswith("i") and getattr(operator, name, None) is n.target
                                                  and name not in ("is_", "is_not", "index", "invert", "inv"))
    return False


def _make_plan(graph: fx.Graph, model: nn.Module, group: ChannelGroup) -> tuple[str, _Plan | None]:
    """Split the traced graph for ``group``: what depends on its mask, what the suffix reads, what to free."""
    modules = dict(model.named_modules())
    consumer_mods = {c.module for c in group.consumers}
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if not placeholders or any(not p.args for p in placeholders[1:]):
        return "the model takes more than one input", None
    consumers = {n for n in nodes if n.op == "call_module" and modules.get(n.target) in consumer_mods}
    if {modules[n.target] for n in consumers} != consumer_mods:
        return "a consumer is not called as a module", None
    dep: set[fx.Node] = set()
    for n in nodes:
        if n in consumers or any(a in dep for a in n.all_input_nodes):
            dep.add(n)
    out_node = next(n for n in nodes if n.op == "output")
    batched: set[fx.Node] = set()
    for n in nodes:
        if n is placeholders[0] or any(a in batched for a in n.all_input_nodes):
            batched.add(n)
    # candidate-independent values the suffix reads, and everything they need
    frontier = {a for n in dep for a in n.all_input_nodes if a not in dep}
    need: set[fx.Node] = set()
    stack = list(frontier)
    while stack:
        n = stack.pop()
        if n not in need:
            need.add(n)
            stack.extend(n.all_input_nodes)
    prefix = [n for n in nodes if n in need]
    suffix = [n for n in nodes if n in dep or n is out_node]
    for n in prefix:
        if _is_inplace(n, modules) and n.args and n.args[0] in frontier:
            return f"{n.name} modifies a value the suffix reads in place", None
    for a in frontier:
        if a in batched and a.op in ("call_method", "call_function") and a.target in ("size", getattr, len):
            return f"the suffix reads the size of a candidate-independent value ({a.name})", None
    direct = [n for n in suffix if n in consumers and isinstance(n.args[0], fx.Node) and n.args[0] not in dep
              and len(n.args) == 1 and not n.kwargs]
    broadcast = set()
    for n in suffix:
        if n in consumers or n.op == "output" or _is_inplace(n, modules):
            continue
        ins = [a for a in n.args if isinstance(a, fx.Node)]
        if (len(ins) == 2 and len(n.args) == 2 and not n.kwargs and any(a in dep for a in ins)
                and any(a not in dep and a in batched for a in ins)
                and ((n.op == "call_function" and n.target in _ELEMENTWISE)
                     or (n.op == "call_method" and n.target in _ELEMENTWISE_METHODS))):
            broadcast.add(n)
    # free each value after its last reader (frontier values live for the whole call)
    order = {n: i for i, n in enumerate(nodes)}
    free_after: dict[fx.Node, list[fx.Node]] = {}
    for n in nodes:
        users = [u for u in n.users]
        if not users or n in frontier:
            continue
        last = max(users, key=order.get)
        free_after.setdefault(last, []).append(n)
    inplace = {n for n in suffix if _is_inplace(n, modules)}
    for n in inplace:
        if n.args and isinstance(n.args[0], fx.Node) and n.args[0] not in dep:
            return f"{n.name} modifies a candidate-independent value in place", None
    return "", _Plan(modules, placeholders[0], prefix, suffix, consumers, direct, batched, broadcast, inplace,
                     free_after,
                     out_node in dep or any(a in dep for a in out_node.all_input_nodes), frontier)


def _run_simple(n: fx.Node, args, kwargs, model: nn.Module) -> Any:
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


def _bn_blocks(m: nn.modules.batchnorm._BatchNorm, x: Tensor, blocks: int) -> Tensor:
    """Batch norm of ``x`` with the statistics of each of ``blocks`` equal slices of its batch.

    Two passes (the mean, then the norm of the centred values, which become the output in place): exact to
    float rounding, and on a CPU many times faster than ``torch.var_mean`` over the batch and spatial axes.
    """
    xs = x.reshape(blocks, x.shape[0] // blocks, x.shape[1], -1)  # (blocks, B, C, positions)
    n = xs.shape[1] * xs.shape[3]
    mean = xs.sum(3, keepdim=True).sum(1, keepdim=True) / n
    d = xs - mean
    var = torch.linalg.vector_norm(d, dim=3, keepdim=True).square_().sum(1, keepdim=True) / n
    scale = torch.rsqrt(var + m.eps)
    if m.affine:
        scale = scale * m.weight.view(1, 1, -1, 1)
    d.mul_(scale)
    if m.affine:
        d.add_(m.bias.view(1, 1, -1, 1))
    return d.view(x.shape)


@contextmanager
def batch_norm_stats(model: nn.Module, blocks: int, enabled: bool = True) -> Iterator[None]:
    """Within the block, batch norms normalise with the statistics of the current batch (not the running ones),
    computed separately for each of ``blocks`` equal slices of the batch (one per stacked candidate)."""
    if not enabled:
        yield
        return
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.forward = functools.partial(_bn_blocks, m, blocks=blocks)
    try:
        yield
    finally:
        for m in bns:
            m.__dict__.pop("forward", None)


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


class _Modified(Exception):
    """Raised when the suffix modified a value that later chunks read (the graph path cannot score the group)."""


@torch.no_grad()
def _call_counts(model: nn.Module, x: Tensor) -> dict[nn.Module, int]:
    """How many times each submodule is called in one forward pass."""
    calls: dict[nn.Module, int] = {}

    def post(mod, args, out):
        calls[mod] = calls.get(mod, 0) + 1

    handles = [m.register_forward_hook(post) for n, m in model.named_modules() if n]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return calls


@contextmanager
def _replay(tiled: dict[nn.Module, list[Tensor]], rows: int) -> Iterator[None]:
    """Replace each cached module's forward by its stored (already tiled) outputs, cut to ``rows`` rows."""
    for m, outs in tiled.items():
        counter = {"i": 0}

        def fwd(*args, _outs=outs, _c=counter, **kwargs):
            out = _outs[_c["i"] % len(_outs)]
            _c["i"] += 1
            return out[:rows]

        m.forward = fwd
    try:
        yield
    finally:
        for m in tiled:
            del m.forward


@torch.no_grad()
def reference_scores(model: nn.Module, masker: Masker, gi: int, masks: Tensor, x: Tensor, y: Tensor,
                     bn_batch_stats: bool = False) -> Tensor:
    """The plain computation: one whole forward pass per candidate mask."""
    was_training = model.training
    model.eval()
    old = masker.masks[gi]
    out = []
    try:
        for mask in masks:
            masker.set(gi, mask)
            with batch_norm_stats(model, 1, bn_batch_stats):
                out.append(F.cross_entropy(model(x).float(), y))
    finally:
        masker.set(gi, old)
        model.train(was_training)
    return torch.stack(out)


@torch.no_grad()
def masked_accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024,
                    bn_batch_stats: bool = False) -> float:
    """Accuracy of ``model`` (with whatever masks are set) on the held-out tensors ``(x, y)``."""
    was_training = model.training
    model.eval()
    correct = 0
    for s in range(0, len(y), batch_size):
        with batch_norm_stats(model, 1, bn_batch_stats):
            correct += (model(x[s:s + batch_size]).argmax(1) == y[s:s + batch_size]).sum().item()
    model.train(was_training)
    return correct / max(1, len(y))
