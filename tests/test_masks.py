"""Weight masks over frozen random networks (hermetic: tiny models, synthetic data or scikit-learn digits)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netsift.checkpoint import load_checkpoint
from netsift.config import TrainConfig
from netsift.data import load_data, make_loader
from netsift.errors import NetsiftError
from netsift.masks import MaskConfig, apply_masks, extract, fit_masks, masks_and_scales
from netsift.masks.base import frozen_weight
from netsift.masks.edge_popup import top_k_mask, top_k_threshold
from netsift.masks.frozen import bake_weight, frozen_network, weights_sha256
from netsift.masks.gumbel import bernoulli_weight, project_density, uniform16
from netsift.models import prunable_layers
from netsift.results import RESULT_KEYS as RESULT_FIELDS
from netsift.rundir import load_model

QUICK = TrainConfig(epochs=2, batch_size=64, max_steps=8)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bundle():
    return load_data("digits", seed=0)


def _net(kind: str = "lenet300", seed: int = 0, width: float = 0.1, init: str = "signed-constant") -> nn.Module:
    manifest = {"model": kind, "width": width, "in_channels": 1, "image_size": 8, "num_classes": 10}
    return frozen_network(manifest, init, seed)


# ------------------------------------------------------------------------------------------ sampling


def test_uniform16_is_uniform_in_open_interval():
    torch.manual_seed(0)
    u = uniform16(torch.empty(200_000))
    assert 0.0 < float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.003 and abs(float(u.var()) - 1 / 12) < 0.002


@pytest.mark.parametrize("grad", ["gumbel", "sigmoid"])
def test_hard_sample_mean_matches_sigmoid_of_logit(grad):
    """Mean of the hard sample over many draws ≈ σ(m̂) within 5 binomial standard errors, for every logit."""
    torch.manual_seed(0)
    logits = torch.linspace(-4, 4, 17)
    w = torch.ones(17)
    draws = 4000
    mean = torch.stack([bernoulli_weight(w, logits, "none", torch.ones(()), grad=grad) for _ in range(draws)]).mean(0)
    p = torch.sigmoid(logits)
    tolerance = 5 * torch.sqrt(p * (1 - p) / draws) + 1e-3
    assert torch.all((mean - p).abs() <= tolerance), (mean - p).abs().max()


def test_naive_parametrization_has_the_same_distribution():
    torch.manual_seed(0)
    model = apply_masks(_net(), "gumbel", parametrization="naive", rescale="none")
    layer = prunable_layers(model)[0][1]
    with torch.no_grad():
        layer.parametrizations.weight[0].logits.copy_(torch.linspace(-3, 3, layer.weight.numel()).view_as(layer.weight))
    w = frozen_weight(layer)
    p = torch.sigmoid(layer.parametrizations.weight[0].logits.detach())
    kept = torch.stack([(layer.weight != 0).float() for _ in range(300)]).mean(0)
    assert abs(float((kept - p).mean())) < 0.01 and torch.all(w != 0)


def test_straight_through_gradient_is_the_soft_sample_derivative():
    """Gumbel ST gradient w.r.t. m̂ equals g · w · s · σ'(z/τ)/τ, checked against autograd on the soft sample."""
    torch.manual_seed(0)
    logits = torch.randn(50, requires_grad=True)
    w, g, scale, tau = torch.randn(50), torch.randn(50), torch.tensor(1.7, requires_grad=True), 0.5
    state = torch.get_rng_state()
    out = bernoulli_weight(w, logits, "smart", scale, tau=tau)
    out.backward(g)
    torch.set_rng_state(state)
    z = uniform16(logits).logit() + logits.detach()
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref_scale = torch.tensor(1.7, requires_grad=True)
    soft = torch.sigmoid((ref_logits + (z - logits.detach())) / tau)
    hard = (z > 0).float()
    (ref_scale * w * (hard - soft.detach() + soft)).backward(g)
    assert torch.equal(out.detach(), 1.7 * w * hard)
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-6)
    assert torch.allclose(scale.grad, ref_scale.grad, atol=1e-5)


# -------------------------------------------------------------------------------- gradients and freezing


@pytest.mark.parametrize("method, options", [("gumbel", {}), ("gumbel", {"parametrization": "naive"}),
                                             ("edge-popup", {"density": 0.3}), ("supermask", {}),
                                             ("random", {"rescale": "smart"})])
