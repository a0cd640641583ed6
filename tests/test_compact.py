"""Compact subnetwork files and ``netsift export``: bit-exact round trips, damage detection, other formats."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from netsift.checkpoint import atomic_write_json, load_checkpoint, save_checkpoint
from netsift.config import DataConfig
from netsift.data import load_bundle
from netsift.measure import measure
from netsift.pipelines import evaluate as evaluate_run
from netsift.masks.compact import dense_bytes, read_compact, rebuild, subnet_of, to_bytes, write_compact
from netsift.masks.frozen import bake_weight, frozen_network, weights_sha256
from netsift.models import prunable_layers
from netsift.models import model_manifest
from netsift.rundir import load_model, save_model

INIT = {"scheme": "signed-constant", "seed": 7}


def make_run(run_dir, model="lenet300", width=0.1, density=0.5, extra=False):
    """A run folder as `netsift extract --out DIR` writes it, with random masks and scales."""
    data_cfg = DataConfig(data="digits")
    bundle = load_bundle(data_cfg, 0)
    manifest = model_manifest(model, width, bundle.input_shape, bundle.num_classes)
    net = frozen_network(manifest, INIT["scheme"], INIT["seed"])
    frozen_sha = weights_sha256(net)
    gen = torch.Generator().manual_seed(1)
    tensors = {}
    with torch.no_grad():
        for name, layer in prunable_layers(net):
            mask, scale = torch.rand(layer.weight.shape, generator=gen) < density, 1 + torch.rand((), generator=gen)
            layer.weight.copy_(bake_weight(layer.weight, mask, scale))
            tensors[f"{name}.mask"], tensors[f"{name}.scale"] = mask, scale
        if extra:  # a non-prunable tensor that differs from the regenerated network
            key = next(k for k in net.state_dict() if k.endswith("bias"))
            net.state_dict()[key].add_(0.25)
            tensors[f"state.{key}"] = net.state_dict()[key].clone()
    test_acc = measure(net, bundle)["test_acc"]
    atomic_write_json(run_dir / "config.json", {"command": "extract", "method": "random", "seed": 0,
                                                "data": dataclasses.asdict(data_cfg)})
    atomic_write_json(run_dir / "result.json", {"test_acc": test_acc})
    save_model(run_dir, net, manifest)
    save_checkpoint(run_dir / "subnet", tensors, {"manifest": manifest, "init": INIT, "weights_sha256": frozen_sha,
                                                   "method": "random", "data": "digits", "test_acc": test_acc})
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A lenet300 run with an extra tensor, exported as ``model.nsc``."""
    run = make_run(tmp_path_factory.mktemp("lenet") / "run", extra=True)
    write_compact(run, run / "model.nsc")
    return run


def one_line_error(code, err, needle):
    assert code == 2 and needle in err and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.parametrize("model, width, extra", [("lenet300", 0.1, True), ("conv2", 0.25, False)])
def test_round_trip_is_bit_exact_and_eval_reproduces_accuracy(run_cli, tmp_path, model, width, extra):
    run = make_run(tmp_path / "run", model, width, extra=extra)
    code, out, err = run_cli("export", run)
    assert code == 0 and "x smaller" in out, err
    path = run / "model.nsc"
    subnet = read_compact(path)
    assert bool(subnet.extras) == extra
    saved, _ = load_checkpoint(run / "model")
    rebuilt = rebuild(subnet).state_dict()
    assert sorted(rebuilt) == sorted(saved) and all(torch.equal(saved[k], rebuilt[k]) for k in saved)
    result = evaluate_run(path)
    assert result["test_acc"] == result["saved_test_acc"] == json.loads((run / "result.json").read_text())["test_acc"]
    code, out, err = run_cli("eval", path, "--data", "digits")
    assert code == 0 and out.count(f"{result['test_acc']:.4f}") == 2, err
    assert run_cli("eval", run)[0] == 0  # run folders still work


