"""Channel masks at the consumers' inputs: :class:`Masker`, and the masks of kept channels and of candidates.

:class:`Masker` multiplies every consumer's input by the scaled 0/1 mask of the groups it reads (forward
pre-hooks, so the network's code is untouched), and recomputes every norm whose statistics span a group's
channels over the kept channels only (forward hooks, :mod:`.norms`), as the pruned network computes it.
:func:`kept_mask` is the mask of a (multi)set of kept channels; :func:`candidate_masks` stacks those of one
greedy step's candidates.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from .groups import ChannelGroup
from .norms import channel_axis, kept_norm


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
        self._norms: dict[nn.Module, list[tuple[int, Tensor]]] = {}
        for gi, g in enumerate(self.groups):
            for c in g.norms:
                self._norms.setdefault(c.module, []).append((gi, c.root_of))
        self._axis: dict[nn.Module, int | None] = {}
        self._cache: dict[nn.Module, Tensor | None] = {}
        self._handles = [m.register_forward_pre_hook(self._hook) for m in self._readers]
        self._handles += [m.register_forward_hook(self._norm_hook) for m in self._norms]

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

    def _norm_hook(self, module: nn.Module, args: tuple, out) -> Tensor | None:
        """A norm across a group's channels, recomputed over the kept ones (fixed masks, and the trial's per
        block of rows)."""
        if not args or not isinstance(args[0], Tensor):
            return None
        trial_gi = self._trial[0] if self._trial is not None else None
        keep, trial = None, None
        for gi, root_of in self._norms[module]:
            sel = root_of >= 0
            if gi == trial_gi:
                masks = self._trial[1]
                trial = torch.ones(masks.shape[0], len(root_of))
                trial[:, sel] = (masks[:, root_of[sel]] != 0).float()
                continue
            mask = self.masks[gi]
            if mask is None:
                continue
            if keep is None:
                keep = torch.ones(len(root_of))
            keep[sel] = keep[sel] * (mask[root_of[sel]] != 0).float()
        if trial is not None:
            keep = trial if keep is None else trial * keep
        if keep is None or bool(keep.all()):
            return None
        x = args[0]
        if module not in self._axis:  # found once, from a call with every channel
            with torch.no_grad():
                self._axis[module] = channel_axis(module, x, module.forward(x))
        axis = self._axis[module]
        if axis is None:
            return None
        return kept_norm(module, x, keep, axis)


def kept_mask(size: int, kept: Sequence[int], rescale: bool = True) -> Tensor:
    """The scaled mask keeping ``kept`` of ``size`` channels; repeats count (with-replacement selection)."""
    mask = torch.zeros(size)
    for j in kept:
        mask[j] += 1.0
    if rescale and len(kept):
        mask *= size / len(kept)
    return mask


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
