"""The cost estimate greedy selections say before they start: suffix passes counted exactly, seconds recorded."""

from __future__ import annotations

import json

import pytest
import torch

import netsift
from netsift.models import build_model
from netsift.selection import PruneConfig, gfs
from netsift.selection.estimate import estimate
from netsift.selection.pruner import _context, plan_channels

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (1, 8, 8)


def _ctx(macs: float | None, candidates: int):
    torch.manual_seed(0)
    net = build_model("resnet20", 1, 8, 10, 0.25).eval()
    cfg = PruneConfig(method="gfs", macs=macs, candidates=candidates, select_batch=16).resolved(True)
    plan = plan_channels(net, SHAPE, cfg)
    g = torch.Generator().manual_seed(0)
    holdout = (torch.randn(32, *SHAPE, generator=g), torch.randint(0, 10, (32,), generator=g))
    return _context(plan, lambda: (torch.randn(16, *SHAPE, generator=g), torch.randint(0, 10, (16,), generator=g)),
                    holdout, 0, False, None), cfg


@pytest.mark.slow
def test_suffix_passes_are_the_candidates_scored():
    ctx, cfg = _ctx(0.5, 3)
    try:
        est = estimate(ctx, "gfs", cfg.select_batch)
        assert ctx.scorer.stats.candidates == 0  # the timing calls leave no trace
        gfs.select(ctx)
    finally:
        ctx.masker.remove()
    assert est.passes == ctx.scorer.stats.candidates
    assert est.seconds > 0 and not est.upper and est.macs_per_s > 0
    assert est.line("gfs").startswith(f"GFS: about {est.passes:,} suffix passes, ~")


def test_tolerance_mode_gives_an_upper_bound():
    ctx, cfg = _ctx(None, 2)
    try:
        est = estimate(ctx, "gfs", cfg.select_batch)
    finally:
        ctx.masker.remove()
    assert est.upper and est.line("gfs").startswith("GFS: at most")
    assert est.passes == sum(sum(min(2, g.size - s) for s in range(g.size)) for g in ctx.groups)


@pytest.mark.slow
def test_the_estimate_is_said_and_recorded(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NETSIFT_PROGRESS", "lines")
    x, y = torch.rand(96, *SHAPE), torch.randint(0, 10, (96,))
    data = {"train": torch.utils.data.TensorDataset(x[:64], y[:64]),
            "test": torch.utils.data.TensorDataset(x[64:], y[64:])}
    torch.manual_seed(0)
    r = netsift.prune(build_model("resnet20", 1, 8, 10, 0.25), data, method="gfs", macs=0.5, candidates=2,
                      select_batch=16, holdout=16, finetune_epochs=0, latency_threads=None, out=tmp_path / "p")
    err = capsys.readouterr().err
    saved = json.loads((tmp_path / "p" / "result.json").read_text())
    assert saved["selection_passes"] == r.selection_passes > 0
    assert saved["selection_estimate_s"] > 0 and saved["selection_s"] > 0
    assert f"GFS: about {r.selection_passes:,} suffix passes" in err
    assert err.index("GFS: about") < err.index("gfs group 1/")  # said before the selection starts
    l1 = netsift.prune(build_model("resnet20", 1, 8, 10, 0.25), data, method="l1", macs=0.5, finetune_epochs=0,
                       latency_threads=None, progress=False)
    assert l1.selection_estimate_s is None  # rankings are instant: nothing to estimate