@pytest.mark.slow
def test_gradients_reach_mask_params_and_scales_only(method, options, bundle):
    model = apply_masks(_net("conv2", width=0.125), method, **options)
    before = {k: v.clone() for k, v in model.state_dict().items() if "original" in k or "bias" in k}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith((".logits", ".scores", ".scale")) for n in trainable), trainable
    x, y = next(iter(make_loader(bundle, "train", 32)))
    F.cross_entropy(model(x), y).backward()
    for n, p in model.named_parameters():
        assert (p.grad is not None) == (n in trainable), n
    fit_masks(model, bundle, QUICK)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # the weights never changed


def test_extract_bakes_mask_and_scale_into_the_frozen_weights(bundle):
    frozen = _net()
    model = apply_masks(_net(), "gumbel")
    fit_masks(model, bundle, QUICK)
    plain = extract(model)
    assert not any(hasattr(m, "parametrizations") for m in plain.modules())
    x = torch.randn(16, 1, 8, 8)
    model.eval()
    assert torch.equal(model(x), plain(x))
    found = masks_and_scales(model)
    for (name, layer), (_, ref) in zip(prunable_layers(plain), prunable_layers(frozen)):
        mask, scale = found[name]
        assert torch.equal(layer.weight, bake_weight(ref.weight, mask, scale))
    assert any(float(s) != 1.0 for _, s in found.values())  # smart rescale learned something
    assert model(x).shape == (16, 10)  # the masked model still works after extraction


def test_python_api_on_any_module(bundle):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    masked = apply_masks(net, "edge-popup", density=0.25)
    fit_masks(masked, bundle, epochs=1, batch_size=64, max_steps=4)
    sub = extract(masked)
    assert isinstance(sub[1], nn.Linear) and abs(float((sub[1].weight != 0).float().mean()) - 0.25) < 1e-3


# --------------------------------------------------------------------------------------------- density


@pytest.mark.parametrize("density", [0.05, 0.3, 0.8])
def test_gumbel_density_target_is_met(density, bundle):
    model = apply_masks(_net(), "gumbel", density=density)
    fit_masks(model, bundle, QUICK)
    masks = [m for m, _ in masks_and_scales(model).values()]
    kept = sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    assert abs(kept - density) <= 0.01
    # sampling stays stochastic: two training forwards differ
    model.train()
    layer = prunable_layers(model)[0][1]
    assert not torch.equal(layer.weight, layer.weight)


def test_project_density_is_exact_on_distinct_logits():
    model = apply_masks(_net(), "gumbel")
    torch.manual_seed(0)
    with torch.no_grad():
        for _, layer in prunable_layers(model):
            layer.parametrizations.weight[0].logits.normal_()
    project_density(model, 0.123)
    masks = [m for m, _ in masks_and_scales(model).values()]
    n = sum(m.numel() for m in masks)
    assert sum(int(m.sum()) for m in masks) == round(0.123 * n)


def test_edge_popup_per_layer_density_is_exact(bundle):
    model = apply_masks(_net("conv2", width=0.125), "edge-popup", density=0.1)
    fit_masks(model, bundle, QUICK)
    for name, (mask, _) in masks_and_scales(model).items():
        assert int(mask.sum()) == max(1, round(0.1 * mask.numel())), name
    model.train()
    for _, layer in prunable_layers(model):
        assert int((layer.weight != 0).sum()) == max(1, round(0.1 * layer.weight.numel()))


def test_top_k_threshold_band_search_matches_kthvalue():
    torch.manual_seed(0)
    flat = torch.rand(10_000)
    exact, _ = top_k_threshold(flat, 1234)
    for band in [(0.86, 0.88), (0.0, 1.0), (0.5, 0.6), (0.95, 0.99)]:
        t, _ = top_k_threshold(flat, 1234, band)
        assert float(t) == float(exact) or int((flat > t).sum()) == 1234
    assert int(top_k_mask(flat.view(100, 100), 1234).sum()) == 1234
    assert int(top_k_mask(torch.zeros(10, 10), 7).sum()) == 7  # ties


