"""The mask recipes' knobs: gumbel's temperature anneal (--tau-end), logit init (--logit-init) and budget-dependent
default mask lr, and the start of the learned layer scale (--scale-init, gumbel and edge-popup alike).

Hermetic and fast: scikit-learn digits, a narrow lenet300, 1-2 epochs.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from netsift.config import TrainConfig
from netsift.data import load_data
from netsift.errors import NetsiftError
from netsift.masks import MaskConfig, apply_masks, fit_masks, masks_and_scales
from netsift.masks.base import masked_layers
from netsift.masks.frozen import frozen_network
from netsift.masks.gumbel import annealed_tau

pytestmark = pytest.mark.usefixtures("one_thread")

TWO = TrainConfig(epochs=2, batch_size=64, max_steps=10)


@pytest.fixture(scope="module")
def bundle():
    return load_data("digits", seed=0)


def _net(width: float = 0.2) -> nn.Module:
    manifest = {"model": "lenet300", "width": width, "in_channels": 1, "image_size": 8, "num_classes": 10}
    return frozen_network(manifest, "signed-constant", 0)


def test_annealed_tau_is_geometric_between_the_ends():
    assert annealed_tau(2.0, 0.5, 0, 5) == 2.0
    assert annealed_tau(2.0, 0.5, 4, 5) == pytest.approx(0.5)
    assert annealed_tau(2.0, 0.5, 2, 5) == pytest.approx(1.0)  # the geometric midpoint
    assert annealed_tau(2.0, 0.5, 9, 5) == pytest.approx(0.5)  # past the end: stays at the end
    assert annealed_tau(2.0, 0.5, 0, 1) == 0.5  # a one-epoch run uses the end value


@pytest.mark.parametrize("options, needle", [
    ({"tau_end": 0.0}, "--tau-end must be positive"),
    ({"tau_end": -1.0}, "--tau-end must be positive"),
    ({"tau_end": float("nan")}, "--tau-end must be a finite number"),
    ({"logit_init": 25.0}, "--logit-init must be in [-20, 20]"),
    ({"logit_init": float("inf")}, "--logit-init must be a finite number"),
    ({"logit_init": "high"}, "--logit-init must be a float"),
])
def test_bad_values_are_one_line_errors(options, needle):
    with pytest.raises(NetsiftError) as e:
        MaskConfig(method="gumbel", options=options)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_options_belong_to_gumbel_only():
    with pytest.raises(NetsiftError, match="--tau-end applies to --method gumbel only"):
        MaskConfig(method="edge-popup", options={"tau_end": 0.5})
    with pytest.raises(NetsiftError, match="--logit-init applies to --method gumbel only"):
        apply_masks(_net(), "supermask", logit_init=1.0)


@pytest.mark.parametrize("argv, needle", [
    (["--tau-end", "0"], "--tau-end must be positive"),
    (["--logit-init", "30"], "--logit-init must be in [-20, 20]"),
])
def test_cli_rejects_bad_values(run_cli, tmp_path, argv, needle):
    code, _, err = run_cli("extract", "--data", "digits", "--epochs", "1", *argv, "--out", tmp_path / "bad")
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


def test_logit_init_sets_the_initial_keep_probability():
    model = apply_masks(_net(), "gumbel", logit_init=-2.0)
    for _, _, p in masked_layers(model):
        assert torch.equal(p.logits.detach(), torch.full_like(p.logits, -2.0))
    layer = next(m for m in model.modules() if isinstance(m, nn.Linear))
    model.train()
    torch.manual_seed(0)
    kept = float((layer.weight != 0).float().mean())  # one sampled mask of the first layer
    assert kept == pytest.approx(1 / (1 + math.exp(2.0)), abs=0.02)
    assert all(not m.any() for m, _ in masks_and_scales(model).values())  # σ(m̂) < 0.5: nothing extracted yet


def test_logit_init_moves_the_emergent_density(bundle):
    """Zhou et al.'s sigmoid bias: the emergent density follows the initial keep probability."""
    densities = {}
    for init in (-1.5, 0.0, 1.5):
        model = apply_masks(_net(), "gumbel", logit_init=init)
        fit_masks(model, bundle, TWO, seed=0)
        masks = [m for m, _ in masks_and_scales(model).values()]
        densities[init] = sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    assert densities[-1.5] < 0.42 < densities[0.0] < 0.58 < densities[1.5], densities


def test_tau_end_anneals_the_temperature_and_changes_the_masks(bundle):
    results = {}
    for tau_end in (None, 0.25):
        model = apply_masks(_net(), "gumbel", tau_end=tau_end)
        fitted = fit_masks(model, bundle, TWO, seed=0)
        results[tau_end] = (fitted, masks_and_scales(model), [p.tau for _, _, p in masked_layers(model)])
    constant, annealed = results[None], results[0.25]
    assert [r.get("tau") for r in annealed[0].history] == pytest.approx([1.0, 0.25])
    assert "tau" not in constant[0].history[0] and set(constant[2]) == {1.0}
    assert set(annealed[2]) == {0.25}
    # the first epoch runs at the same temperature (identical masks), the second differs
    assert any(not torch.equal(constant[1][k][0], annealed[1][k][0]) for k in constant[1])


