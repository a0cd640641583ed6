"""One model end to end: find groups, allocate a MACs budget, select, remove, save, load back, run.

:func:`round_trip` is what the torchvision coverage test and benchmark call for each model; it uses random
data (the point is that every step works and the reloaded network computes what the pruned one computed).
"""

from __future__ import annotations

import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from ..errors import NetsiftError
from .base import SelectionContext
from .budget import MacsModel, allocate
from .groups import build_graph, find_groups
from .removal import remove_channels


def _macs(model: nn.Module, shape: tuple[int, ...]) -> int:
    from ..measure import count_macs

    return count_macs(model, shape)


def round_trip(model_name: str, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
               method: str = "l1", macs: float = 0.5, candidates: int = 4, batch: int = 8, seed: int = 0,
               out_dir: str | Path | None = None, model: nn.Module | None = None) -> dict:
    """Prune ``model_name`` (built by :func:`netsift.models.build_for`) to ``macs`` of its MACs with
    ``method``, save it with its manifest (:func:`netsift.rundir.save_model`), load it back without the pruning
    code (:func:`netsift.rundir.load_model`) and run it.

    Returns a dict of facts (groups, groups left out with why, MACs before/after, selection seconds, max output
    difference between the pruned and the reloaded network). A ``model`` given instead of a zoo name must carry
    a zoo manifest (:func:`netsift.models.manifest_of`) to load back.

    Raises:
        NetsiftError: anything refused (one line).
    """
    from ..models import build_for
    from ..rundir import load_model, save_model
    from . import METHODS

    t0 = time.perf_counter()
    shape = (in_channels, image_size, image_size)
    if model is None:
        model = build_for(model_name, shape, num_classes, seed=seed)
    model.eval()
    graph = build_graph(model, shape)
    skipped: list = []
    groups = find_groups(model, shape, graph, skipped=skipped)
    widths = allocate(MacsModel(model, groups, shape), macs)
    gen = torch.Generator().manual_seed(seed)

    def next_batch():
        return torch.randn(batch, *shape, generator=gen), torch.randint(0, num_classes, (batch,), generator=gen)

    holdout = next_batch()
    ctx = SelectionContext(model, groups, graph, shape, next_batch, holdout, widths=widths, candidates=candidates,
                           seed=seed, progress=False, label=method)
    t_sel = time.perf_counter()
    try:
        if METHODS[method].check is not None:
            METHODS[method].check(ctx)
        selection = METHODS[method].select(ctx)
    finally:
        ctx.masker.remove()
    selection_s = time.perf_counter() - t_sel
    pruned = remove_channels(model, shape, selection.kept, selection.rescale, groups).eval()
    before, after = _macs(model, shape), _macs(pruned, shape)
    x = torch.randn(2, *shape, generator=gen)
    with tempfile.TemporaryDirectory() if out_dir is None else nullcontext(out_dir) as d:
        save_model(Path(d), pruned)  # the manifest the zoo network carries, with every layer's size
        loaded, _ = load_model(Path(d))
    loaded.eval()
    with torch.no_grad():
        want, got = pruned(x), loaded(x)
    if got.shape != (2, num_classes):
        raise NetsiftError(f"{model_name}: reloaded network gives outputs of shape {tuple(got.shape)}")
    return {"model": model_name, "method": method, "image_size": image_size, "groups": len(groups),
            "groups_skipped": [s.as_dict() for s in skipped], "macs_before": before, "macs_after": after, "macs_fraction": after / before,
            "target": macs, "selection_s": selection_s, "wall_s": time.perf_counter() - t0,
            "reload_max_diff": float((want - got).abs().max()), "out_scale": float(want.abs().max())}



def reason_kind(reason: str) -> str:
    """A left-whole reason without what varies between groups (layer names, numbers, the error's text): the
    coverage tables count groups by it."""
    reason = reason.split(" (")[0]
    return " ".join("…" if any(ch.isdigit() or ch in "._" for ch in w) else w for w in reason.split())


def left_whole_summary(records: list[dict]) -> tuple[int, list[tuple[str, int]]]:
    """Groups left whole over coverage ``records`` (``groups_skipped`` of each) and how many per reason kind,
    most common first. Records written before the groups carried their channels (``[layer, reason]`` pairs)
    are read too."""
    counts: dict[str, int] = {}
    for r in records:
        for s in r.get("groups_skipped") or []:
            reason = s["reason"] if isinstance(s, dict) else s[1]
            kind = reason_kind(reason)
            counts[kind] = counts.get(kind, 0) + 1
    return sum(counts.values()), sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
