"""netsift.masks.stats: per-epoch mask density and undecided share (digits, tiny lenet300)."""

from __future__ import annotations

import json

import pytest
import torch

from netsift.config import TrainConfig
from netsift.data import load_data
from netsift.masks import apply_masks, fit_masks
from netsift.masks.base import mask_params, masked_layers
from netsift.masks.frozen import frozen_network
from netsift.masks.stats import MaskStats, mask_stats
from netsift.training import OptimGroup, fit

pytestmark = pytest.mark.usefixtures("one_thread")


def _net():
    return frozen_network({"model": "lenet300", "width": 0.1, "in_channels": 1, "image_size": 8, "num_classes": 10})


def test_mask_stats_counts_kept_and_undecided_logits():
    model = apply_masks(_net(), "gumbel")
    s = mask_stats(model)
    assert s["mask_density"] == 1.0 and s["undecided"] == 1.0  # logits 0: kept (m̂ ≥ 0), σ = 0.5
    logits = mask_params(model)
    with torch.no_grad():
        for p in logits:
            p.fill_(-3.0)  # σ ≈ 0.047: dropped and decided
        logits[0].view(-1)[:10] = 1.0  # σ ≈ 0.73: kept, undecided
    total = sum(p.numel() for p in logits)
    s = mask_stats(model)
    assert s["mask_density"] == pytest.approx(10 / total) and s["undecided"] == pytest.approx(10 / total)
    assert len(s["layer_density"]) == len(list(masked_layers(model))) and len(s["scales"]) == 3


def test_mask_stats_of_edge_popup_has_no_undecided_share():
    s = mask_stats(apply_masks(_net(), "edge-popup", density=0.3))
    assert s["undecided"] is None and s["mask_density"] == pytest.approx(0.3, abs=0.01) and "scales" not in s


def test_callback_adds_rows_and_survives_resume(tmp_path):
    bundle = load_data("digits", seed=0)
    cfg = TrainConfig(epochs=3, batch_size=64, max_steps=5, schedule="constant")

    def run(epochs, resume):
        model = apply_masks(_net(), "gumbel")
        groups = [OptimGroup("masks", mask_params(model), lr=200.0, weight_decay=0.0)]
        fit(model, bundle, TrainConfig(**{**cfg.__dict__, "epochs": epochs}), tmp_path / "run", groups=groups,
            callbacks=[MaskStats(model)], seed=0, resume=resume)
        return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]

    full = run(3, False)
    assert full[0]["mask_changed"] is None and all(0 <= r["undecided"] <= 1 for r in full)
    assert full[-1]["mask_density"] < 1.0 and full[1]["mask_changed"] > 0
    run(2, False)
    resumed = run(3, True)  # the previous epoch's mask comes back from the checkpoint
    untimed = lambda rows: [{k: v for k, v in r.items() if k not in ("epoch_s", "images_per_s")} for r in rows]
    assert untimed(resumed) == untimed(full)


def test_same_masks_with_the_callback():
    bundle = load_data("digits", seed=0)
    cfg = TrainConfig(epochs=1, batch_size=64, max_steps=5, schedule="constant")
    a, b = apply_masks(_net(), "gumbel"), apply_masks(_net(), "gumbel")
    fit_masks(a, bundle, cfg, seed=0)
    fit(b, bundle, cfg, groups=[OptimGroup("masks", mask_params(b), lr=1000.0, weight_decay=0.0),
                                OptimGroup("scales", [p for _, _, p in masked_layers(b) for p in [p.scale]], lr=1e-3,
                                           weight_decay=0.0)],
        callbacks=[MaskStats(b)], seed=0)
    assert all(torch.equal(x, y) for x, y in zip(mask_params(a), mask_params(b)))
