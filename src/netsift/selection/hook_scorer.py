"""The hook path of candidate scoring (any network, traceable or not).

:meth:`HookScorer.score` runs the network once up to the group's first consumer, caching the outermost modules
finished by then, and then the whole network on the K stacked candidates with those modules replaced by their
cached outputs (tiled once per call, not per chunk), the candidates' masks applied by the
:class:`~.masking.Masker`'s hooks.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bn_stats import batch_norm_stats
from .masking import Masker
from .scoring_stats import ScoringStats, layer_macs


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


@torch.no_grad()
def call_counts(model: nn.Module, x: Tensor) -> dict[nn.Module, int]:
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
def replay(tiled: dict[nn.Module, list[Tensor]], rows: int) -> Iterator[None]:
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


class HookScorer:
    """Scores a group's candidate masks with forward hooks: a cached prefix, then whole stacked passes."""

    def __init__(self, model: nn.Module, masker: Masker, bn_batch_stats: bool = False):
        self.model, self.masker, self.bn_batch_stats = model, masker, bn_batch_stats
        self._calls: dict[nn.Module, int] | None = None

    def record(self, gi: int, x: Tensor, st: ScoringStats | None = None) -> dict[nn.Module, list[Tensor]]:
        """Run ``x`` up to group ``gi``'s first consumer (or norm across its channels, which depends on the
        mask too); return the outputs of the modules finished by then.

        A module qualifies when every call it makes in the forward pass has finished before that point; only
        the outermost qualifying modules are kept. The pass stops at the first consumer (the suffix is not run).
        """
        group = self.masker.groups[gi]
        consumers = {c.module for c in group.consumers} | {c.module for c in group.norms}
        if self._calls is None:
            self._calls = call_counts(self.model, x[:1])
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

    @torch.no_grad()
    def score(self, gi: int, masks: Tensor, x: Tensor, y: Tensor, st: ScoringStats, max_batch: int) -> Tensor:
        """Mean cross-entropy on ``(x, y)`` for each of the (K, N) candidate ``masks`` of group ``gi``, at most
        ``max_batch`` stacked images per pass."""
        cached = self.record(gi, x, st)
        b = x.shape[0]
        per_chunk = min(max(1, max_batch // b), masks.shape[0])

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
                with batch_norm_stats(self.model, k, self.bn_batch_stats), replay(tiled, k * b), \
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
