"""Channel selection, physical removal and ``netsift prune`` (hermetic: random weights, synthetic/digits data)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netsift.cli import main
from netsift.errors import NetsiftError
from netsift.measure import count_macs
from netsift.models import build_model
from netsift.rundir import load_model, save_model
from netsift.selection import gfs
from netsift.selection.base import SelectionContext
from netsift.selection.budget import MacsModel, allocate
from netsift.selection.groups import build_graph, find_groups
from netsift.selection.removal import removal_error, remove_channels
from netsift.selection.masking import Masker, kept_mask
from netsift.selection.reference import reference_scores
from netsift.selection.scoring import BatchedScorer
from netsift.surgery import module_sizes


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomize_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _model(name: str, shape=(1, 16, 16), width: float = 0.5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _randomize_bn(build_model(name, shape[0], shape[1], 10, width))


# ---------------------------------------------------------------------------------------------- GFS rule


def test_gfs_matches_brute_force_greedy_rule():
    """GFS on a small MLP picks exactly what an explicit loop over the greedy rule picks."""
    torch.manual_seed(0)
    model = build_model("lenet300", 1, 4, 3, width=0.04).eval()  # 16 -> 12 -> 4 -> 3
    l1, l2, l3 = model[1], model[3], model[5]
    batches = [(torch.randn(32, 1, 4, 4), torch.randint(0, 3, (32,))) for _ in range(40)]

    def brute_force():
        it = iter(batches)
        masks = [torch.ones(l1.out_features), torch.ones(l2.out_features)]
        chosen_all = []
        for layer in range(2):
            n, chosen = len(masks[layer]), []
            while len(chosen) < [8, 3][layer]:
                x, y = next(it)
                best, best_loss = None, None
                for j in range(n):
                    if j in chosen:
                        continue
                    m = torch.zeros(n)
                    m[chosen + [j]] = n / (len(chosen) + 1)
                    ms = list(masks)
                    ms[layer] = m
                    h1 = F.relu(l1(x.flatten(1))) * ms[0]
                    h2 = F.relu(l2(h1)) * ms[1]
                    loss = F.cross_entropy(l3(h2), y).item()
                    if best_loss is None or loss < best_loss:
                        best, best_loss = j, loss
                chosen.append(best)
            masks[layer] = kept_mask(n, chosen)
            chosen_all.append(sorted(chosen))
        return chosen_all

    with torch.no_grad():
        expected = brute_force()
    shape = (1, 4, 4)
    graph = build_graph(model, shape)
    groups = find_groups(model, shape, graph)
    it = iter(batches)
    ctx = SelectionContext(model, groups, graph, shape, lambda: next(it), (batches[0][0], batches[0][1]),
                           widths=[8, 3], candidates=0, progress=False)
    got = gfs.select(ctx)
    assert [got.kept[g.name] for g in groups] == expected


@pytest.mark.parametrize("bn_batch_stats", [False, True])
@pytest.mark.slow
def test_batched_scores_equal_reference(bn_batch_stats):
    model = _model("resnet20", width=0.25)
    shape = (1, 16, 16)
    groups = find_groups(model, shape)
    masker = Masker(model, groups)
    masker.set_kept(0, [0, 1, 2])
    scorer = BatchedScorer(model, masker, max_batch=64, bn_batch_stats=bn_batch_stats)  # several chunks
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    for gi in (1, 5, len(groups) - 1):
        n = groups[gi].size
        masks = torch.stack([kept_mask(n, [0, j]) for j in range(1, n)])
        fast = scorer.score(gi, masks, x, y)
        slow = reference_scores(model, masker, gi, masks, x, y, bn_batch_stats=bn_batch_stats)
        assert torch.allclose(fast, slow, atol=1e-5), (gi, (fast - slow).abs().max())


def test_with_replacement_variant_may_repeat_channels():
    torch.manual_seed(1)
    model = build_model("lenet300", 1, 4, 3, width=0.04).eval()
    shape = (1, 4, 4)
    graph = build_graph(model, shape)
    groups = find_groups(model, shape, graph)[:1]
    x, y = torch.randn(64, *shape), torch.randint(0, 3, (64,))
    ctx = SelectionContext(model, groups, graph, shape, lambda: (x, y), (x, y), widths=[12], candidates=0,
                           replacement=True, progress=False)
    sel = gfs.select(ctx)
    kept = sel.kept[groups[0].name]
    assert len(kept) == 12 and len(set(kept)) < 12  # 12 picks, a multiset: some channel picked more than once
    ctx.masker.remove()
    pruned = remove_channels(model, shape, sel.kept, sel.rescale)
    masker = Masker(model, groups)
    masker.set_kept(0, kept)
    with torch.no_grad():
        assert torch.allclose(model(x), pruned(x), atol=1e-5)


# ------------------------------------------------------------------------------------ budget and surgery


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2", "conv2"])
@pytest.mark.parametrize("fraction", [0.5, 0.3])
@pytest.mark.slow
def test_macs_budget_is_met(name, fraction):
    model = _model(name, width=0.5)
    shape = (1, 16, 16)
    groups = find_groups(model, shape)
    widths = allocate(MacsModel(model, groups, shape), fraction)
    kept = {g.name: list(range(w)) for g, w in zip(groups, widths)}
    pruned = remove_channels(model, shape, kept)
    ratio = count_macs(pruned, shape) / count_macs(model, shape)
    assert abs(ratio - fraction) <= 0.03 * fraction, ratio


@pytest.mark.parametrize("name", ["resnet20", "vgg11"])
@pytest.mark.slow
def test_macs_budget_with_rounded_widths(name):
    model = _model(name, width=1.0)
    shape = (1, 16, 16)
    groups = find_groups(model, shape)
    widths = allocate(MacsModel(model, groups, shape), 0.5, round_to=8)
    for g, w in zip(groups, widths):
        assert w % 8 == 0 or w == g.size or g.size < 16, (g.name, g.size, w)
    pruned = remove_channels(model, shape, {g.name: list(range(w)) for g, w in zip(groups, widths)})
    ratio = count_macs(pruned, shape) / count_macs(model, shape)
    assert abs(ratio - 0.5) <= 0.03 * 0.5, ratio


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_coupled_layers_stay_consistent(name):
    """Residual streams and depthwise convs: the pruned net computes what the masked net computed."""
    model = _model(name, width=0.5)
    shape = (1, 16, 16)
    groups = find_groups(model, shape)
    assert any(len(g.members) > 1 for g in groups)  # coupled groups were found
    g = torch.Generator().manual_seed(0)
    kept = {gr.name: sorted(torch.randperm(gr.size, generator=g)[:max(1, gr.size // 2)].tolist()) for gr in groups}
    pruned = remove_channels(model, shape, kept).eval()
    x = torch.randn(4, *shape)
    with torch.no_grad():
        assert pruned(x).shape == (4, 10)
    assert removal_error(model, pruned, groups, kept, True, x) < 1e-5
    for m in pruned.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels


def test_removal_error_measures_pruned_against_masked():
    """The self-check: ~0 for a correct removal, the outputs' own size for a network that computes another
    subnetwork than the selection's."""
    model = _model("resnet20", width=0.5)
    shape = (1, 16, 16)
    groups = find_groups(model, shape)
    kept = {g.name: list(range(0, g.size, 2)) for g in groups}
    other = {g.name: list(range(1, g.size, 2)) for g in groups}
    pruned = remove_channels(model, shape, kept)
    x = torch.randn(8, *shape)
    assert removal_error(model, pruned, groups, kept, True, x) < 1e-5
    assert removal_error(model, pruned, groups, other, True, x) > 0.05
    assert removal_error(model, pruned, groups, kept, False, x) > 0.05  # the N/n rescale not folded
    assert model.training is False and not any(m._forward_pre_hooks for m in model.modules())  # hooks gone
    for bias in (0.0, 0.3):  # outputs the same for every input (zero logits, or the bias alone): nothing to compare
        flat = copy.deepcopy(model)
        for m in flat.modules():
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.weight), nn.init.constant_(m.bias, bias)
        assert removal_error(flat, remove_channels(flat, shape, kept), find_groups(flat, shape), kept, True, x) is None