def test_tampered_or_truncated_file_fails_with_one_line(run_cli, run_dir, tmp_path):
    data = bytearray((run_dir / "model.nsc").read_bytes())
    flipped, truncated, junk = tmp_path / "flipped.nsc", tmp_path / "truncated.nsc", tmp_path / "junk.nsc"
    data[len(data) - 100] ^= 0xFF
    flipped.write_bytes(bytes(data))
    truncated.write_bytes((run_dir / "model.nsc").read_bytes()[:-10])
    junk.write_text("hello")
    for path, needle in [(flipped, "corrupt or truncated"), (truncated, "corrupt or truncated"),
                         (junk, "not a netsift compact file"), (tmp_path / "missing.nsc", "no such run")]:
        one_line_error(*run_cli("eval", path)[::2], needle)


def test_header_hash_mismatch_fails(run_cli, run_dir, tmp_path):
    subnet = read_compact(run_dir / "model.nsc")
    subnet.info["weights_sha256"] = "0" * 64
    bad = tmp_path / "bad.nsc"
    bad.write_bytes(to_bytes(subnet))
    one_line_error(*run_cli("eval", bad)[::2], "regenerated weights do not match")
    one_line_error(*run_cli("export", bad, "--format", "onnx")[::2], "regenerated weights do not match")
    subnet = read_compact(run_dir / "model.nsc")  # a flipped mask bit under a recomputed checksum
    first = next(iter(subnet.masks))
    subnet.masks[first].view(-1)[0] ^= True
    bad.write_bytes(to_bytes(subnet))
    one_line_error(*run_cli("eval", bad)[::2], "rebuilt network does not match")


def test_export_refuses_to_overwrite_and_needs_a_subnet(run_cli, run_dir, tmp_path):
    out = tmp_path / "x.nsc"
    out.write_text("precious")
    one_line_error(*run_cli("export", run_dir, "--out", out)[::2], "--overwrite")
    assert out.read_text() == "precious"
    assert run_cli("export", run_dir, "--out", out, "--overwrite")[0] == 0 and read_compact(out).density > 0
    plain = tmp_path / "plain"
    plain.mkdir()
    save_model(plain, *load_model(run_dir))
    one_line_error(*run_cli("export", plain)[::2], "has no subnet.json")


def test_altered_model_file_is_refused(run_cli, tmp_path):
    run = make_run(tmp_path / "run")
    model, manifest = load_model(run)
    with torch.no_grad():
        prunable_layers(model)[0][1].weight[0, 0] += 1.0
    save_model(run, model, manifest)
    one_line_error(*run_cli("export", run)[::2], "differs from its masks")


@pytest.mark.slow
def test_safetensors_and_onnx_exports_load(run_cli, run_dir, tmp_path):
    import onnxruntime as ort

    model, _ = load_model(run_dir)
    code, out, err = run_cli("export", run_dir, "--format", "safetensors", "--out", tmp_path / "dense.safetensors")
    assert code == 0, err
    again, _ = load_model(tmp_path / "dense.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    for src in (run_dir, run_dir / "model.nsc"):  # a run folder or a compact file
        code, out, err = run_cli("export", src, "--format", "onnx", "--out", tmp_path / "m.onnx", "--overwrite")
        assert code == 0, err
        x = torch.randn(4, 1, 8, 8)
        got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, model.eval()(x).detach().numpy(), atol=1e-4)


def test_conv6_compact_is_25x_smaller_than_float32():
    manifest = {"model": "conv6", "width": 1.0, "in_channels": 3, "image_size": 32, "num_classes": 10}
    net = frozen_network(manifest, **INIT)
    gen = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(m.weight.shape, generator=gen) < 0.5 for n, m in prunable_layers(net)}
    subnet = subnet_of(manifest, INIT, masks, {n: 1.0 for n in masks})
    compact, dense = len(to_bytes(subnet)), dense_bytes(net)
    assert dense / compact >= 25, (compact, dense)
