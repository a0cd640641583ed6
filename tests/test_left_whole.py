"""Channel groups kept whole are listed with the reason; a concatenation read by a grouped convolution is pruned
(its branches merged into one group whose units keep the grouped convolution's channel groups equal)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import netsift
from netsift.selection.groups import LeftWhole, find_groups
from netsift.selection.removal import remove_channels
from netsift.selection.scoring import Masker
from usernets import UserCNN

pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (1, 8, 8)


def _random_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def test_concat_read_by_grouped_conv_is_one_merged_group():
    torch.manual_seed(0)
    model = _random_bn(UserCNN())
    skipped: list = []
    groups = find_groups(model, SHAPE, skipped=skipped)
    assert skipped == []  # nothing left whole, in silence or not
    merged = next(g for g in groups if g.parts)
    assert {p.name for p in merged.parts} == {"inc.b1.0", "inc.b2.0"}
    assert merged.size == 8 and merged.unit == 4  # 32 channels = 8 positions x 4 channel groups of res.conv1
    # every unit holds one channel of each channel group of the grouped convolution
    consumer = next(c for c in merged.consumers if c.name == "res.conv1")
    for u in range(merged.size):
        at = (consumer.root_of == u).nonzero().flatten()
        assert sorted((at // 8).tolist()) == [0, 1, 2, 3] and len(set((at % 8).tolist())) == 1


def test_merged_group_prunes_to_what_the_masked_network_computes():
    torch.manual_seed(1)
    model = _random_bn(UserCNN())
    groups = find_groups(model, SHAPE)
    g = torch.Generator().manual_seed(0)
    kept = {gr.name: sorted(torch.randperm(gr.size, generator=g)[:max(1, gr.size // 2)].tolist()) for gr in groups}
    masker = Masker(model, groups)
    for gi, gr in enumerate(groups):
        masker.set_kept(gi, kept[gr.name])
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        want = model(x)
    masker.remove()
    pruned = remove_channels(model, SHAPE, kept).eval()
    with torch.no_grad():
        assert torch.allclose(pruned(x), want, atol=1e-5)
    assert pruned.res.conv1.in_channels == 16 and pruned.res.conv1.groups == 4
    assert pruned.inc.b1[0].out_channels + pruned.inc.b2[0].out_channels == 16


@pytest.mark.parametrize("method", ["l1", "taylor", "bn-scale", "random", "gfs"])
@pytest.mark.slow
def test_every_method_prunes_the_users_cnn(method, tmp_path):
    torch.manual_seed(0)
    x, y = torch.rand(96, *SHAPE), torch.randint(0, 10, (96,))
    data = {"train": torch.utils.data.TensorDataset(x[:64], y[:64]),
            "test": torch.utils.data.TensorDataset(x[64:], y[64:])}
    r = netsift.prune(UserCNN(), data, method=method, macs=0.5, finetune_epochs=0, candidates=3,
                      select_batch=16, holdout=16, out=tmp_path / method, progress=False)
    saved = json.loads((tmp_path / method / "result.json").read_text())
    assert saved["groups_skipped"] == [] and r.groups_skipped == []
    assert abs(r.macs_fraction - 0.5) < 0.05
    assert {g["group"] for g in saved["groups"]} >= {"inc.b1.0"}


class _Wholes(nn.Module):
    """A 1-channel conv, a layer the user keeps, a conv coupled to the logits conv, a grouped conv that also reads
    the network's input (cannot be merged)."""

    def __init__(self):
        super().__init__()
        self.one = nn.Conv2d(1, 1, 3, padding=1)
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.kept = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 3, 1)
        self.grouped = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.mid = nn.Conv2d(8, 8, 1)
        self.side = nn.Conv2d(8, 10, 1)  # added to the logits: its channels are the classes
        self.logits = nn.Conv2d(8, 10, 1)

    def forward(self, x):
        h = torch.relu(self.kept(torch.relu(self.a(x + self.one(x)))))
        g = self.grouped(torch.cat([self.b(h), x], 1))
        return (self.logits(torch.relu(self.mid(g))) + self.side(g)).mean((2, 3))


def test_every_group_kept_whole_is_listed_with_its_reason(capsys, monkeypatch):
    model = _Wholes().eval()
    skipped: list[LeftWhole] = []
    groups = find_groups(model, SHAPE, skipped=skipped, ignored_layers=[model.kept])
    reasons = {s.layers[0]: s.reason for s in skipped}
    assert reasons["one"] == "it has a single channel"
    assert reasons["kept"] == "it is in ignored_layers"
    assert "grouped layer grouped also reads channels that cannot be pruned" in reasons["b"]
    assert reasons["side"] == "its channels are coupled to the logits layer logits"
    assert "logits" not in reasons  # the logits layer itself is not a channel group
    assert {g.name for g in groups} == {"a", "grouped", "mid"}
    assert all(isinstance(s.channels, int) and s.as_dict()["layers"] for s in skipped)
    # the progress output lists them too
    from netsift.selection import PruneConfig
    from netsift.selection.pruner import plan_channels

    monkeypatch.setenv("NETSIFT_PROGRESS", "lines")
    plan = plan_channels(model, SHAPE, PruneConfig(method="l1", macs=0.8).resolved(False), ignored_layers=["kept"])
    err = capsys.readouterr().err
    assert [s.as_dict() for s in plan.skipped] == [s.as_dict() for s in skipped]
    for s in skipped:
        assert f"channel group kept whole: {s.line()}" in err


def test_a_class_token_view_of_a_parameter_is_counted_and_pruned():
    """timm's CaiT failed with "Expected gradient function to be set" while its MACs were counted; the same
    pattern in a small module, counted and pruned, its parameters' requires_grad untouched."""
    import netsift
    from usernets import TokenNet

    from netsift.measure import count_macs

    model = TokenNet()
    assert count_macs(model, (1, 8, 8)) > 0 and all(p.requires_grad for p in model.parameters())
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    data = {"train": torch.utils.data.TensorDataset(x, torch.arange(64) % 10),
            "test": torch.utils.data.TensorDataset(x[:16], torch.arange(16) % 10)}
    r = netsift.prune(model, data, method="l1", macs=0.6, finetune_epochs=0, progress=False)
    assert abs(r.macs_fraction - 0.6) < 0.02 and all(p.requires_grad for p in model.parameters())