def test_prune_records_the_removal_check_and_warns_on_a_wrong_removal(tmp_path, monkeypatch, capsys):
    rc, out = _prune(tmp_path, "--model", "resnet20", "--width", "0.5", "--method", "l1", "--macs", "0.5")
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert 0 <= result["removal_error"] < 1e-5
    assert "computes something other" not in capsys.readouterr().err
    # a removal that forgets to fold the N/n rescale into the consumers: the run finishes, says so, records it
    import netsift.selection.removal as removal

    monkeypatch.setattr(removal, "_fold", lambda *a: None)
    rc, out = _prune(tmp_path, "--model", "resnet20", "--width", "0.5", "--method", "random", "--rescale", "on",
                     "--macs", "0.5")
    assert rc == 0
    assert json.loads((out / "result.json").read_text())["removal_error"] > 1e-3
    err = capsys.readouterr().err
    assert "warning: the pruned network computes something other than the subnetwork" in err


def test_pruned_model_round_trips_through_safetensors(tmp_path):
    model = _model("mobilenetv2", width=0.5)
    shape = (1, 16, 16)
    groups = find_groups(model, shape)
    kept = {g.name: list(range(0, g.size, 2)) for g in groups}
    pruned = remove_channels(model, shape, kept).eval()
    manifest = {"model": "mobilenetv2", "width": 0.5, "in_channels": 1, "image_size": 16, "num_classes": 10,
                "modules": module_sizes(pruned)}
    save_model(tmp_path, pruned, manifest)
    loaded, _ = load_model(tmp_path)
    loaded.eval()
    x = torch.randn(3, *shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


def test_unprunable_model_fails_cleanly():
    with pytest.raises(NetsiftError, match="no prunable channel groups"):
        find_groups(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), (1, 4, 4))


