"""Fast candidate scoring (``BatchedScorer``): exactly the plain one-forward-per-candidate losses, on every path.

Hermetic: random weights, random images, batch norms calibrated on random images (so the networks' outputs
depend on their inputs and candidates are not tied).
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netsift.models import build_model
from netsift.selection import backward, gfs
from netsift.selection.base import SelectionContext
from netsift.selection.graph_scorer import GraphScorer
from netsift.selection.groups import ChannelGroup, Consumer, build_graph, find_groups
from netsift.selection.masking import Masker, candidate_masks, kept_mask
from netsift.selection.reference import reference_scores
from netsift.selection.scoring import BatchedScorer
from netsift.selection.scoring_stats import layer_macs

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 16, 16)


def _model(name: str, width: float = 0.25, seed: int = 0, shape=SHAPE) -> nn.Module:
    """A zoo network with trained-looking batch norms: statistics of random images, random affine parameters."""
    torch.manual_seed(seed)
    model = build_model(name, shape[0], shape[1], 10, width)
    g = torch.Generator().manual_seed(seed + 100)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.2, 0.2, generator=g)
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(64, *shape, generator=g))
    return model.eval()


def _data(n: int = 16, shape=SHAPE, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def _close(fast, slow):
    return torch.allclose(fast, slow, rtol=2e-5, atol=2e-5)


# ------------------------------------------------------------------------------- scores equal the reference


@pytest.mark.parametrize("mode", ["graph", "hooks"])
@pytest.mark.parametrize("bn_batch_stats", [False, True])
@pytest.mark.parametrize("name", ["resnet20", "vgg11", "mobilenetv2", "conv2", "lenet300"])
@pytest.mark.slow
def test_scores_equal_reference(name, bn_batch_stats, mode):
    """GFS-, backward- and with-replacement-style masks, other groups masked, several chunks per call."""
    model = _model(name)
    groups = find_groups(model, SHAPE)
    masker = Masker(model, groups)
    for gi in range(0, len(groups), 2):
        masker.set_kept(gi, list(range(0, groups[gi].size, 3)))
    x, y = _data()
    scorer = BatchedScorer(model, masker, max_batch=32, bn_batch_stats=bn_batch_stats, mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fall-back from the graph path
        for gi in range(0, len(groups), max(1, len(groups) // 8)):  # at most ~8 groups (MobileNetV2 has 25)
            n = groups[gi].size
            s = [0, 1] if n > 3 else [0]
            rest = [j for j in range(n) if j not in s][:7]
            masks = torch.stack([kept_mask(n, s + [j]) for j in rest]  # forward: S ∪ {j}
                                + [kept_mask(n, [i for i in range(n) if i != j]) for j in rest[:3]]  # backward
                                + [kept_mask(n, s + [s[0]])])  # with replacement: a repeat
            fast = scorer.score(gi, masks, x, y)
            slow = reference_scores(model, masker, gi, masks, x, y, bn_batch_stats=bn_batch_stats)
            assert _close(fast, slow), (gi, (fast - slow).abs().max())
    assert scorer.stats.path == mode
    assert scorer.stats.candidates == sum(s.candidates for s in scorer.group_stats.values())


def test_single_candidate_and_empty_shared_part():
    model = _model("vgg11")
    groups = find_groups(model, SHAPE)
    masker = Masker(model, groups)
    x, y = _data()
    scorer = BatchedScorer(model, masker, mode="graph")
    for gi in (0, 3):
        n = groups[gi].size
        for masks in (kept_mask(n, [2]).unsqueeze(0), torch.stack([kept_mask(n, [j]) for j in range(4)])):
            assert _close(scorer.score(gi, masks, x, y), reference_scores(model, masker, gi, masks, x, y))


# ---------------------------------------------------------------- GFS selects what it selected before the change

# GFS on the networks of _model at width 0.25 (16×16 inputs), 4 greedy steps per group, 8 candidates per step,
# 32-image minibatches from Generator(1), selection seed 0: the channels the scorer picked before this change
# (hook path, one plain suffix per candidate). They also equal what reference_scores-driven selection picks.
BEFORE = {
    "resnet20/running": [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [1, 3, 4, 6], [0, 4, 6, 7],
                         [0, 2, 4, 7], [1, 2, 3, 5], [0, 1, 6, 13], [0, 2, 7, 9], [5, 12, 14, 15], [2, 3, 4, 11]],
    "resnet20/bnstats": [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [2, 3, 4, 6], [0, 2, 3, 7],
                         [0, 3, 4, 5], [0, 5, 6, 7], [0, 4, 11, 12], [3, 8, 10, 15], [1, 2, 12, 15], [2, 3, 12, 15]],
    "vgg11/running": [[2, 3, 8, 9], [11, 14, 25, 28], [9, 22, 46, 53], [6, 25, 44, 59], [50, 60, 65, 102],
                      [22, 76, 99, 125], [37, 51, 57, 72], [33, 70, 93, 124]],
    "vgg11/bnstats": [[4, 5, 8, 13], [7, 18, 27, 30], [3, 4, 54, 58], [6, 29, 31, 50], [43, 70, 73, 102],
                      [65, 80, 81, 85], [24, 48, 83, 111], [30, 82, 105, 116]],
    "mobilenetv2/running": [[1, 3, 6, 7], [0, 1, 2, 3], [6, 11, 13, 21], [0, 1, 3, 5], [1, 8, 29, 32],
                            [13, 16, 17, 24], [2, 5, 6, 7], [11, 16, 37, 47], [0, 9, 11, 37], [5, 11, 30, 34],
                            [1, 6, 9, 12], [8, 30, 45, 85], [41, 71, 73, 89], [10, 15, 62, 77], [9, 13, 17, 25],
                            [14, 16, 17, 20], [18, 55, 112, 143], [55, 77, 97, 108], [30, 50, 76, 135],
                            [14, 23, 27, 31], [51, 71, 108, 227], [19, 58, 146, 209], [47, 60, 78, 169],
                            [26, 30, 42, 73], [15, 18, 737, 1004]],
    "mobilenetv2/bnstats": [[1, 3, 4, 7], [0, 1, 2, 3], [13, 14, 16, 21], [0, 1, 3, 5], [12, 21, 22, 25],
                            [4, 26, 28, 29], [1, 3, 5, 6], [16, 20, 21, 38], [0, 10, 36, 45], [0, 33, 34, 44],
                            [2, 6, 8, 14], [14, 48, 51, 67], [9, 19, 62, 65], [34, 38, 77, 94], [11, 48, 82, 95],
                            [7, 8, 14, 18], [54, 112, 125, 139], [23, 46, 66, 74], [0, 8, 97, 139], [0, 2, 20, 27],
                            [17, 19, 129, 229], [19, 49, 58, 72], [111, 150, 159, 160], [3, 30, 46, 55],
                            [15, 27, 317, 900]],
}


def _select(name: str, bn_batch_stats: bool, steps: int = 4, candidates: int = 8, method=gfs.select,
            widths=None):
    model = _model(name)
    graph = build_graph(model, SHAPE)
    groups = find_groups(model, SHAPE, graph)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, *SHAPE, generator=g), torch.randint(0, 10, (32,), generator=g))
               for _ in range(steps * len(groups) + 1)]
    it = itertools.cycle(batches)
    widths = widths(groups) if widths else [min(steps, gr.size) for gr in groups]
    ctx = SelectionContext(model, groups, graph, SHAPE, lambda: next(it), batches[0],
                           widths=widths, candidates=candidates, seed=0,
                           progress=False, max_batch=64, bn_batch_stats=bn_batch_stats)
    sel = method(ctx)
    return [sel.kept[gr.name] for gr in groups], ctx.scorer


@pytest.mark.parametrize("bn", ["running", "bnstats"])
@pytest.mark.parametrize("name", ["resnet20", "vgg11", "mobilenetv2"])
@pytest.mark.slow
def test_gfs_selects_the_same_channels_as_before(name, bn):
    kept, scorer = _select(name, bn == "bnstats")
    assert scorer.stats.path == "graph"
    assert kept == BEFORE[f"{name}/{bn}"]


@pytest.mark.slow
def test_backward_elimination_selects_what_reference_scoring_selects():
    class Ref:
        def __init__(self, ctx):
            self.ctx = ctx

        def score(self, gi, masks, x, y):
            return reference_scores(self.ctx.model, self.ctx.masker, gi, masks, x, y)

    def with_reference(ctx):
        ctx.scorer = Ref(ctx)
        return backward.select(ctx)

    def widths(groups):
        return [gr.size - 3 for gr in groups]  # three eliminations per group

    fast, _ = _select("vgg11", False, method=backward.select, widths=widths)
    slow, _ = _select("vgg11", False, method=with_reference, widths=widths)
    assert fast == slow


# ------------------------------------------------------------------------------------------ counting the work


def test_stats_count_the_macs_executed():
    """On a plain chain: the suffix MACs are the layers from the first consumer on, once per candidate, less what
    the first consumer's shared product saves; the prefix runs once per call."""
    model = _model("vgg11")
    groups = find_groups(model, SHAPE)
    masker = Masker(model, groups)
    x, y = _data()
    per_layer = []
    hooks = [m.register_forward_hook(lambda mod, i, o: per_layer.append((mod, layer_macs(mod, o))))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    gi = 2
    first = [i for i, (mod, _) in enumerate(per_layer) if mod is groups[gi].consumers[0].module][0]
    consumer = per_layer[first][1]
    rest = sum(m for _, m in per_layer[first + 1:])
    prefix = sum(m for _, m in per_layer[:first])
    n = groups[gi].size
    k = 10
    masks = torch.stack([kept_mask(n, [0, 1, j]) for j in range(2, 2 + k)])
    scorer = BatchedScorer(model, masker, mode="graph")
    scorer.score(gi, masks, x, y)
    st = scorer.stats
    assert st.prefix_macs == prefix
    assert st.plain_suffix_macs == k * (consumer + rest)
    assert st.shared_macs == consumer
    assert st.candidate_macs == k * (rest + consumer // groups[gi].consumers[0].module.in_channels)
    assert st.suffix_macs == st.shared_macs + st.candidate_macs < st.plain_suffix_macs
    assert st.check_macs == prefix + consumer + rest  # the one-off check of the group's first call
    scorer.score(gi, masks, x, y)
    assert scorer.stats.check_macs == st.check_macs and scorer.stats.calls == 2
    hooks = BatchedScorer(model, masker, mode="hooks")
    hooks.score(gi, masks, x, y)
    assert hooks.stats.prefix_macs == prefix and hooks.stats.shared_macs == 0
    assert hooks.stats.candidate_macs == hooks.stats.plain_suffix_macs == k * (consumer + rest)


# --------------------------------------------------------------------------------- fall-backs stay exact


class _Untraceable(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.a(x)))
        if h.sum() > -1e9:
            h = self.b(h)
        return self.fc(h.mean((2, 3)))


class _Mixing(nn.Module):
    """A grouped consumer (no per-channel shortcut), an in-place op on a candidate-dependent value, a
    concatenation of a masked and an unmasked path (no broadcast: expanded copies), a residual add (broadcast);
    ``inplace_independent``: an in-place add onto a candidate-independent value (the graph path declines)."""

    def __init__(self, inplace_independent: bool = False):
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 3)
        self.inplace_independent = inplace_independent

    def forward(self, x):
        h = torch.relu(self.a(x))
        g = self.b(h)
        g.relu_()
        u = torch.cat([g, h], 1)
        if self.inplace_independent:
            v = h * 1.0
            v.add_(self.c(u))
        else:
            v = h + self.c(u)
        return self.fc(v.mean((2, 3)))


