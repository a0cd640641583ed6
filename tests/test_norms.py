"""Norms across channels (LayerNorm, GroupNorm, RMSNorm): the selection scores the network removal gives.

The pruned network's LayerNorm averages over the kept channels only; the masked network the selection scores
must too, on every scoring path, or GFS picks channels for a network nobody gets. Hermetic: random weights.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netsift.selection.groups import find_groups
from netsift.selection.masking import Masker, kept_mask
from netsift.selection.norms import channel_axis, kept_norm
from netsift.selection.removal import removal_error, remove_channels
from netsift.selection.scoring import BatchedScorer

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (3, 12, 12)


class LayerNorm2d(nn.LayerNorm):
    """A channels-first LayerNorm outside ``torch.nn`` (as timm's): ``torch.fx`` traces into it by default."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class Block(nn.Module):
    """ConvNeXt's block: depthwise conv, LayerNorm over channels, an MLP of 1x1 convs, a residual add."""

    def __init__(self, c: int):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = LayerNorm2d(c)
        self.fc1, self.fc2 = nn.Conv2d(c, 2 * c, 1), nn.Conv2d(2 * c, c, 1)

    def forward(self, x):
        return x + self.fc2(F.gelu(self.fc1(self.norm(self.dw(x)))))


class NormNet(nn.Module):
    """Every norm kind: a channels-first LayerNorm subclass, a channels-last ``nn.LayerNorm`` before a Linear,
    a GroupNorm, and an RMSNorm before the classifier."""

    def __init__(self, c: int = 8, classes: int = 5):
        super().__init__()
        self.stem, self.stem_norm = nn.Conv2d(3, c, 3, padding=1), LayerNorm2d(c)
        self.block = Block(c)
        self.conv, self.gn = nn.Conv2d(c, 2 * c, 3, padding=1), nn.GroupNorm(4, 2 * c)
        self.ln, self.proj = nn.LayerNorm(2 * c), nn.Linear(2 * c, c)
        self.rms, self.head = nn.RMSNorm(c), nn.Linear(c, classes)

    def forward(self, x):
        x = self.block(self.stem_norm(self.stem(x)))
        x = F.relu(self.gn(self.conv(x)))
        x = self.proj(self.ln(x.permute(0, 2, 3, 1)))  # channels last: (B, H, W, C)
        return self.head(self.rms(x.mean((1, 2))))


def _net(seed: int = 0) -> NormNet:
    torch.manual_seed(seed)
    model = NormNet().eval()
    with torch.no_grad():  # norms with non-trivial affine parameters
        for m in model.modules():
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)):
                m.weight.uniform_(0.5, 1.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.uniform_(-0.3, 0.3)
    return model


def _half(groups, seed: int = 0) -> dict[str, list[int]]:
    g = torch.Generator().manual_seed(seed)
    return {gr.name: sorted(torch.randperm(gr.size, generator=g)[:max(1, gr.size // 2)].tolist()) for gr in groups}


def test_every_norm_is_found_in_its_group():
    model = _net()
    groups = find_groups(model, SHAPE)
    found = {c.name for g in groups for c in g.norms}
    # the RMSNorm's group is kept whole: Torch-Pruning 1.6 cuts its weight but not its normalized_shape
    assert found == {"stem_norm", "block.norm", "gn", "ln"}
    for g in groups:
        for c in g.norms:
            assert sorted(set(c.root_of.tolist()) - {-1}) == list(range(g.size))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruned_network_computes_what_the_masked_one_scored(seed):
    model = _net(seed)
    groups = find_groups(model, SHAPE)
    kept = _half(groups, seed)
    pruned = remove_channels(model, SHAPE, kept, True, groups)
    x = torch.randn(6, *SHAPE)
    error = removal_error(model, pruned, groups, kept, True, x)
    assert error is not None and error < 1e-5, error
    # without the norms recomputed (masks at the consumers only) the two differ: the test compares something
    blind = [dataclasses.replace(g, norms=[]) for g in groups]
    assert removal_error(model, pruned, blind, kept, True, x) > 1e-3


@pytest.mark.parametrize("mode", ["graph", "hooks"])
def test_candidate_scores_are_the_pruned_networks_losses(mode):
    """GFS's score of "S plus channel j" is the loss of the network with exactly those channels removed."""
    model = _net()
    groups = find_groups(model, SHAPE)
    masker = Masker(model, groups)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(10, *SHAPE, generator=g), torch.randint(0, 5, (10,), generator=g)
    scorer = BatchedScorer(model, masker, max_batch=20, mode=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fall-back from the graph path
        for gi, group in enumerate(groups):
            if not group.norms:
                continue
            s = [0, 2] if group.size > 3 else [0]
            cands = [j for j in range(group.size) if j not in s]
            fast = scorer.score(gi, torch.stack([kept_mask(group.size, s + [j]) for j in cands]), x, y)
            for k, j in enumerate(cands):
                pruned = remove_channels(model, SHAPE, {group.name: s + [j]}, True, groups).eval()
                with torch.no_grad():
                    want = F.cross_entropy(pruned(x), y)
                assert torch.allclose(fast[k], want, rtol=1e-4, atol=1e-5), (group.name, j, fast[k], want)
    assert scorer.stats.path == mode


@pytest.mark.parametrize("kind", ["layernorm", "groupnorm", "rmsnorm"])
def test_kept_norm_equals_the_smaller_norm(kind):
    torch.manual_seed(0)
    c, keep_idx = 8, torch.tensor([0, 2, 5, 7])  # for GroupNorm(2, 8): two kept in each group of four
    norm = {"layernorm": nn.LayerNorm(c), "groupnorm": nn.GroupNorm(2, c), "rmsnorm": nn.RMSNorm(c, eps=1e-6)}[kind]
    small = {"layernorm": nn.LayerNorm(4), "groupnorm": nn.GroupNorm(2, 4), "rmsnorm": nn.RMSNorm(4, eps=1e-6)}[kind]
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        small.weight.copy_(norm.weight[keep_idx])
        if getattr(norm, "bias", None) is not None:
            norm.bias.uniform_(-1, 1)
            small.bias.copy_(norm.bias[keep_idx])
    x = torch.randn(3, c, 4, 4) if kind == "groupnorm" else torch.randn(3, 5, c)
    axis = 1 if kind == "groupnorm" else 2
    assert channel_axis(norm, x, norm(x)) == axis
    keep = torch.zeros(c)
    keep[keep_idx] = 1
    got = kept_norm(norm, x, keep, axis).index_select(axis, keep_idx)
    want = small(x.index_select(axis, keep_idx))
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # a (K, C) stack: block k of the rows normalised with row k (a greedy step's candidates)
    stack = torch.stack([keep, torch.ones(c)])
    both = kept_norm(norm, torch.cat([x, x]), stack, axis)
    assert torch.allclose(both[:3], kept_norm(norm, x, keep, axis), atol=1e-6)
    assert torch.allclose(both[3:], norm(x), atol=1e-5)


def test_channel_axis_tells_channels_first_from_channels_last_when_sizes_agree():
    torch.manual_seed(0)
    first, last = LayerNorm2d(6), nn.LayerNorm(6)
    x = torch.randn(2, 6, 3, 6)  # axis 1 and the last axis both have 6 entries
    assert channel_axis(first, x, first(x)) == 1
    assert channel_axis(last, x, last(x)) == 3
    assert channel_axis(nn.LayerNorm((3, 6)), x, x) is None  # over two axes: not one netsift recomputes