# ------------------------------------------------------------------------------------------- the command


def _prune(tmp_path, *extra):
    out = tmp_path / "out"
    rc = main(["prune", "--data", "synthetic", "--holdout", "64", "--select-batch", "32", "--finetune-epochs", "1",
               "--max-steps", "2", "--out", str(out), "--overwrite", *extra])
    return rc, out


@pytest.mark.parametrize("name", ["tv:resnet18", "tv:mobilenet_v2"])
@pytest.mark.slow
def test_torchvision_models_end_to_end(tmp_path, name):
    rc, out = _prune(tmp_path, "--model", name, "--method", "l1", "--macs", "0.5", "--onnx")
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert abs(result["macs_fraction"] - 0.5) <= 0.015
    loaded, manifest = load_model(out)
    assert manifest["model"] == name
    loaded.eval()
    with torch.no_grad():
        assert loaded(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(sess.run(None, {"input": x.numpy()})[0]), loaded(x), atol=1e-3)


@pytest.mark.slow
def test_gfs_command_on_residual_network(tmp_path):
    rc, out = _prune(tmp_path, "--model", "resnet20", "--width", "0.25", "--method", "gfs", "--macs", "0.5",
                     "--candidates", "8", "--bn-batch-stats", "--recalibrate-bn", "2", "--distill",
                     "--layer-finetune", "0.05")
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    for key in ("command", "method", "model", "data", "seed", "test_acc", "val_acc", "density", "params",
                "params_total", "macs", "wall_s", "layers", "latency_b64_ms", "source_latency_b64_ms",
                "source_macs", "selection_s", "test_acc_selected", "finetuned"):
        assert key in result
    assert abs(result["macs_fraction"] - 0.5) <= 0.015
    assert result["macs"] < result["source_macs"] and result["finetuned"] is True


@pytest.mark.parametrize("method", ["backward", "taylor", "random", "bn-scale"])
@pytest.mark.slow
def test_rivals_run_in_tolerance_and_budget_modes(tmp_path, method):
    rc, out = _prune(tmp_path, "--model", "resnet20", "--width", "0.25", "--method", method, "--macs", "0.3",
                     "--candidates", "4", "--finetune-epochs", "0")
    assert rc == 0
    assert abs(json.loads((out / "result.json").read_text())["macs_fraction"] - 0.3) <= 0.009
    rc, out = _prune(tmp_path, "--model", "conv2", "--width", "0.125", "--method",
                     "random" if method == "bn-scale" else method, "--tolerance", "0.1", "--candidates", "4",
                     "--finetune-epochs", "0")
    assert rc == 0


@pytest.fixture
def lenet_checkpoint(tmp_path):
    torch.manual_seed(0)
    run = tmp_path / "lenet"
    run.mkdir()
    model = build_model("lenet300", 1, 16, 10, width=0.1)
    save_model(run, model, {"model": "lenet300", "width": 0.1, "in_channels": 1, "image_size": 16,
                            "num_classes": 10})
    return run


