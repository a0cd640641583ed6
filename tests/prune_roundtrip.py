"""One model end to end through the real prune path: ``netsift.prune`` on random data, the pruned network saved
as in a run folder, loaded back without the pruning code, run.

:func:`round_trip` is what the model-coverage tests and benchmarks (``tests/test_tv_coverage.py``,
``benchmarks/tv_coverage.py``) call for each model. The data are random tensors: the point is that every step
works (channel groups, budget, selection, removal, measurement, saving) and that the reloaded network computes
what the pruned one computed.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

import netsift
from netsift.errors import NetsiftError
from netsift.models import build_for
from netsift.rundir import load_model, save_model

# what the round trip leaves out of the pipeline's work: latency timings, fine-tuning, BN re-estimation
QUICK = {"finetune_epochs": 0, "recalibrate_bn": 0, "latency_threads": None, "bn_batch_stats": False}


def random_data(shape: tuple[int, ...], num_classes: int, n_train: int, n_test: int, seed: int) -> dict:
    """``{"train": ..., "test": ...}`` data sets of random images; every class appears (the data say how many)."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> torch.utils.data.TensorDataset:
        return torch.utils.data.TensorDataset(torch.randn(n, *shape, generator=g), torch.arange(n) % num_classes)

    return {"train": split(n_train), "test": split(n_test)}


def skipped_groups(model: nn.Module, shape: tuple[int, ...]) -> list[dict]:
    """Every channel group the pruning leaves whole (layers, channels, reason; a second analysis of the graph)."""
    from netsift.selection.groups import find_groups

    skipped: list = []
    find_groups(model, shape, skipped=skipped)
    return [s.as_dict() for s in skipped]


@contextmanager
def _head_inputs(model: nn.Module):
    """Collect the input of ``model``'s logits layer during the block (a one-element list, filled by the call)."""
    from netsift.selection.groups import output_layers

    seen: list = []
    handles = [m.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].detach())) for m in output_layers(model)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def reloaded_equal(r: dict) -> bool:
    """Whether a round trip's reloaded network matches the pruned one: logits and the logits layer's input, each
    within 1e-4 of its scale."""
    return all(r[k] <= 1e-4 * max(1.0, r.get(scale, 1.0)) for k, scale in
               (("reload_max_diff", "out_scale"), ("features_max_diff", "features_scale")) if k in r)


def round_trip(model_name: str, in_channels: int = 3, image_size: int = 32, num_classes: int = 10,
               method: str = "l1", macs: float = 0.5, candidates: int = 4, batch: int = 8, seed: int = 0,
               out_dir: str | Path | None = None, model: nn.Module | None = None, *,
               explain: bool = False) -> dict:
    """Prune ``model_name`` (built by :func:`netsift.models.build_for`) to ``macs`` of its MACs with ``method``
    through ``netsift.prune`` (random data: ``8 * batch`` training images, ``batch`` test images; no fine-tune,
    no run folder), save it as the pipeline saves it in a run folder (:func:`netsift.rundir.save_model`, in
    ``out_dir``, default a temporary folder), load it back with :func:`netsift.rundir.load_model` and run both
    on the same inputs.

    Returns a dict of facts (groups, MACs before/after, selection seconds, the max output difference between the
    pruned and the reloaded network, ``wall_s``); with ``explain``, also the groups left out and why
    (``groups_skipped``, from a second analysis of the graph: ``explain_s``, not in ``wall_s``). A ``model``
    given instead of a zoo name must carry a zoo manifest (:func:`netsift.models.manifest_of`) to load back.

    Raises:
        NetsiftError: anything refused (one line).
    """
    t0 = time.perf_counter()
    shape = (in_channels, image_size, image_size)
    if model is None:
        model = build_for(model_name, shape, num_classes, seed=seed)
    model.eval()
    data = random_data(shape, num_classes, 8 * batch, batch, seed)
    result = netsift.prune(model, data, method=method, macs=macs, candidates=candidates, select_batch=batch,
                           seed=seed, progress=False, **QUICK)
    pruned = result.model.eval()
    with tempfile.TemporaryDirectory() if out_dir is None else nullcontext(out_dir) as d:
        save_model(d, pruned)  # what the pipeline saves in a run folder: weights + manifest with every layer's size
        loaded, _ = load_model(d)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad(), _head_inputs(pruned) as feats_want, _head_inputs(loaded) as feats_got:
        want, got = pruned(x), loaded.eval()(x)
    if got.shape != (2, num_classes):
        raise NetsiftError(f"{model_name}: reloaded network gives outputs of shape {tuple(got.shape)}")
    out = {"model": model_name, "method": method, "image_size": image_size, "groups": len(result.groups),
           "macs_before": result.source_macs, "macs_after": result.macs, "macs_fraction": result.macs_fraction,
           "target": macs, "selection_s": result.selection_s, "wall_s": time.perf_counter() - t0,
           "reload_max_diff": float((want - got).abs().max()), "out_scale": float(want.abs().max()),
           # the logits layer's input too: a zero-initialised head (timm's) makes equal logits say nothing
           "features_max_diff": float((feats_want[0] - feats_got[0]).abs().max()),
           "features_scale": float(feats_want[0].abs().max())}
    if explain:
        t1 = time.perf_counter()
        out["groups_skipped"] = skipped_groups(model, shape)
        out["explain_s"] = time.perf_counter() - t1
    return out


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
