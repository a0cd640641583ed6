"""Physical removal of unselected channels with Torch-Pruning, the N/n rescale folded into the consumers.

The result is a plain ``nn.Module`` of the same class with smaller layers: it computes exactly what the masked
network computed during selection (a consumer reading a channel scaled by ``s`` is the consumer with that
weight column multiplied by ``s``).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Sequence

import torch
from torch import nn

from ..errors import NetsiftError
from .groups import ChannelGroup, build_graph, find_groups, prune_groups
from .masking import Masker, kept_mask


@torch.no_grad()
def _fold(consumer: nn.Module, root_of: torch.Tensor, mask: torch.Tensor) -> None:
    """Multiply the consumer's weight columns by the mask value of the group channel feeding them."""
    scale = torch.ones(len(root_of))
    sel = root_of >= 0
    scale[sel] = mask[root_of[sel]]
    w = consumer.weight
    if isinstance(consumer, nn.Linear):
        w.mul_(scale.to(w)[None, :])
        return
    if isinstance(consumer, nn.ConvTranspose2d):  # weight (in, out / groups, kh, kw): inputs on axis 0
        w.mul_(scale.to(w)[:, None, None, None])
        return
    in_pg, out_pg = w.shape[1], w.shape[0] // consumer.groups
    o = torch.arange(w.shape[0])[:, None]
    i = torch.arange(in_pg)[None, :]
    w.mul_(scale.to(w)[(o // out_pg) * in_pg + i][:, :, None, None])


def _moved(groups: Sequence[ChannelGroup], copy_of_model: nn.Module) -> list[ChannelGroup]:
    """``groups`` pointing at the same-named layers of a copy of their model."""
    modules = dict(copy_of_model.named_modules())
    return [dataclasses.replace(g, root=modules[g.name], consumers=[
        dataclasses.replace(c, module=modules[c.name]) for c in g.consumers], norms=[
        dataclasses.replace(c, module=modules[c.name]) for c in g.norms]) for g in groups]


def remove_channels(model: nn.Module, input_shape: tuple[int, ...], kept: dict[str, Sequence[int]],
                    rescale: dict[str, bool] | bool = True, groups: Sequence[ChannelGroup] | None = None
                    ) -> nn.Module:
    """A copy of ``model`` keeping only units ``kept[group name]`` of each named group.

    ``kept`` may repeat a unit (with-replacement selection): its multiplicity is folded into the weights.
    ``rescale`` (per group or for all) folds the N/n factor of the selection into the consumers. ``groups``
    (the groups ``kept`` refers to, from :func:`.find_groups` on ``model``) saves finding them again.

    Raises:
        NetsiftError: Torch-Pruning cannot remove the channels, or the result does not run (one line).
    """
    pruned = copy.deepcopy(model)
    was_training = pruned.training
    pruned.eval()
    dg = build_graph(pruned, input_shape)
    if groups is not None:
        groups = _moved(groups, pruned)
    else:
        groups = find_groups(pruned, input_shape, dg, verify=False)
    by_name = {g.name: g for g in groups}
    unknown = set(kept) - set(by_name)
    if unknown:
        raise ValueError(f"no channel groups named {sorted(unknown)}")
    plans = []
    for name, idxs in kept.items():
        g = by_name[name]
        if any(not 0 <= int(i) < g.size for i in idxs):
            raise ValueError(f"group {name} has {g.size} units; kept {sorted(set(int(i) for i in idxs))}")
        scale = rescale.get(name, True) if isinstance(rescale, dict) else rescale
        mask = kept_mask(g.size, list(idxs), scale)
        if scale or len(set(idxs)) != len(idxs):
            for c in g.consumers:
                _fold(c.module, c.root_of, mask)
        plans.append((g, sorted(set(range(g.size)) - set(int(i) for i in idxs))))
    prune_groups(pruned, dg, plans)
    try:
        with torch.no_grad():
            pruned(torch.zeros(1, *input_shape))
    except Exception as e:
        raise NetsiftError(f"the network with channels removed does not run: {type(e).__name__}: "
                           f"{(str(e).strip().splitlines() or [''])[0]}") from None
    pruned.train(was_training)
    return pruned


def _outputs(out) -> list[torch.Tensor]:
    """The floating-point tensors of a network's output (a tensor, or a tuple / list / dict of them)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _outputs(o)]
    return []


@torch.no_grad()
def removal_error(model: nn.Module, pruned: nn.Module, groups: Sequence[ChannelGroup],
                  kept: dict[str, Sequence[int]], rescale: dict[str, bool] | bool, x: torch.Tensor) -> float | None:
    """How far ``pruned`` (from :func:`remove_channels`) is from the subnetwork the selection scored: ``model``
    with the channels ``kept`` masked at its consumers' inputs, both in eval mode on inputs ``x``.

    Returns:
        the largest absolute output difference over the largest absolute output (0 up to float rounding; a
        grouping that cuts tied channels apart shows as a difference of the outputs' own size), or ``None``
        when there is nothing to compare: no floating-point output, or outputs the same for every input (a
        random-init timm network whose last features are all zero puts out its classifier's bias alone).
    """
    masker = Masker(model, groups)
    was_training, pruned_training = model.training, pruned.training
    try:
        model.eval()
        pruned.eval()
        for gi, g in enumerate(groups):
            if g.name in kept:
                masker.set_kept(gi, list(kept[g.name]),
                                rescale.get(g.name, True) if isinstance(rescale, dict) else rescale)
        want = _outputs(model(x))
        masker.remove()
        got = _outputs(pruned(x))
    finally:
        masker.remove()
        model.train(was_training)
        pruned.train(pruned_training)
    if not want or len(want) != len(got) or any(a.shape != b.shape for a, b in zip(want, got)):
        return None if not want else float("inf")
    scale = max(float(a.abs().max()) for a in want)
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(want, got))
    constant = scale == 0.0 or len(x) > 1 and all(torch.equal(a, a[:1].expand_as(a)) for a in want)
    if constant and diff <= 1e-6 * max(scale, 1.0):
        return None  # the same outputs for every input, in both networks: nothing was compared
    return diff / scale if scale else float("inf")