@pytest.mark.parametrize("args, message", [
    (["--model", "conv2"], "holds a lenet300"),
    (["--macs", "1.5"], "--macs"),
    (["--macs", "0"], "--macs"),
    (["--macs", "0.5", "--round-to", "0"], "--round-to"),
    (["--method", "obd"], "method"),
])
def test_bad_inputs_fail_cleanly_and_overwrite_nothing(tmp_path, lenet_checkpoint, capsys, args, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text("{}")
    rc = main(["prune", "--checkpoint", str(lenet_checkpoint), "--data", "synthetic", "--out", str(out),
               "--overwrite", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and message in err, err
    assert (out / "result.json").read_text() == "{}"


def test_corrupt_missing_and_unprunable_checkpoints(tmp_path, lenet_checkpoint, capsys):
    rc = main(["prune", "--checkpoint", str(tmp_path / "nope"), "--data", "synthetic", "--out", str(tmp_path / "o")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    blob = lenet_checkpoint / "model.safetensors"
    blob.write_bytes(blob.read_bytes()[:-10])
    rc = main(["prune", "--checkpoint", str(lenet_checkpoint), "--data", "synthetic", "--out", str(tmp_path / "o")])
    assert rc == 2
    rc = main(["prune", "--model", "lenet300", "--width", "0.001", "--data", "synthetic", "--out", str(tmp_path / "o")])
    assert rc == 2 and "no prunable channel groups" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_checkpoint_for_other_data_fails(tmp_path, lenet_checkpoint, capsys):
    rc = main(["prune", "--checkpoint", str(lenet_checkpoint), "--data", "digits", "--out", str(tmp_path / "o")])
    assert rc == 2 and "trained on inputs" in capsys.readouterr().err


def test_prune_takes_the_checkpoints_data_and_split(tmp_path, capsys):
    """--seed changes the selection and fine-tune only; data, subset and split come from the dense run."""
    dense = tmp_path / "dense"
    assert main(["train", "--model", "lenet300", "--width", "0.1", "--data", "digits", "--train-subset", "500",
                 "--epochs", "1", "--seed", "3", "--out", str(dense)]) == 0
    out = tmp_path / "p"
    assert main(["prune", "--checkpoint", str(dense), "--method", "l1", "--macs", "0.5", "--finetune-epochs", "1",
                 "--max-steps", "1", "--seed", "5", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    result = json.loads((out / "result.json").read_text())
    assert config["data"]["train_subset"] == 500 and config["data_seed"] == 3 and result["seed"] == 5
    assert result["data_seed"] == 3
    capsys.readouterr()
    for flags, what in ((["--data", "synthetic"], "data='digits'"), (["--train-subset", "900"], "train_subset=500")):
        assert main(["prune", "--checkpoint", str(dense), "--method", "l1", "--macs", "0.5", *flags,
                     "--out", str(tmp_path / "q")]) == 2
        err = capsys.readouterr().err
        assert what in err and err.count("\n") == 1
    assert not (tmp_path / "q").exists()


def test_holdout_and_selection_batches_come_from_the_training_split():
    from netsift.data import load_data
    bundle = load_data("digits", seed=2)
    rest, (hx, hy) = bundle.holdout(100)
    train = bundle.train.images.flatten(1)
    held = {tuple(r.tolist()) for r in hx.flatten(1)}
    assert len(hy) == 100 and rest.size("train") == bundle.size("train") - 100
    normalised = ((bundle.train.images.float() - bundle.mean[0]) / bundle.std[0]).flatten(1)
    train_rows = {tuple(r.tolist()) for r in normalised}
    assert held <= train_rows  # held-out images are training images
    val = {tuple(r.tolist()) for r in ((bundle.val.images.float() - bundle.mean[0]) / bundle.std[0]).flatten(1)}
    test = {tuple(r.tolist()) for r in ((bundle.test.images.float() - bundle.mean[0]) / bundle.std[0]).flatten(1)}
    assert not held & val and not held & test and len(train) == bundle.size("train")


def test_defaults_follow_batch_norm_and_published_restores_the_paper():
    from netsift.selection import PruneConfig

    cfg = PruneConfig(method="gfs", macs=0.5)
    assert cfg.resolved(True).bn_batch_stats is True and cfg.resolved(True).recalibrate_bn == 20
    assert cfg.resolved(False).bn_batch_stats is False and cfg.resolved(False).recalibrate_bn == 0
    pub = PruneConfig(method="gfs", macs=0.5, published=True).resolved(True)
    assert (pub.bn_batch_stats, pub.recalibrate_bn, pub.layer_finetune, pub.candidates, pub.select_batch) == \
        (False, 0, 0.1, 50, 128)
