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
