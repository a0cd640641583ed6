"""Learned widths: cost models exact against the pruned network, budgets met, curves made monotone."""

import random

import pytest
import torch

from netsift.errors import NetsiftError
from netsift.models import build_for
from netsift.selection.budget import MacsModel, ParamsModel, allocate
from netsift.selection.groups import build_graph, find_groups
from netsift.selection.removal import remove_channels
from netsift.selection.widths import allocate_learned, monotone, score_curve

NETS = [("lenet300", (1, 16, 16), 0.5), ("resnet20", (1, 16, 16), 0.25), ("mobilenetv2", (3, 16, 16), 0.25)]


def _groups(name, shape, width):
    model = build_for(name, shape, 10, width, 0).eval()
    graph = build_graph(model, shape)
    return model, graph, find_groups(model, shape, graph)


@pytest.mark.parametrize("name, shape, width", NETS)
def test_params_and_macs_models_count_the_pruned_network_exactly(name, shape, width):
    from netsift.measure import count_macs

    model, graph, groups = _groups(name, shape, width)
    params, macs = ParamsModel(model, groups, shape, graph), MacsModel(model, groups, shape)
    assert params.cost(None) == sum(p.numel() for p in model.parameters())
    rng = random.Random(1)
    for _ in range(2):
        widths = [rng.randint(1, g.size) for g in groups]
        pruned = remove_channels(model, shape, {g.name: list(range(w)) for g, w in zip(groups, widths)}, False)
        assert params.cost(widths) == sum(p.numel() for p in pruned.parameters())
        assert macs.cost(widths) == count_macs(pruned, shape)


def test_monotone_is_the_least_squares_non_increasing_fit():
    assert monotone([5, 4, 4.5, 3, 3.2, 1, 0]) == [5, 4.25, 4.25, 3.1, 3.1, 1, 0]
    assert monotone([1, 2, 3]) == [2, 2, 2]
    curve = score_curve(torch.tensor([3.0, 1.0, 2.0, 2.0]))  # normalised by the mean 2: 1.5, 0.5, 1, 1
    assert curve == pytest.approx([4.0, 2.5, 1.5, 0.5, 0.0])


@pytest.mark.parametrize("name, shape, width", NETS)
@pytest.mark.parametrize("kind", ["macs", "params"])
def test_learned_widths_meet_the_budget_and_follow_the_curves(name, shape, width, kind):
    model, graph, groups = _groups(name, shape, width)
    cost = ParamsModel(model, groups, shape, graph) if kind == "params" else MacsModel(model, groups, shape)
    # group 0's channels are worth a hundred times the others': it keeps more of them than a uniform share
    curves = [[(100.0 if gi == 0 else 1.0) * (g.size - k) for k in range(g.size + 1)] for gi, g in enumerate(groups)]
    for fraction in (0.5, 0.3):
        widths = allocate_learned(cost, curves, fraction)
        assert abs(cost.cost(widths) / cost.cost(None) - fraction) < 0.01 * fraction
        assert all(1 <= w <= g.size for w, g in zip(widths, groups))
        uniform = allocate(cost, fraction)
        assert widths[0] / groups[0].size >= uniform[0] / groups[0].size
    widths = allocate_learned(cost, curves, 0.4, round_to=4, fixed={len(groups) - 1: 1})
    assert widths[-1] == 1
    assert all(w % 4 == 0 or g.size < 8 or w == g.size for w, g in zip(widths[:-1], groups))


def test_an_unreachable_budget_names_the_smallest_reachable_one():
    model, graph, groups = _groups("lenet300", (1, 16, 16), 0.5)
    curves = [[float(g.size - k) for k in range(g.size + 1)] for g in groups]
    with pytest.raises(NetsiftError, match="out of reach.*keeps 0.0"):
        allocate_learned(MacsModel(model, groups, (1, 16, 16)), curves, 1e-6)


# ------------------------------------------------------------------------------------- through the prune pipeline

def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 12, 3, padding=1), torch.nn.BatchNorm2d(12), torch.nn.ReLU(),
                               torch.nn.Conv2d(12, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(16, 10))


@pytest.fixture(scope="module")
def digits():
    from netsift.data import load_data

    return load_data("digits", seed=0)


KW = dict(candidates=4, select_batch=64, holdout=200, finetune_epochs=0, progress=False, latency_threads=None)