def test_tau_end_through_the_pipeline(tmp_path):
    import json

    import netsift

    r = netsift.extract("lenet300", "digits", method="gumbel", width=0.2, epochs=2, max_steps=5, tau_end=0.5,
                        out=tmp_path / "run", progress=False)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["mask"]["options"]["tau_end"] == 0.5 and r.density > 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["tau"] for x in rows] == pytest.approx([1.0, 0.5])


def test_default_mask_lr_follows_the_epoch_budget():
    from netsift.masks import METHODS, train_config
    from netsift.masks.methods import BudgetLR

    rule = METHODS["gumbel"].defaults["lr"]
    assert isinstance(rule, BudgetLR)
    short, long = train_config("gumbel", TrainConfig(epochs=rule.epochs)), train_config("gumbel", TrainConfig(epochs=1000))
    assert short.lr == rule.lr  # short budgets keep the lr tuned for them
    assert long.lr == max(rule.floor, rule.lr * rule.epochs / 1000) < short.lr
    assert train_config("gumbel", TrainConfig(epochs=4 * rule.epochs)).lr == pytest.approx(rule.lr / 4)
    assert train_config("gumbel", TrainConfig(epochs=1000, lr=7.0)).lr == 7.0  # a given lr always wins
    assert train_config("edge-popup", TrainConfig(epochs=1000)).lr == 0.1  # other methods: a fixed default
    assert BudgetLR(100.0, 10, 5.0)(10_000) == 5.0  # the floor


@pytest.mark.slow
def test_budget_lr_reaches_result_json_and_help(tmp_path, run_cli, capsys):
    import json

    from netsift.masks import METHODS

    rule = METHODS["gumbel"].defaults["lr"]
    epochs = 2 * rule.epochs
    code, _, err = run_cli("extract", "--data", "digits", "--width", "0.1", "--epochs", epochs, "--max-steps", "1",
                           "--quiet", "--out", tmp_path / "run")
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["mask_lr"] == pytest.approx(rule(epochs)) and result["mask_lr"] < rule.lr
    with pytest.raises(SystemExit):
        run_cli("extract", "--help")
    assert f"up to {rule.epochs} epochs" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("method, options, start", [
    ("gumbel", {"density": 0.04}, 0.5),  # gumbel samples at σ(0) = 0.5 at the start, whatever the target
    ("gumbel", {"logit_init": math.log(0.2 / 0.8)}, 0.2),  # emergent: the initial keep probability
    ("edge-popup", {"density": 0.25, "rescale": "smart"}, 0.25),
])
def test_scale_init_starts_the_learned_scales_at_inv_sqrt_density(method, options, start):
    model = apply_masks(_net(), method, scale_init="inv-sqrt-density", **options)
    scales = [float(p.scale.detach()) for _, _, p in masked_layers(model)]
    assert scales == pytest.approx([1 / math.sqrt(start)] * len(scales))
    assert all(isinstance(p.scale, nn.Parameter) for _, _, p in masked_layers(model))  # still learned
    plain = apply_masks(_net(), method, **options)
    assert {float(p.scale.detach()) for _, _, p in masked_layers(plain)} == {1.0}  # the published start


def test_scale_init_needs_a_learned_scale(run_cli, tmp_path):
    with pytest.raises(NetsiftError, match="--scale-init inv-sqrt-density needs a learned scale"):
        apply_masks(_net(), "edge-popup", scale_init="inv-sqrt-density")  # edge-popup's default: no rescale
    code, _, err = run_cli("extract", "--data", "digits", "--epochs", "1", "--rescale", "none", "--scale-init",
                           "inv-sqrt-density", "--out", tmp_path / "bad")
    assert code == 2 and "needs a learned scale" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli("extract", "--data", "digits", "--epochs", "1", "--scale-init", "two",
                           "--out", tmp_path / "bad")
    assert code == 2 and "invalid choice: 'two'" in err and not (tmp_path / "bad").exists()


def test_scale_init_changes_what_is_learned(bundle):
    """At a low density the scaled start keeps larger activations: a different first epoch."""
    accs = {}
    for init in ("one", "inv-sqrt-density"):
        model = apply_masks(_net(0.5), "edge-popup", density=0.05, rescale="smart", scale_init=init)
        fitted = fit_masks(model, bundle, TrainConfig(epochs=1, batch_size=64, max_steps=10), seed=0)
        accs[init] = (fitted.history[0]["val_acc"], [float(p.scale.detach()) for _, _, p in masked_layers(model)])
    assert accs["one"] != accs["inv-sqrt-density"]
    assert min(accs["inv-sqrt-density"][1]) > 2.0 > max(accs["one"][1])  # 1/sqrt(0.05) = 4.5 at the start


def test_a_density_that_empties_a_layer_says_so(tmp_path, capsys):
    import netsift

    r = netsift.extract("lenet300", "digits", method="gumbel", width=0.2, density=1e-6, epochs=1, max_steps=3,
                        out=tmp_path / "tiny", progress=False)
    err = capsys.readouterr().err
    assert "keep no weight" in err and "raise --density" in err
    empty = [row["name"] for row in r.layers if row["density"] == 0]
    assert empty and all(name in err for name in empty)
    netsift.extract("lenet300", "digits", method="gumbel", width=0.2, density=0.5, epochs=1, max_steps=3,
                    out=tmp_path / "half", progress=False)
    assert "keep no weight" not in capsys.readouterr().err