# --------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("method", ["gumbel", "edge-popup", "supermask"])
def test_same_seed_gives_the_same_mask_bit_for_bit(method, bundle):
    def run(seed):
        model = apply_masks(_net(seed=seed), method, seed=seed)
        fit_masks(model, bundle, QUICK, seed=seed)
        return masks_and_scales(model)

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1]) for k in a)
    assert any(not torch.equal(a[k][0], c[k][0]) for k in a)


# --------------------------------------------------------------------------------------------- the CLI


def test_extract_cli_writes_result_and_subnet(run_cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli("extract", "--method", "gumbel", "--data", "digits", "--width", "0.2", "--epochs", "1",
                                "--max-steps", "5", "--density", "0.2", "--out", out)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    for field in RESULT_FIELDS:
        assert field in result, field
    assert result["command"] == "extract" and result["method"] == "gumbel" and abs(result["density"] - 0.2) <= 0.01
    assert len(result["layers"]) == 3 and all(0 < layer["density"] <= 1 for layer in result["layers"])
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["data"] == "digits" and config["mask"]["init"] == "signed-constant" and config["seed"] == 0
    tensors, meta = load_checkpoint(out / "subnet")
    assert meta["init"] == {"scheme": "signed-constant", "seed": 0} and meta["method"] == "gumbel"
    assert meta["test_acc"] == result["test_acc"]
    frozen = frozen_network(meta["manifest"], "signed-constant", 0)
    assert meta["weights_sha256"] == weights_sha256(frozen)
    model, _ = load_model(out)
    for name, layer in prunable_layers(model):
        assert tensors[f"{name}.mask"].dtype == torch.bool and tensors[f"{name}.scale"].shape == ()
        ref = dict(prunable_layers(frozen))[name].weight
        assert torch.equal(layer.weight, bake_weight(ref, tensors[f"{name}.mask"], tensors[f"{name}.scale"]))
    assert not any(k.startswith("state.") for k in tensors)  # lenet300: nothing besides the weights changed
    code, stdout, err = run_cli("eval", out)
    assert code == 0 and f"{result['test_acc']:.4f}" in stdout


@pytest.mark.parametrize("argv, needle", [
    (["--density", "0"], "--density must be in (0, 1]"),
    (["--density", "1.5"], "--density must be in (0, 1]"),
    (["--method", "magic"], "invalid choice: 'magic'"),
    (["--init", "xavier"], "invalid choice: 'xavier'"),
    (["--tau", "0"], "--tau must be positive"),
    (["--method", "edge-popup", "--train-weights"], "--train-weights applies to --method random only"),
])
def test_extract_cli_rejects_bad_input(run_cli, tmp_path, argv, needle):
    code, stdout, err = run_cli("extract", "--data", "digits", "--epochs", "1", *argv, "--out", tmp_path / "bad")
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


def test_api_rejects_bad_input():
    with pytest.raises(NetsiftError, match="unknown method"):
        MaskConfig(method="magic")
    with pytest.raises(NetsiftError, match="unknown --init"):
        MaskConfig(init="xavier")
    with pytest.raises(NetsiftError, match="density"):
        apply_masks(_net(), "edge-popup", density=-0.1)


@pytest.mark.parametrize("method", ["gumbel", "edge-popup", "supermask"])
def test_every_method_learns_a_mask_on_digits(method, bundle):
    """A few epochs lift the extracted network far above chance (catches gradient sign errors)."""
    model = apply_masks(_net(width=0.3), method)
    fitted = fit_masks(model, bundle, TrainConfig(epochs=3, batch_size=64))
    assert fitted.best_val_acc > 0.6, fitted.history


def test_init_frozen_seeds_every_parameter_and_buffer():
    """Biases, batch-norm parameters and buffers come from the init seed too, never from the global RNG."""
    from netsift.masks.frozen import init_frozen

    def make():
        torch.manual_seed(int(torch.randint(0, 10**6, ())))  # a different global RNG state each time
        net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=True), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 36, 10))
        net[1].running_mean.uniform_()  # stale statistics must be reset as well
        return init_frozen(net, "kaiming-normal", seed=7)

    a, b = make(), make()
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    assert torch.equal(a[1].running_mean, torch.zeros(4))
    state = torch.get_rng_state()
    init_frozen(a, "signed-constant", seed=3)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