@pytest.mark.parametrize("method", ["gfs", "backward", "l1", "random"])
@pytest.mark.slow
def test_learned_widths_meet_the_macs_budget_for_every_method(digits, method):
    import netsift

    uniform = netsift.prune(_net(), digits, method=method, macs=0.4, **KW)
    learned = netsift.prune(_net(), digits, method=method, macs=0.4, widths="learned", **KW)
    assert uniform.widths == "uniform" and learned.widths == "learned"
    assert abs(learned.macs_fraction - 0.4) < 0.01 * 0.4 + 0.005
    assert all(1 <= g["kept"] <= g["size"] for g in learned.groups)
    if method in ("gfs", "backward"):  # the curves of a trained-from-scratch-free net differ by group
        assert [g["kept"] for g in learned.groups] != [g["kept"] for g in uniform.groups]


def test_parameter_budget_is_met_and_recorded(digits):
    import netsift

    r = netsift.prune(_net(), digits, method="l1", params=0.3, widths="learned", **KW)
    assert r.params_target == 0.3 and abs(r.params_fraction - 0.3) < 0.01 * 0.3 + 0.002 and r.macs_target is None
    u = netsift.prune(_net(), digits, method="l1", params=0.3, **KW)
    assert abs(u.params_fraction - 0.3) < 0.03


def test_report_names_the_budget_and_the_widths(digits, tmp_path):
    import netsift
    from netsift.report import report

    for widths in ("uniform", "learned"):
        netsift.prune(_net(), digits, method="l1", params=0.3, widths=widths, out=tmp_path / widths, **KW)
    got = report([tmp_path / "uniform", tmp_path / "learned"], tmp_path / "rep", plots=False)
    assert {r["target"] for r in got["runs"]} == {"params 0.3"}  # not "tol None"
    assert {r["series"] for r in got["runs"]} == {"l1", "l1 widths=learned"}


@pytest.mark.parametrize("options, message", [
    ({"widths": "learned"}, "--widths learned shares a budget out"),
    ({"macs": 0.5, "params": 0.5}, "give one budget"),
    ({"latency": 1.5}, "--latency"),
    ({"widths": "wide", "macs": 0.5}, "--widths"),
    ({"macs": 0.5, "latency_batch": 0}, "--latency-batch"),
])
def test_bad_budgets_are_one_line(digits, options, message):
    import netsift

    with pytest.raises(NetsiftError, match=message):
        netsift.prune(_net(), digits, method="l1", **{**KW, **options})


