import torch
from torch import nn

from netsift.measure import count_macs, count_params, density, latency, layer_table, sparse_macs


def test_macs_of_a_small_convnet_match_hand_count():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 5))
    assert count_macs(model, (3, 4, 4)) == 8 * 16 * 3 * 9 + 8 * 16 * 5


def test_density_params_and_sparse_macs_follow_zeros():
    model = nn.Sequential(nn.Linear(10, 4, bias=False))
    with torch.no_grad():
        model[0].weight[:2] = 0
    assert density(model) == 0.5
    assert count_params(model) == (20, 40)
    assert sparse_macs(model, (10,)) == 20 and count_macs(model, (10,)) == 40
    assert layer_table(model)[0]["shape"] == [4, 10]


def test_parametrised_weights_count_as_their_effective_tensor():
    import torch.nn.utils.parametrize as P

    class Half(nn.Module):
        def __init__(self):
            super().__init__()
            self.logits = nn.Parameter(torch.zeros(4, 10))

        def forward(self, w):
            return w * (torch.arange(4)[:, None] < 2)

    model = nn.Sequential(nn.Linear(10, 4, bias=False))
    P.register_parametrization(model[0], "weight", Half())
    assert count_params(model) == (20, 40) and density(model) == 0.5


def test_latency_reports_its_conditions():
    r = latency(nn.Linear(8, 8), (8,), batch_size=4, repeats=5, warmup=1, threads=1)
    assert r["batch_size"] == 4 and r["threads"] == 1 and r["median_ms"] > 0
