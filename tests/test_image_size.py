"""--image-size (the data resized batch by batch) and --weights (a local state dict) end to end (issue 14)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

import netsift
from netsift.config import DataConfig
from netsift.data import load_data
from netsift.errors import NetsiftError
from netsift.rundir import read_run_config

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ["--data", "digits", "--epochs", "1", "--batch-size", "64", "--train-subset", "256", "--cpu"]


class NotATensor:
    """An arbitrary object a ``weights_only`` load must refuse to unpickle."""


def one_line_refusal(code: int, err: str, needle: str) -> None:
    assert code != 0 and needle in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def resized_run(tmp_path_factory):
    """A lenet300 trained on digits resized from 8 to 12 px."""
    out = tmp_path_factory.mktemp("resized") / "run"
    netsift.train("lenet300", "digits", epochs=2, batch_size=64, image_size=12, out=out)
    return out


def test_the_data_is_resized_per_batch_not_in_memory():
    bundle = load_data("digits", image_size=64)
    assert bundle.input_shape == (1, 64, 64) and bundle.image_size == 64
    assert tuple(bundle.train.images.shape[1:]) == (1, 8, 8)  # held at its own size
    for split in ("train", "val", "test"):
        x, _ = next(iter(bundle.loader(split, 16, augment=split == "train", shuffle=True)))
        assert x.shape == (16, 1, 64, 64)
    assert bundle.config["image_size"] == 64
    assert "image_size" not in load_data("digits").config  # unchanged settings (and run names) without it
    plain = load_data("digits", image_size=8)
    assert torch.equal(next(iter(plain.loader("test", 8)))[0], next(iter(load_data("digits").loader("test", 8)))[0])


@pytest.mark.parametrize("bad", [0, -1, 1025, 10**9, 1.5, True, "32"])
def test_bad_sizes_are_refused_by_the_api(bad, tmp_path):
    with pytest.raises(NetsiftError, match="image_size|image-size|must be"):
        netsift.train("lenet300", "digits", epochs=1, image_size=bad, out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_image_size_only_resizes_what_netsift_loads():
    with pytest.raises(NetsiftError, match="conflicts"):
        netsift.train("lenet300", DataConfig(image_size=16), epochs=1, image_size=12)
    x, y = torch.rand(20, 1, 8, 8), torch.arange(20) % 2
    own = {"train": torch.utils.data.TensorDataset(x, y), "test": torch.utils.data.TensorDataset(x, y)}
    with pytest.raises(NetsiftError, match="resize your own data"):
        netsift.train("lenet300", own, epochs=1, image_size=12)


@pytest.mark.slow
def test_train_records_the_size_and_prune_and_eval_keep_it(resized_run, run_cli, tmp_path):
    config = json.loads((resized_run / "config.json").read_text())
    result = json.loads((resized_run / "result.json").read_text())
    manifest = json.loads((resized_run / "model.json").read_text())["manifest"]
    assert config["data"]["image_size"] == 12 and result["image_size"] == 12 and manifest["image_size"] == 12
    assert result["layers"][0]["shape"] == [300, 144]  # 12 x 12 inputs
    code, out, err = run_cli("eval", resized_run)
    assert code == 0 and f"{result['test_acc']:.4f}" in out, err
    pruned = tmp_path / "pruned"
    code, out, err = run_cli("prune", "--checkpoint", resized_run, "--method", "l1", "--macs", "0.5",
                             "--finetune-epochs", "0", "--out", pruned)
    assert code == 0, err
    assert json.loads((pruned / "result.json").read_text())["image_size"] == 12
    assert json.loads((pruned / "config.json").read_text())["data"]["image_size"] == 12
    # the run folder as a positional argument, as eval and export take it
    code, out, err = run_cli("prune", resized_run, "--method", "l1", "--macs", "0.5",
                             "--image-size", "12", "--finetune-epochs", "0", "--out", tmp_path / "same")
    assert code == 0, err
    assert json.loads((tmp_path / "same" / "result.json").read_text())["image_size"] == 12
    code, out, err = run_cli("prune", resized_run, "--checkpoint", pruned, "--macs", "0.5", "--out", tmp_path / "two")
    assert code == 2 and "two run folders" in err and not (tmp_path / "two").exists()


def test_an_edited_size_in_config_json_is_refused(resized_run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(resized_run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["data"]["image_size"] = 100_000
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(NetsiftError, match=r"data.image_size must be an integer in \[1, 1024\]"):
        read_run_config(copy)


@pytest.mark.parametrize("argv, needle", [
    (["prune", "--image-size", "16"], "was trained with image_size=12, not 16"),
    (["eval", "--image-size", "16"], "does not fit the saved model"),
])
def test_a_size_the_checkpoint_was_not_trained_at_is_refused(resized_run, run_cli, tmp_path, argv, needle):
    extra = ["--checkpoint", resized_run, "--method", "l1", "--macs", "0.5", "--out", tmp_path / "o"] \
        if argv[0] == "prune" else [resized_run]
    code, _, err = run_cli(*argv, *extra)
    one_line_refusal(code, err, needle)
    assert not (tmp_path / "o").exists()
    with pytest.raises(NetsiftError, match="image_size=12, not 16"):
        netsift.prune(resized_run, method="l1", macs=0.5, image_size=16)


@pytest.mark.parametrize("value, needle", [
    ("0", "--image-size must be between 1 and 1,024, got 0"),
    ("-4", "--image-size must be between 1 and 1,024, got -4"),
    ("5000", "--image-size must be between 1 and 1,024, got 5000"),
    ("1.5", "invalid int value"),
    ("big", "invalid int value"),
])
@pytest.mark.parametrize("command", ["train", "extract", "prune"])
def test_bad_image_size_on_the_command_line(run_cli, tmp_path, command, value, needle):
    extra = ["--model", "lenet300", "--method", "l1"] if command == "prune" else []
    code, _, err = run_cli(command, *extra, f"--image-size={value}", "--out", tmp_path / "o")
    one_line_refusal(code, err, needle)
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_tv_model_takes_grey_images_at_the_size_it_needs(run_cli, tmp_path):
    """SqueezeNet 1.1 needs at least 17 px: digits (8 px) reach it only through --image-size."""
    code, _, err = run_cli("prune", "--model", "tv:squeezenet1_1", "--data", "digits", "--method", "l1", "--macs",
                           "0.5", "--out", tmp_path / "small")
    one_line_refusal(code, err, "needs images of at least 17 px")
    out = tmp_path / "run"
    code, stdout, err = run_cli("prune", "--model", "tv:squeezenet1_1", "--data", "digits", "--image-size", "24",
                                "--train-subset", "64", "--method", "l1", "--macs", "0.5", "--finetune-epochs", "0",
                                "--select-batch", "32", "--latency-threads", "0", "--out", out)
    assert code == 0, err
    manifest = json.loads((out / "model.json").read_text())["manifest"]
    assert (manifest["in_channels"], manifest["image_size"]) == (1, 24)


def _trained_state(tmp_path) -> tuple[dict, float]:
    """A lenet300 trained on digits: its state dict and test accuracy."""
    r = netsift.train("lenet300", "digits", epochs=3, batch_size=64, seed=5)
    return {k: v.contiguous() for k, v in r.model.state_dict().items()}, r.test_acc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return _trained_state(tmp_path_factory.mktemp("trained"))


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
@pytest.mark.slow
def test_weights_round_trip(trained, run_cli, tmp_path, fmt):
    from safetensors.torch import save_file

    state, acc = trained
    assert acc > 0.5
    path = tmp_path / f"lenet.{fmt}"
    save_file(state, str(path)) if fmt == "safetensors" else torch.save({"state_dict": state}, path)
    out = tmp_path / "run"
    code, stdout, err = run_cli("prune", "--model", "lenet300", "--weights", path, "--data", "digits",
                                "--method", "l1", "--macs", "0.9", "--finetune-epochs", "0", "--out", out)
    assert code == 0, err
    result = json.loads((out / "result.json").read_text())
    assert result["source_test_acc"] == pytest.approx(acc)  # the network pruned is the trained one
    record = read_run_config(out)["weights"]  # schema-checked
    assert record == result["weights"]
    assert record["file"] == path.name and record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert f"weights: {path.name}" in stdout
    # the API takes the same file; train starts from it (one step of a tiny lr keeps the accuracy)
    r = netsift.train("lenet300", "digits", epochs=1, max_steps=1, lr=1e-9, weight_decay=0.0, weights=path)
    assert r.weights["sha256"] == record["sha256"] and r.test_acc == pytest.approx(acc, abs=0.01)


@pytest.mark.slow
def test_rgb_weights_load_into_a_grey_tv_model(run_cli, tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(0)
    rgb = mobilenet_v3_small(num_classes=1000)
    path = tmp_path / "mobilenet.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.state_dict().items()}, str(path))
    r = netsift.extract("tv:mobilenet_v3_small", DataConfig(train_subset=64), "random", 0.5, epochs=1, batch_size=64,
                        image_size=16, weights=path, recalibrate_bn_batches=0, cpu=True)
    assert r.init == "keep" and r.image_size == 16
    assert any("3-channel filters averaged for 1 channels" in n for n in r.weights["adapted"])
    assert any("classifier re-initialised (1000 -> 10 classes)" in n for n in r.weights["adapted"])
    code, stdout, err = run_cli("train", "--model", "tv:mobilenet_v3_small", "--weights", path, "--image-size", "16",
                                *QUICK, "--max-steps", "1", "--out", tmp_path / "run")
    assert code == 0, err
    assert "adapted: features.0.0: 3-channel filters averaged for 1 channels" in stdout
    from netsift.rundir import load_model

    model, manifest = load_model(tmp_path / "run")
    assert manifest["in_channels"] == 1 and manifest["image_size"] == 16


def test_bad_weights_files_are_refused_before_anything_is_written(trained, run_cli, tmp_path):
    from safetensors.torch import save_file

    state, _ = trained
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x04 not a pickle")
    torch.save({"weight": NotATensor()}, tmp_path / "object.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    save_file({"fc.weight": torch.zeros(3, 3)}, str(tmp_path / "other.safetensors"))
    first = next(k for k in state if k.endswith("weight"))
    save_file({**state, first: torch.zeros(state[first].shape[0], 7)}, str(tmp_path / "wrong.safetensors"))
    cases = [("missing.pt", "does not exist"), ("corrupt.safetensors", "not a readable safetensors file"),
             ("corrupt.pth", "corrupt.pth"), ("object.pth", "refusing to unpickle"),
             ("list.pth", "not a state dict"), ("other.safetensors", "does not fit"),
             ("wrong.safetensors", f"{first} has shape")]
    for name, needle in cases:
        for command in ("train", "extract", "prune"):
            extra = ["--method", "l1"] if command == "prune" else []
            code, _, err = run_cli(command, "--model", "lenet300", *extra, "--weights", tmp_path / name,
                                   "--out", tmp_path / "o")
            one_line_refusal(code, err, needle)
            assert not (tmp_path / "o").exists(), (name, command)


def test_weights_need_a_model_built_by_name(resized_run, run_cli, tmp_path, trained):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file(trained[0], str(path))
    code, _, err = run_cli("prune", "--checkpoint", resized_run, "--weights", path, "--method", "l1",
                           "--out", tmp_path / "o")
    one_line_refusal(code, err, "weights apply to a network built by name")
    code, _, err = run_cli("train", "--model", "tv:resnet18", "--pretrained", "--weights", path, "--out",
                           tmp_path / "o")
    one_line_refusal(code, err, "--weights and --pretrained")
    assert not (tmp_path / "o").exists()
    with pytest.raises(NetsiftError, match="built by name"):
        netsift.train(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), "digits", weights=path)