@pytest.mark.slow
def test_learned_gfs_resumes_with_its_widths_and_ends_identical(digits, tmp_path, monkeypatch):
    import importlib

    import netsift
    from netsift.selection import gfs

    prune_module = importlib.import_module("netsift.pipelines.prune")
    kw = {**KW, "method": "gfs", "macs": 0.4, "widths": "learned"}
    full = netsift.prune(_net(), digits, out=tmp_path / "full", **kw)
    original_save = prune_module.SelectionState.save

    def save_then_interrupt(self, ctx, plan, net):
        original_save(self, ctx, plan, net)
        if len(ctx.records) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(prune_module.SelectionState, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        netsift.prune(_net(), digits, out=tmp_path / "cut", **kw)
    monkeypatch.setattr(prune_module.SelectionState, "save", original_save)
    measured = []
    monkeypatch.setattr(gfs, "forward_curve", lambda *a, **k: measured.append(1))
    resumed = netsift.prune(_net(), digits, out=tmp_path / "cut", resume=True, **kw)
    assert not measured  # the widths came back from the saved state, not from new curves
    assert resumed.groups == full.groups
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_gfs_curves_score_half_the_minibatch_and_fewer_candidates(digits, monkeypatch):
    """The loss curves (learned widths) are measured on half of each minibatch and at most max(8, N/4) candidates;
    the selection at the learned widths then scores on the whole minibatch, all candidates. Same seed: same
    widths, same channels."""
    import netsift
    from netsift.selection import curves, steps

    seen = []
    original = steps.Step.score

    def record(self, masks):
        seen.append((len(self.x), len(masks)))
        return original(self, masks)

    monkeypatch.setattr(steps.Step, "score", record)
    kw = {**KW, "method": "gfs", "macs": 0.4, "widths": "learned", "candidates": 50}
    first = netsift.prune(_net(), digits, **kw)
    n_curves = next(i for i, (b, _) in enumerate(seen) if b == 64)  # the curves come first
    assert n_curves > 0 and {b for b, _ in seen[:n_curves]} == {curves.MIN_IMAGES}
    assert {b for b, _ in seen[n_curves:]} == {64}
    # candidates + the whole group (+ the empty one at the first step): at most max(8, 16 / 4) + 2 rows
    assert max(k for _, k in seen[:n_curves]) <= 8 + 2 and max(k for _, k in seen[n_curves:]) > 10
    again = netsift.prune(_net(), digits, **kw)
    assert again.groups == first.groups


def test_cli_learned_widths(tmp_path, run_cli):
    code, out, err = run_cli("prune", "--model", "lenet300", "--width", "0.2", "--data", "digits", "--method", "gfs",
                             "--macs", "0.5", "--widths", "learned", "--candidates", "4", "--finetune-epochs", "0",
                             "--latency-threads", "0", "--out", tmp_path / "p")
    assert code == 0, err
    import json

    result = json.loads((tmp_path / "p" / "result.json").read_text())
    assert result["widths"] == "learned" and abs(result["macs_fraction"] - 0.5) < 0.01
    assert result["budget_missed"] is None and "warning" not in err


def test_a_missed_budget_is_said_and_recorded():
    from netsift.pipelines.prune import budget_missed
    from netsift.selection import PruneConfig

    assert budget_missed(PruneConfig(method="l1", macs=0.5), 0.503, 0.6) is None
    why = budget_missed(PruneConfig(method="l1", macs=0.5), 0.576, 0.6)
    assert "keeps 0.576 of its MACs, not the 0.5 asked for" in why
    assert "disagree" in why  # no prediction given: the cost model is blamed
    coarse = budget_missed(PruneConfig(method="l1", macs=0.01), 0.0094, 0.5, predicted=0.0094)
    assert "cannot get closer" in coarse and "disagree" not in coarse  # the cost model was right: the steps are coarse
    assert "disagree" in budget_missed(PruneConfig(method="l1", macs=0.5), 0.576, 0.6, predicted=0.5)
    assert "parameters" in budget_missed(PruneConfig(method="l1", params=0.3), 0.4, 0.35)
    assert budget_missed(PruneConfig(method="l1", tolerance=0.02), 0.1, 0.1) is None


def test_latency_model_predicts_from_its_table_and_meets_a_target_in_tries():
    from netsift.selection.latency import LatencyModel, meet_latency

    model, graph, groups = _groups("lenet300", (1, 16, 16), 0.5)
    lat = LatencyModel(model, groups, (1, 16, 16), batch_size=8, rounds=1, points=2)
    assert [row["widths"][-1] for row in lat.table] == [g.size for g in groups]
    full = [g.size for g in groups]
    half = [max(1, g.size // 2) for g in groups]
    assert lat.cost(full) == pytest.approx(lat.dense_ms) and lat.cost(half) <= lat.cost(full)
    widths, record = meet_latency(lat, lambda f: allocate(lat, f), 0.5, tries=2)
    assert len(record["tries"]) in (1, 2) and record["measured"] > 0 and len(widths) == len(groups)


class _FakeLatency:
    """A latency model whose 'timings' are a known function of the widths: a constant part the widths do not
    change (memory-bound layers) plus a part that grows with the channels kept, and a table that is wrong by
    a factor of 2 (as a noisy one can be)."""

    def __init__(self, sizes):
        self.groups = [type("G", (), {"name": f"g{i}", "size": n})() for i, n in enumerate(sizes)]
        self.model, self.dense_ms, self.rounds, self.table, self.batch_size, self.threads = "dense", 10.0, 3, [], 64, 1
        self.timed = 0

    def at(self, widths):
        return widths

    def true_ms(self, widths):
        kept = sum(widths.values()) / sum(g.size for g in self.groups)
        return 4.0 + 6.0 * kept ** 1.5

    def time(self, nets):
        self.timed += 1
        return {k: (self.dense_ms if v == "dense" else self.true_ms(v)) for k, v in nets.items()}

    def cost(self, widths=None):
        if widths is None:
            return self.dense_ms
        return self.dense_ms * (sum(widths) / sum(g.size for g in self.groups)) / 2  # the table's wrong guess


def test_latency_target_is_met_by_timing_the_pruned_network_even_with_a_wrong_table():
    from netsift.selection.latency import meet_latency

    lat = _FakeLatency([8, 16, 32, 64])

    def allocate(f):  # uniform widths for a fraction f of the channels
        return [max(1, round(g.size * f)) for g in lat.groups]

    for target in (0.5, 0.7, 0.9):
        widths, record = meet_latency(lat, allocate, target)
        truth = lat.true_ms({g.name: w for g, w in zip(lat.groups, widths)}) / lat.dense_ms
        assert abs(truth - target) <= 0.05 * target + 0.02, (target, truth, record["tries"])
        assert abs(record["measured"] - truth) < 1e-9 and len(record["tries"]) <= 5
