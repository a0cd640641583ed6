"""``netsift report``: series keyed by architecture (structure hash), replicates labelled as such, and the channel
groups a prune kept whole listed with their reasons."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

import netsift
from netsift.report import report

pytestmark = pytest.mark.usefixtures("one_thread")


def _net(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("series")
    from sklearn.datasets import load_digits
    from torch.utils.data import TensorDataset

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16, torch.tensor(y)
    data = {"train": TensorDataset(x[:600], y[:600]), "test": TensorDataset(x[600:900], y[600:900])}
    for hidden in (16, 32):  # two different networks, both custom:Sequential
        for rerun in range(3):  # the same settings and seed three times: replicates
            netsift.train(_net(hidden), data, epochs=1, seed=0, latency_threads=None, progress=False,
                          out=root / f"h{hidden}-r{rerun}")
    return root


def test_two_networks_of_one_class_are_two_series_of_replicates(runs, tmp_path):
    tables = report([runs], out=tmp_path / "rep", plots=False)
    summary = tables["summary"]
    assert len(summary) == 2  # one per architecture, never merged by class name
    assert {s["model"] for s in summary} == {f"custom:Sequential #{r['arch']} on custom" for r in tables["runs"]}
    for s in summary:
        assert s["n"] == 3 and s["replicates"] == 2 and s["over"] == "3 replicates (seed 0)"
        assert s["macs_std"] == 0.0
    macs = sorted(s["macs"] for s in summary)
    assert macs[0] < macs[1]
    md = tables["markdown"]
    assert "3 replicates (seed 0)" in md and "replicates are runs with the same settings and seed" in md
    rows = list(csv.DictReader(open(tmp_path / "rep" / "report.csv")))
    assert len({r["arch"] for r in rows}) == 2 and all(len(r["arch"]) == 8 for r in rows)


def test_seeds_and_replicates_are_counted_apart():
    from netsift.report import _over

    assert _over(3, [0, 1, 2]) == "3 seeds"
    assert _over(3, [0]) == "3 replicates (seed 0)"
    assert _over(3, [0, 1]) == "2 seeds (+1 replicate)"
    assert _over(1, [0]) == "1 run"


def test_report_lists_the_groups_a_prune_kept_whole(tmp_path):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.one = nn.Conv2d(1, 1, 3, padding=1)
            self.a = nn.Conv2d(1, 8, 3, padding=1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.a(torch.relu(self.one(x)))).mean((2, 3)))

    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    data = {"train": torch.utils.data.TensorDataset(x[:48], y[:48]),
            "test": torch.utils.data.TensorDataset(x[48:], y[48:])}
    r = netsift.prune(Net(), data, method="l1", macs=0.7, finetune_epochs=0, latency_threads=None, progress=False,
                      out=tmp_path / "p")
    assert r.groups_skipped == [{"layers": ["one"], "channels": 1, "reason": "it has a single channel"}]
    md = report([tmp_path / "p"], out=tmp_path / "rep", plots=False)["markdown"]
    assert "## Channel groups kept whole" in md and "it has a single channel" in md
