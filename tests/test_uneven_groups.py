"""Groups whose members hold different units (CSPNeXt's block): costs counted exactly, budgets met, no empty layer.

A CSP block concatenates a ``main`` branch and a ``short`` branch and gates the concatenation with an attention
convolution whose output channels multiply it: one channel group, in which ``main``'s channels are some units and
``short``'s the others. Which units a selection keeps then decides which convolution shrinks.
"""

from __future__ import annotations

import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netsift.measure import count_macs
from netsift.selection.base import Selection
from netsift.selection.budget import MacsModel, ParamsModel, least
from netsift.selection.groups import build_graph, find_groups
from netsift.selection.pruner import keep_every_member
from netsift.selection.removal import remove_channels

SHAPE = (1, 8, 8)


class CSPBlock(nn.Module):
    """``cat([block(main(x)), short(x)])`` gated by ``sigmoid(fc(mean))`` (ESE), then a final convolution."""

    def __init__(self, c: int = 16):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(c, c // 2, 1), nn.BatchNorm2d(c // 2))
        self.short = nn.Sequential(nn.Conv2d(c, c // 2, 1), nn.BatchNorm2d(c // 2))
        self.block = nn.Sequential(nn.Conv2d(c // 2, c // 2, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(c // 2, c // 2, 3, padding=1))
        self.fc = nn.Conv2d(c, c, 1)
        self.final = nn.Conv2d(c, c, 1)

    def forward(self, x):
        m = self.main(x)
        y = torch.cat([m + self.block(m), self.short(x)], 1)
        return torch.relu(self.final(y * torch.sigmoid(self.fc(y.mean((2, 3), keepdim=True)))))


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), CSPBlock(16), nn.Conv2d(16, 24, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10)).eval()


def _uneven(model):
    graph = build_graph(model, SHAPE)
    groups = find_groups(model, SHAPE, graph)
    (gi,) = [i for i, g in enumerate(groups) if g.member_counts]
    return graph, groups, gi


def test_the_gated_concatenation_is_one_group_with_uneven_members():
    _, groups, gi = _uneven(_net())
    counts = groups[gi].member_counts
    assert set(counts) >= {"2.main.0", "2.short.0"}
    main, short = counts["2.main.0"], counts["2.short.0"]
    assert int(main.sum()) == 8 and int(short.sum()) == 8 and not bool((main * short).any())  # disjoint units


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_macs_and_params_of_any_kept_units_are_exact(seed):
    model = _net(seed)
    graph, groups, gi = _uneven(model)
    macs, params = MacsModel(model, groups, SHAPE), ParamsModel(model, groups, SHAPE, graph)
    counts = groups[gi].member_counts
    rng = random.Random(seed)
    # lopsided selections: most of one branch's units and one of the other's
    main_units = [int(u) for u in torch.nonzero(counts["2.main.0"]).flatten()]
    short_units = [int(u) for u in torch.nonzero(counts["2.short.0"]).flatten()]
    for kept_units in (main_units[:7] + short_units[:1], main_units[:1] + short_units[:6],
                       rng.sample(range(groups[gi].size), 5)):
        if not set(kept_units) & set(short_units) or not set(kept_units) & set(main_units):
            continue
        kept = {gi: kept_units}
        pruned = remove_channels(model, SHAPE, {groups[gi].name: kept_units}, False, groups)
        assert macs.macs(kept=kept) == count_macs(pruned, SHAPE)
        assert params.macs(kept=kept) == sum(p.numel() for p in pruned.parameters())


def test_a_selection_that_empties_a_member_gets_one_of_its_units_back():
    model = _net()
    _, groups, gi = _uneven(model)
    g = groups[gi]
    main_units = [int(u) for u in torch.nonzero(g.member_counts["2.main.0"]).flatten()]
    selection = Selection({g.name: main_units[:3]}, rescale=False, info=[{"group": g.name, "kept": 3}])
    lines = keep_every_member(groups, selection)
    assert len(lines) == 1 and "2.short.0" in lines[0]
    assert selection.info[0]["kept"] == 4
    pruned = remove_channels(model, SHAPE, selection.kept, False, groups)
    assert pruned[2].short[0].out_channels == 1
    pruned(torch.randn(2, *SHAPE))


def test_quotas_share_the_width_by_kind_of_unit():
    _, groups, gi = _uneven(_net())
    g = groups[gi]
    for width in range(2, g.size + 1):
        cls, quota = g.quotas(width)
        assert sum(quota) == width and all(q >= 1 for q in quota) and len(quota) == 2
        assert abs(quota[0] - quota[1]) <= 1  # two kinds of 8 units each
        kept = g.first_within_quotas(list(reversed(range(g.size))), width)
        assert len(kept) == width and [sum(cls[u] == c for u in kept) for c in range(2)] == quota
    even = [x for x in groups if not x.member_counts][0]
    assert even.quotas(3) is None and even.first_within_quotas([2, 0, 1], 2) == [2, 0]


@pytest.mark.parametrize("seed", [0, 1])
def test_the_width_cost_model_is_exact_for_selections_within_quotas(seed):
    model = _net(seed)
    graph, groups, _ = _uneven(model)
    macs, params = MacsModel(model, groups, SHAPE), ParamsModel(model, groups, SHAPE, graph)
    rng = random.Random(seed)
    for _ in range(4):
        widths = [rng.randint(2, g.size) for g in groups]
        kept = {g.name: g.first_within_quotas(rng.sample(range(g.size), g.size), w) for g, w in zip(groups, widths)}
        pruned = remove_channels(model, SHAPE, kept, False, groups)
        assert macs.cost(widths) == count_macs(pruned, SHAPE)
        assert params.cost(widths) == sum(p.numel() for p in pruned.parameters())


@pytest.mark.parametrize("method", ["l1", *(pytest.param(m, marks=pytest.mark.slow) for m in ("gfs", "backward",
                                                                                              "random"))])
def test_every_method_meets_the_budget_on_a_csp_block(method):
    import netsift
    from netsift.data import load_data

    data = load_data("digits", seed=0)
    kw = dict(candidates=4, select_batch=64, holdout=200, finetune_epochs=0, progress=False, latency_threads=None)
    for widths in ("uniform", "learned"):
        r = netsift.prune(_net(), data, method=method, macs=0.3, widths=widths, **kw)
        assert abs(r.macs_fraction - 0.3) <= 0.01 * 0.3, (widths, r.macs_fraction)
        assert r.budget_missed is None


class PassThrough(nn.Module):
    """Inception-ResNet's shape: a stream made of a convolution's channels concatenated with the previous
    stream's (passed through a max-pool), to which a block's 1x1 convolution adds: one group whose branches hold
    different units. Then a transposed convolution (LowFormer's upsampling) reading the stream, whose outputs
    are a group of their own."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(1, 10, 3, padding=1), nn.Conv2d(16, 8, 3)
        self.inner, self.out = nn.Conv2d(24, 8, 3, padding=1), nn.Conv2d(8, 24, 1)
        self.up = nn.ConvTranspose2d(24, 12, 3, stride=2, padding=1, output_padding=1)
        self.tail = nn.Conv2d(12, 12, 3, padding=1)
        self.head = nn.Linear(12, 10)

    def forward(self, x):
        s = torch.cat([self.a(x), self.b(x)], 1)
        s = torch.cat([self.c(s), F.max_pool2d(s, 3, 1)], 1)
        s = s + self.out(torch.relu(self.inner(s)))
        y = torch.relu(self.tail(torch.relu(self.up(s))))
        return self.head(y.mean((2, 3)))


@pytest.mark.parametrize("seed", [0, 1])
def test_a_pass_through_stream_and_a_transposed_convolution_are_counted_exactly(seed):
    torch.manual_seed(seed)
    model = PassThrough().eval()
    graph = build_graph(model, SHAPE)
    groups = find_groups(model, SHAPE, graph)
    names = {g.name: g for g in groups}
    stream = [g for g in groups if "out" in g.members]
    assert least(stream[0], 1) == 3 and least(stream[0], 8) == 8 and least(names["inner"], 1) == 1
    assert len(stream) == 1 and {"a", "b", "c"} <= set(stream[0].member_counts)  # branches hold different units
    assert "up" in names and any(c.name == "up" for c in stream[0].consumers)  # a transposed conv: root and reader
    macs, params = MacsModel(model, groups, SHAPE), ParamsModel(model, groups, SHAPE, graph)
    rng = random.Random(seed)
    for _ in range(4):
        widths = [rng.randint(least(g, 1), g.size) for g in groups]  # an uneven group: one unit of each kind
        kept = {g.name: g.first_within_quotas(rng.sample(range(g.size), g.size), w) for g, w in zip(groups, widths)}
        pruned = remove_channels(model, SHAPE, kept, False, groups)
        assert macs.cost(widths) == count_macs(pruned, SHAPE), (widths, names)
        assert params.cost(widths) == sum(p.numel() for p in pruned.parameters())


class TwoBranchStream(nn.Module):
    """``cat([a(x), b(x)])`` plus a block's output ``out``: ``out``'s channels belong to ``a``'s and to ``b``'s
    group when each branch roots its own group (as Inception-ResNet-v2's branches do in its full graph)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 6, 3, padding=1)
        self.inner, self.out = nn.Conv2d(10, 5, 3, padding=1), nn.Conv2d(5, 10, 1)
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        s = torch.cat([self.a(x), self.b(x)], 1)
        s = s + self.out(torch.relu(self.inner(s)))
        return self.head(s.mean((2, 3)))


def test_a_layer_whose_outputs_are_split_among_groups_is_counted_for_each():
    from netsift.selection.groups import _execution_order, _plain_group
    from netsift.selection.tracing import static_index_mapping

    torch.manual_seed(0)
    model = TwoBranchStream().eval()
    graph, names, modules = build_graph(model, SHAPE), {m: n for n, m in model.named_modules()}, dict(
        model.named_modules())
    order, groups = _execution_order(model, SHAPE), []
    for root in ("a", "b", "inner"):  # each branch its own root, as the big graph's walk order gives
        pruner = graph.get_pruner_of_module(modules[root])
        with static_index_mapping():
            tp_group = graph.get_pruning_group(modules[root], pruner.prune_out_channels,
                                               list(range(pruner.get_out_channels(modules[root]))))
        groups.append(_plain_group(graph, tp_group, names, order, modules, 2))
    assert [g.members for g in groups[:2]] == [["a", "out"], ["b", "out"]]
    macs, params = MacsModel(model, groups, SHAPE), ParamsModel(model, groups, SHAPE, graph)
    for widths in ([2, 3, 4], [4, 1, 2], [1, 6, 5]):
        pruned = remove_channels(model, SHAPE, {g.name: list(range(w)) for g, w in zip(groups, widths)}, False,
                                 groups)
        assert macs.cost(widths) == count_macs(pruned, SHAPE)
        assert params.cost(widths) == sum(p.numel() for p in pruned.parameters())


def test_a_layer_density_narrower_than_the_kinds_of_units_keeps_one_of_each():
    import netsift
    from netsift.data import load_data

    _, groups, gi = _uneven(_net())
    kw = dict(candidates=4, select_batch=64, holdout=200, finetune_epochs=0, progress=False, latency_threads=None)
    r = netsift.prune(_net(), load_data("digits", seed=0), method="l1", macs=0.5,
                      layer_density={groups[gi].name: 0.05}, **kw)  # 0.05 of 16 units: 1, fewer than the 2 kinds
    assert [g["kept"] for g in r.groups if g["group"] == groups[gi].name] == [2]
    assert r.budget_missed is None and abs(r.macs_fraction - 0.5) <= 0.005


def test_backward_with_learned_widths_scores_the_gated_concatenation_on_the_graph_path():
    """Values cached during a first chunk of candidates used to shift the in-place check's positions: a false
    "modifies a cached value in place" sent backward elimination with learned widths to the hook path."""
    import netsift
    from netsift.data import load_data

    data = load_data("digits", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        r = netsift.prune(_net(), data, method="backward", macs=0.3, widths="learned", candidates=4, select_batch=64,
                          holdout=200, finetune_epochs=0, progress=False, latency_threads=None)
    assert abs(r.macs_fraction - 0.3) <= 0.01 * 0.3
