"""Masking channel groups and scoring many candidate masks fast.

:class:`Masker` multiplies every consumer's input by the scaled 0/1 mask of the groups it reads (forward
pre-hooks, so the network's code is untouched). :class:`BatchedScorer` scores K candidate masks of one group
on one minibatch: it runs the network once on the minibatch to cache the outputs of every module that finishes
before the group's first consumer (the *prefix*: it cannot depend on the candidate mask), then runs the rest of
the network once on K stacked copies of the minibatch, the k-th copy masked by the k-th candidate, with the
cached modules replaced by their stored outputs. :func:`reference_scores` is the plain one-forward-per-candidate
computation of the same numbers.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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


class BatchedScorer:
    """Scores candidate masks of one group: prefix once per minibatch, then candidates in batches.

    ``max_batch`` caps the images of one stacked pass: on a CPU, passes much larger than the caches are slower
    per image (measured: 128–256 images at 28×28 beat 1024+), so a few candidates go together.
    """

    def __init__(self, model: nn.Module, masker: Masker, max_batch: int = 256, bn_batch_stats: bool = False):
        self.model, self.masker, self.max_batch = model, masker, max_batch
        self.bn_batch_stats = bn_batch_stats
        self._calls: dict[nn.Module, int] | None = None

    def _record(self, gi: int, x: Tensor) -> dict[nn.Module, list[Tensor]]:
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
    def score(self, gi: int, masks: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Mean cross-entropy on ``(x, y)`` for each of the (K, N) candidate ``masks`` of group ``gi``."""
        was_training = self.model.training
        self.model.eval()
        try:
            cached = self._record(gi, x)
            b = x.shape[0]
            per_chunk = max(1, self.max_batch // b)
            losses = []
            for start in range(0, masks.shape[0], per_chunk):
                chunk = masks[start:start + per_chunk]
                k = chunk.shape[0]
                with batch_norm_stats(self.model, k, self.bn_batch_stats), _replay(cached, k), \
                        self.masker.trial(gi, chunk):
                    xs = x.unsqueeze(0).expand(k, *x.shape).reshape(k * b, *x.shape[1:])
                    logits = self.model(xs)
                ce = F.cross_entropy(logits.float(), y.repeat(k), reduction="none").view(k, b).mean(1)
                losses.append(ce)
            return torch.cat(losses)
        finally:
            self.model.train(was_training)


@contextmanager
def batch_norm_stats(model: nn.Module, blocks: int, enabled: bool = True) -> Iterator[None]:
    """Within the block, batch norms normalise with the statistics of the current batch (not the running ones),
    computed separately for each of ``blocks`` equal slices of the batch (one per stacked candidate)."""
    if not enabled:
        yield
        return
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        def fwd(x, _m=m):
            xs = x.view(blocks, x.shape[0] // blocks, *x.shape[1:])
            var, mean = torch.var_mean(xs, [1] + list(range(3, xs.dim())), keepdim=True, correction=0)
            scale = torch.rsqrt(var + _m.eps)
            if _m.affine:
                scale = scale * _m.weight.view([1, 1, -1] + [1] * (xs.dim() - 3))
            shift = -mean * scale
            if _m.affine:
                shift = shift + _m.bias.view([1, 1, -1] + [1] * (xs.dim() - 3))
            return torch.addcmul(shift, xs, scale).view_as(x)

        m.forward = fwd
    try:
        yield
    finally:
        for m in bns:
            m.__dict__.pop("forward", None)


class _Stop(Exception):
    """Raised by a hook to end a forward pass early."""


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
def _replay(cached: dict[nn.Module, list[Tensor]], k: int) -> Iterator[None]:
    """Replace each cached module's forward by its stored outputs, tiled ``k`` times along the batch."""
    for m, outs in cached.items():
        tiled = [o.repeat(k, *(1,) * (o.dim() - 1)) for o in outs]
        counter = {"i": 0}

        def fwd(*args, _tiled=tiled, _c=counter, **kwargs):
            out = _tiled[_c["i"] % len(_tiled)]
            _c["i"] += 1
            return out

        m.forward = fwd
    try:
        yield
    finally:
        for m in cached:
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