def _hand_groups(model: nn.Module, spec) -> list[ChannelGroup]:
    names = {m: n for n, m in model.named_modules()}
    groups = []
    for root, size, consumers in spec:
        cons = []
        for mod, root_of in consumers:
            cons.append(Consumer(names[mod], mod, torch.tensor(root_of)))
        groups.append(ChannelGroup(names[root], root, size, cons))
    return groups


@pytest.mark.parametrize("bn_batch_stats", [False, True])
def test_untraceable_model_falls_back_to_hooks(bn_batch_stats):
    torch.manual_seed(0)
    model = _Untraceable().eval()
    groups = _hand_groups(model, [(model.a, 6, [(model.b, list(range(6)))])])
    masker = Masker(model, groups)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    scorer = BatchedScorer(model, masker, max_batch=16, bn_batch_stats=bn_batch_stats)
    masks = torch.stack([kept_mask(6, [0, j]) for j in range(1, 6)])
    with pytest.warns(UserWarning, match="cannot trace"):
        fast = scorer.score(0, masks, x, y)
    assert scorer.stats.path == "hooks"
    assert _close(fast, reference_scores(model, masker, 0, masks, x, y, bn_batch_stats))


def test_mixed_paths_grouped_consumer_and_in_place_ops_stay_exact():
    torch.manual_seed(0)
    model = _Mixing().eval()
    # group 0: a's channels, read by b (grouped) and c (through the concatenation: inputs 8..15)
    groups = _hand_groups(model, [(model.a, 8, [(model.b, list(range(8))), (model.c, [-1] * 8 + list(range(8)))])])
    masker = Masker(model, groups)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    masks = torch.stack([kept_mask(8, [0, 3, j]) for j in (1, 2, 4, 5, 6, 7)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for max_batch in (8, 16, 1000):  # one candidate per chunk, two, all
            scorer = BatchedScorer(model, masker, max_batch=max_batch, mode="graph")
            fast = scorer.score(0, masks, x, y)
            assert _close(fast, reference_scores(model, masker, 0, masks, x, y)), max_batch
            assert torch.equal(fast, scorer.score(0, masks, x, y))  # nothing cached was modified
    assert scorer.stats.shared_macs == 0  # grouped consumer: plain masked products

    model.inplace_independent = True
    masker.remove()
    masker = Masker(model, groups)
    scorer = BatchedScorer(model, masker, max_batch=16)
    with pytest.warns(UserWarning, match="in place"):
        fast = scorer.score(0, masks, x, y)
    assert scorer.stats.path == "hooks"
    assert _close(fast, reference_scores(model, masker, 0, masks, x, y))


def test_graph_scoring_that_disagrees_with_plain_passes_falls_back(monkeypatch):
    model = _model("conv2")
    groups = find_groups(model, SHAPE)
    masker = Masker(model, groups)
    x, y = _data()
    scorer = BatchedScorer(model, masker)
    monkeypatch.setattr(GraphScorer, "score", lambda self, plan, gi, masks, *a: torch.zeros(masks.shape[0]))
    masks = torch.stack([kept_mask(groups[0].size, [0, j]) for j in range(1, 6)])
    with pytest.warns(UserWarning, match="differ from plain forward passes"):
        fast = scorer.score(0, masks, x, y)
    assert _close(fast, reference_scores(model, masker, 0, masks, x, y))
    assert scorer.stats.path == "hooks"


class _HiddenInPlace(nn.Module):
    """Writes a candidate-dependent sum into a candidate-independent tensor through ``out=`` (not visible as an
    in-place op in the traced graph)."""

    def __init__(self):
        super().__init__()
        self.a, self.c, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        s = torch.add(h, self.c(h), out=h)
        return self.fc(s.mean((2, 3)))


def test_in_place_change_of_a_cached_value_is_caught():
    torch.manual_seed(0)
    model = _HiddenInPlace().eval()
    groups = _hand_groups(model, [(model.a, 8, [(model.c, list(range(8)))])])
    masker = Masker(model, groups)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    masks = torch.stack([kept_mask(8, [0, 3, j]) for j in (1, 2, 4, 5, 6, 7)])
    scorer = BatchedScorer(model, masker, max_batch=16)
    with pytest.warns(UserWarning, match="in place"):
        fast = scorer.score(0, masks, x, y)
    assert scorer.stats.path == "hooks"
    assert _close(fast, reference_scores(model, masker, 0, masks, x, y))


def test_candidate_masks_equal_kept_masks_bit_for_bit():
    for size, kept, cands in [(10, [1, 4, 7], [0, 2, 9]), (7, [], [3, 5]), (6, [2, 2, 5], [2, 0])]:
        want = torch.stack([kept_mask(size, kept + [j]) for j in cands])
        assert torch.equal(candidate_masks(size, kept, add=cands), want)
    current = [0, 2, 3, 5, 8]
    want = torch.stack([kept_mask(9, [i for i in current if i != j]) for j in (2, 8)])
    assert torch.equal(candidate_masks(9, current, drop=[2, 8]), want)
    assert torch.equal(candidate_masks(9, current, drop=[2], rescale=False),
                       kept_mask(9, [0, 3, 5, 8], rescale=False).unsqueeze(0))


# ------------------------------------------------------------------ a step's prefix computed by another process


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "mobilenetv2", "lenet300"])
@pytest.mark.slow
def test_prefix_values_computed_elsewhere_give_the_same_scores(name, monkeypatch):
    """Scores from received prefix values (another scorer, as in another process) equal the local ones bit for
    bit; the receiving call computes no prefix MACs; the values are only what the suffix reads."""
    monkeypatch.setenv("NETSIFT_SHARE_PREFIX", "always")
    model = _model(name)
    groups = find_groups(model, SHAPE)
    masker = Masker(model, groups)
    for gi in range(0, len(groups), 2):
        masker.set_kept(gi, list(range(0, groups[gi].size, 3)))
    x, y = _data(24)
    here = BatchedScorer(model, masker, max_batch=32, bn_batch_stats=True, mode="graph")
    there = BatchedScorer(model, masker, max_batch=32, bn_batch_stats=True, mode="graph")
    for gi in range(0, len(groups), max(1, len(groups) // 6)):
        n = groups[gi].size
        masks = torch.stack([kept_mask(n, [0, j]) for j in range(1, min(n, 6))])
        assert there.shares_prefix(gi, x) and here.shares_prefix(gi, x)
        sent = there.prefix_values(gi, x)
        blank = here.prefix_values(gi, x, compute=False)
        assert [(v.shape, v.dtype) for v in blank] == [(v.shape, v.dtype) for v in sent] and len(sent) >= 1
        received = [b.copy_(v) for b, v in zip(blank, sent)]  # what the collective does
        before = here.stats.prefix_macs
        fast = here.score(gi, masks, x, y, prefix=received)
        assert here.stats.prefix_macs == before  # nothing of the prefix computed here
        assert torch.equal(fast, here.score(gi, masks, x, y))
        assert torch.equal(fast, there.score(gi, masks, x, y))


def test_prefix_sharing_policy(monkeypatch):
    """auto shares only prefixes that cost more than sending them; never never; a bad value is one clear error."""
    from netsift.errors import NetsiftError
    from netsift.selection import scoring

    model = _model("vgg11")
    groups = find_groups(model, SHAPE)
    x, _ = _data(64)
    decisions = {}
    for policy in ("auto", "never", "always"):
        monkeypatch.setenv("NETSIFT_SHARE_PREFIX", policy)
        scorer = BatchedScorer(model, Masker(model, groups), mode="graph")
        decisions[policy] = [scorer.shares_prefix(gi, x) for gi in range(len(groups))]
    assert decisions["always"] == [True] * len(groups) and decisions["never"] == [False] * len(groups)
    monkeypatch.setenv("NETSIFT_SHARE_PREFIX", "auto")
    monkeypatch.setattr(scoring, "SEND_MIN_MACS", 0)
    scorer = BatchedScorer(model, Masker(model, groups), mode="graph")
    auto = [scorer.shares_prefix(gi, x) for gi in range(len(groups))]
    # the first group's prefix is one convolution whose output is sent: not worth it; deep groups are
    assert auto[0] is False and auto[-1] is True
    monkeypatch.setenv("NETSIFT_SHARE_PREFIX", "sometimes")
    with pytest.raises(NetsiftError, match="NETSIFT_SHARE_PREFIX must be auto, always or never"):
        BatchedScorer(model, Masker(model, groups), mode="graph").shares_prefix(0, x)
    hooks = BatchedScorer(model, Masker(model, groups), mode="hooks")
    monkeypatch.setenv("NETSIFT_SHARE_PREFIX", "always")
    assert not hooks.shares_prefix(1, x)  # the hook path computes its own prefix


# ------------------------------------------------------------------- each part of the engine on its own


class _Chain(nn.Module):
    """conv a -> BN -> ReLU -> conv b (a's channels: the group) -> residual add of a's output -> head."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.a(x)))
        return self.fc((self.b(h) + h).mean((2, 3)))


def _chain():
    torch.manual_seed(0)
    model = _Chain().eval()
    groups = _hand_groups(model, [(model.bn, 6, [(model.b, list(range(6)))])])
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    return model, groups, x, y


def test_masker_scales_the_consumers_inputs_and_trial_masks_blocks():
    """masking: a fixed mask equals zeroing the consumer's input channels by hand; a (K, N) trial applies the
    k-th mask to the k-th block of a stacked batch."""
    model, groups, x, y = _chain()
    masker = Masker(model, groups)
    kept = [1, 4]
    masker.set_kept(0, kept)
    with torch.no_grad():
        got = model(x)
    masker.remove()
    scale = kept_mask(6, kept).view(1, -1, 1, 1)  # N/n on the kept channels, 0 elsewhere
    with torch.no_grad():
        h = torch.relu(model.bn(model.a(x)))
        want = model.fc((model.b(h * scale) + h).mean((2, 3)))
    assert torch.allclose(got, want, atol=1e-6)
    masker = Masker(model, groups)
    masks = candidate_masks(6, [1], add=[0, 3])
    with torch.no_grad(), masker.trial(0, masks):
        stacked = model(torch.cat([x, x]))
    for k in range(2):
        masker.set(0, masks[k])
        with torch.no_grad():
            assert torch.allclose(stacked[8 * k:8 * (k + 1)], model(x), atol=1e-6)
    masker.remove()


def test_bn_blocks_normalise_each_block_with_its_own_statistics():
    """bn_stats: each stacked block normalised as a training-mode batch norm of that block alone would."""
    from netsift.selection.bn_stats import batch_norm_stats, bn_blocks

    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5).eval()
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(3 * 4, 5, 6, 6) * 3 + 1
    got = bn_blocks(bn, x.clone(), 3)
    for k in range(3):
        part = x[4 * k:4 * (k + 1)]
        want = F.batch_norm(part, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
        assert torch.allclose(got[4 * k:4 * (k + 1)], want, atol=1e-5)
    model = nn.Sequential(bn)
    with torch.no_grad(), batch_norm_stats(model, 3):
        assert torch.allclose(model(x), got, atol=1e-6)
    assert "forward" not in bn.__dict__  # restored
    assert bn.running_mean.abs().max() == 0  # the running statistics are not touched


def test_reference_scores_and_masked_accuracy_are_plain_forward_passes():
    """reference: one forward pass per mask; accuracy with the masks as set."""
    from netsift.selection.reference import masked_accuracy

    model, groups, x, y = _chain()
    masker = Masker(model, groups)
    masks = candidate_masks(6, [2], add=[0, 5])
    scores = reference_scores(model, masker, 0, masks, x, y)
    for k in range(2):
        masker.set(0, masks[k])
        with torch.no_grad():
            assert torch.equal(scores[k], F.cross_entropy(model(x), y))
    masker.set_kept(0, [0, 1])
    with torch.no_grad():
        want = (model(x).argmax(1) == y).float().mean().item()
    assert masked_accuracy(model, x, y, batch_size=3) == pytest.approx(want)
    assert masker.masks[0] is not None and not model.training


def test_scoring_stats_add_up_and_read_out():
    """scoring_stats: MACs of a layer call, sums of stats and the derived totals."""
    from netsift.selection.scoring_stats import ScoringStats, layer_macs_grouped

    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    out = conv(torch.randn(2, 4, 5, 5))
    assert layer_macs(conv, out) == out.numel() * 2 * 9 == layer_macs_grouped(out, 2, conv)
    assert layer_macs(nn.Linear(7, 3), torch.zeros(2, 3)) == 2 * 3 * 7 and layer_macs(nn.ReLU(), out) == 0
    a = ScoringStats(calls=1, candidates=4, prefix_macs=10, shared_macs=3, candidate_macs=20, check_macs=5,
                     path="graph")
    a.add(ScoringStats(calls=2, candidates=6, candidate_macs=7, path="hooks"))
    a.add(ScoringStats(calls=1, path="graph"))
    assert (a.calls, a.candidates, a.suffix_macs, a.total_macs, a.path) == (4, 10, 30, 45, "graph+hooks")
    assert a.as_dict()["suffix_macs"] == 30 and a.as_dict()["total_macs"] == 45


def test_graph_plan_splits_prefix_suffix_and_frontier():
    """graph_plan: the suffix is the consumer and what follows; the prefix only what the suffix reads."""
    from torch import fx

    from netsift.selection.graph_plan import make_plan, node_info, size_plan

    model, groups, x, _ = _chain()
    graph = fx.Tracer().trace(model)
    reason, plan = make_plan(graph, model, groups[0])
    assert reason == "" and plan is not None
    names = lambda nodes: sorted(n.name for n in nodes)  # noqa: E731
    assert names(plan.consumers) == ["b"] and names(plan.direct) == ["b"]
    assert names(plan.frontier) == ["relu"]  # read by b and by the residual add
    assert [n.name for n in plan.prefix] == ["x", "a", "bn", "relu"]
    assert [n.name for n in plan.suffix][:2] == ["b", "add"] and plan.output_depends
    assert names(plan.broadcast) == ["add"]  # a stacked value plus a candidate-independent one
    size_plan(plan, node_info(graph, model, plan.modules, plan.input, x[:1]))
    assert plan.prefix_macs == 6 * 36 * 9 and plan.shared_numel == 6 * 36 and names(plan.shared) == ["relu"]
    model.b.inplace = True  # a module that says it works in place on a candidate-independent input
    assert "in place" in make_plan(graph, model, groups[0])[0]


def test_graph_direct_equals_the_masked_layer():
    """graph_direct: the shared product once plus each candidate's channels equals the masked convolution."""
    from netsift.selection.graph_direct import prepare_direct, run_direct
    from netsift.selection.scoring_stats import ScoringStats

    model, groups, x, _ = _chain()
    masker = Masker(model, groups)
    h = torch.relu(model.bn(model.a(x))).detach()
    for masks in (candidate_masks(6, [0, 2], add=[1, 3, 4, 5]), candidate_masks(6, [0, 1, 2, 3], drop=[0, 3])):
        st = ScoringStats()
        with torch.no_grad():
            d = prepare_direct(masker, 0, model.b, h, masks, st)
            got = run_direct(d, model.b, 1, len(masks) - 1, st)  # the candidates after the first
            want = torch.cat([model.b(h * m.view(1, -1, 1, 1)) for m in masks[1:]])
        assert d.base is not None and st.shared_macs > 0
        assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("path", ["graph", "hooks"])
def test_graph_and_hook_scorers_equal_the_reference_on_their_own(path):
    """graph_scorer and hook_scorer, called directly (no fall-back, no check)."""
    from netsift.selection.graph_scorer import GraphScorer
    from netsift.selection.hook_scorer import HookScorer
    from netsift.selection.scoring_stats import ScoringStats

    model, groups, x, y = _chain()
    masker = Masker(model, groups)
    masks = candidate_masks(6, [0, 2], add=[1, 3, 4, 5])
    want = reference_scores(model, masker, 0, masks, x, y, bn_batch_stats=True)
    st = ScoringStats()
    if path == "graph":
        scorer = GraphScorer(model, masker, bn_batch_stats=True)
        plan = scorer.plan(0, x, strict=True)
        got = scorer.score(plan, 0, masks, x, y, st, max_batch=16)  # two candidates per pass
    else:
        got = HookScorer(model, masker, bn_batch_stats=True).score(0, masks, x, y, st, max_batch=16)
    assert _close(got, want), (got - want).abs().max()
    assert st.candidate_macs > 0 and st.prefix_macs > 0


# ----------------------------------------------------------------------------- the greedy loop and its steps


def test_steps_draw_no_more_than_the_group_takes_and_the_loop_records_losses():
    """steps: one minibatch per step, ``left`` asked before each; greedy: the shared loop keeps each step's
    loss, and another stop rule plugs in."""
    from netsift.selection.greedy import WidthStop, greedy_groups
    from netsift.selection.steps import StepStream

    drawn = []

    def next_batch():
        drawn.append(len(drawn))
        return torch.full((2, 1), float(len(drawn))), torch.zeros(2, dtype=torch.long)

    stream = StepStream(next_batch, lambda: None)
    left = iter([3, 2, 1, 0])
    steps = list(stream.steps(0, lambda: next(left)))
    assert [(s.x[0, 0].item(), s.left, s.prefix) for s in steps] == [(1.0, 2, None), (2.0, 1, None), (3.0, 0, None)]
    stream.check_drained(0)

    model = _model("vgg11")
    graph = build_graph(model, SHAPE)
    groups = find_groups(model, SHAPE, graph)
    x, y = _data()
    ctx = SelectionContext(model, groups, graph, SHAPE, lambda: (x, y), (x, y), widths=[3] * len(groups),
                           candidates=4, progress=False)
    sel = gfs.select(ctx)
    assert all(len(k) == 3 for k in sel.kept.values())
    assert [len(ctx.step_losses[gi]) for gi in range(len(groups))] == [3] * len(groups)
    assert sel.info[-1]["final_loss"] == ctx.step_losses[len(groups) - 1][-1]
    ctx.masker.remove()

    ctx = SelectionContext(model, groups, graph, SHAPE, lambda: (x, y), (x, y), widths=[3] * len(groups),
                           candidates=4, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        sel = greedy_groups(ctx, gfs.Forward, stop=lambda ctx, gi: WidthStop(1 + gi % 2))  # widths 1, 2, 1, ...
    ctx.masker.remove()
    assert [len(sel.kept[g.name]) for g in groups] == [1 + gi % 2 for gi in range(len(groups))]
