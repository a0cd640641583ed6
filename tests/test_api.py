"""The public API on plain PyTorch objects: your own nn.Module and DataLoaders (hermetic: scikit-learn digits)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import netsift
from netsift.errors import NetsiftError
from netsift.results import RESULT_KEYS, Result

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(y)
    return x, y


def loaders(digits, val: bool = False):
    x, y = digits
    out = {"train": DataLoader(TensorDataset(x[:1200], y[:1200]), batch_size=64, shuffle=True),
           "test": DataLoader(TensorDataset(x[1400:], y[1400:]), batch_size=256)}
    if val:
        out["val"] = DataLoader(TensorDataset(x[1200:1400], y[1200:1400]), batch_size=256)
    return out


def cnn(seed: int = 0, bn: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), norm(16), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         norm(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


@pytest.mark.slow
def test_prune_your_own_module_with_your_own_loaders(digits, tmp_path):
    model = cnn()
    trained = netsift.train(model, loaders(digits, val=True), epochs=4, lr=0.1, latency_threads=None)
    assert trained.model is model and trained.arch == "custom:Sequential" and trained.test_acc > 0.5
    result = netsift.prune(model, loaders(digits), method="gfs", macs=0.5, finetune_epochs=1, candidates=4,
                           out=tmp_path / "run")
    assert isinstance(result, Result) and isinstance(result.model, nn.Module)
    assert abs(result.macs_fraction - 0.5) < 0.03 and result.finetuned and result.source_test_acc == trained.test_acc
    assert result.model[0].out_channels < 16 and result.model[3].out_channels < 32  # really smaller
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert list(on_disk) == list(RESULT_KEYS) and on_disk["test_acc"] == result.test_acc == result["test_acc"]
    # the pruned weights load back into a fresh instance of the user's own class
    fresh = netsift.load_weights(cnn(seed=5), tmp_path / "run")
    x = digits[0][:8]
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), result.model.eval()(x))
    with pytest.raises(NetsiftError, match="load_weights"):
        netsift.load_model(tmp_path / "run")


@pytest.mark.slow
def test_ignored_layers_and_per_layer_density(digits):
    model = cnn()
    result = netsift.prune(model, loaders(digits), method="l1", ignored_layers=[model[0]],
                           layer_density={"3": 0.25}, finetune_epochs=0, latency_threads=None)
    assert result.model[0].out_channels == 16 and result.model[3].out_channels == 8
    assert result.finetuned is False and result.test_acc == result.test_acc_selected


@pytest.mark.slow
def test_masks_on_a_conv_bn_module_test_accuracy_matches_training_accuracy(digits, tmp_path):
    """BN statistics gathered under sampled masks describe the wrong network: they are re-estimated under the
    extracted mask before every validation and at the end, so validation and test accuracy match training."""
    result = netsift.extract(cnn(bn=True), loaders(digits), "gumbel", epochs=6, batch_size=64, seed=0,
                             out=tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_acc = rows[-1]["train_acc"]  # sampled masks, batch statistics: what training sees
    assert result.test_acc > 0.3 and abs(result.test_acc - train_acc) < 0.1, (result.test_acc, train_acc)
    assert all(r["val_acc"] > r["train_acc"] - 0.08 for r in rows[1:]), rows  # stale statistics: 0.13-0.16 lower
    assert result.recalibrated_bn == 20 and 0 < result.density < 1 and result.init == "signed-constant"


@pytest.mark.slow
def test_same_seed_same_subnetwork_from_api_and_cli(run_cli, tmp_path):
    args = ["--method", "gumbel", "--model", "lenet300", "--width", "0.2", "--data", "digits", "--epochs", "2",
            "--max-steps", "6", "--seed", "3"]
    code, _, err = run_cli("extract", *args, "--out", tmp_path / "cli")
    assert code == 0, err
    api = netsift.extract("lenet300", "digits", "gumbel", width=0.2, epochs=2, max_steps=6, seed=3)
    cli = json.loads((tmp_path / "cli" / "result.json").read_text())
    assert cli["test_acc"] == api.test_acc and cli["density"] == api.density
    cli_model, _ = netsift.load_model(tmp_path / "cli")
    for a, b in zip(cli_model.state_dict().values(), api.model.state_dict().values()):
        assert torch.equal(a, b)


def test_val_is_carved_from_train_when_absent(digits):
    from netsift.data import as_bundle

    bundle = as_bundle(loaders(digits), seed=1, val_fraction=0.25)
    assert bundle.size("train") == 900 and bundle.size("val") == 300 and bundle.input_shape == (1, 8, 8)
    x, y = next(iter(bundle.loader("train", 32, shuffle=True)))
    assert x.shape == (32, 1, 8, 8) and y.dtype == torch.long


class _Dicts(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"x": torch.zeros(1, 8, 8), "y": 0}


@pytest.mark.parametrize("make, match", [
    (lambda d: {"train": loaders(d)["train"]}, "lacks the 'test' split"),
    (lambda d: {"train": DataLoader(_Dicts()), "test": DataLoader(_Dicts())}, r"\(input.*label\) pairs"),
    (lambda d: {"train": TensorDataset(d[0][:100].view(100, 64), d[1][:100]),
                "test": TensorDataset(d[0][:50], d[1][:50])}, "different shapes"),
    (lambda d: [1, 2, 3], "data must be"),
    (lambda d: {"train": loaders(d)["train"], "test": loaders(d)["test"], "extra": None}, "unknown splits"),
])
def test_bad_data_is_one_clear_line(digits, make, match):
    with pytest.raises(NetsiftError, match=match) as e:
        netsift.train(cnn(), make(digits), epochs=1)
    assert "\n" not in str(e.value)


def test_wrong_model_for_the_data_is_one_clear_line(digits):
    with pytest.raises(NetsiftError, match="cannot take inputs of shape"):
        netsift.train(nn.Sequential(nn.Flatten(), nn.Linear(30, 10)), loaders(digits), epochs=1)
    with pytest.raises(NetsiftError, match="3 outputs but the data has 10 classes"):
        x, y = digits
        data = {"train": TensorDataset(x[:100], y[:100]), "test": TensorDataset(x[100:200], y[100:200])}
        netsift.train(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), data, epochs=1)
    class Plain(torch.utils.data.Dataset):  # says nothing about its classes: the labels are checked in training
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            return digits[0][i], digits[1][i]

    with pytest.raises(NetsiftError, match="labels 0..9 do not fit the model's 3 outputs"):
        netsift.train(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), {"train": Plain(100), "test": Plain(50)},
                      epochs=1)


def test_unknown_methods_and_options_never_fall_through(digits):
    with pytest.raises(NetsiftError, match="unknown method 'obd'"):
        netsift.prune(cnn(), loaders(digits), method="obd", macs=0.5)
    with pytest.raises(NetsiftError, match="unknown method 'gumbell'"):
        netsift.extract(cnn(), loaders(digits), method="gumbell")
    with pytest.raises(NetsiftError, match="--tau applies to --method gumbel only"):
        netsift.extract(cnn(), loaders(digits), method="edge-popup", tau=0.5)
    with pytest.raises(NetsiftError, match="unknown option 'epoch'"):
        netsift.train(cnn(), loaders(digits), epoch=3)
    with pytest.raises(NetsiftError, match="needs batch norm"):
        netsift.prune(cnn(bn=False), loaders(digits), method="bn-scale", macs=0.5)


@pytest.mark.slow
def test_models_torch_pruning_cannot_follow_are_one_clear_line(digits, monkeypatch):
    class Mixer(nn.Module):  # channels mixed by an einsum over a raw parameter: Torch-Pruning loops on it
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 16) * 0.1)

        def forward(self, x):
            return torch.einsum("bchw,dc->bdhw", x, self.w)

    class Pair(nn.Module):  # returns more than logits
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return {"logits": self.fc(x.flatten(1))}

    data = {"train": TensorDataset(*[t[:200] for t in digits]), "test": TensorDataset(*[t[200:300] for t in digits])}
    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), Mixer(), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
    # Torch-Pruning's walk runs away on the einsum; it is stopped at once and named
    with pytest.raises(NetsiftError, match="no prunable channel groups.*more than any layer holds") as e:
        netsift.prune(model, data, method="l1", macs=0.5, finetune_epochs=0)
    assert "\n" not in str(e.value)
    # and an analysis that is merely slow ends at NETSIFT_GRAPH_TIMEOUT
    from netsift.selection import pruner

    monkeypatch.setenv("NETSIFT_GRAPH_TIMEOUT", "1")
    monkeypatch.setattr(pruner, "find_groups", lambda *a, **k: time.sleep(30))
    with pytest.raises(NetsiftError, match="could not resolve the model's channel dependencies within 1 s") as e:
        netsift.prune(model, data, method="l1", macs=0.5, finetune_epochs=0)
    assert "\n" not in str(e.value)
    with pytest.raises(NetsiftError, match=r"must return \(batch, classes\) logits"):
        netsift.prune(Pair(), data, method="l1", macs=0.5)


@pytest.mark.slow
def test_image_folder_data_trains(tmp_path, run_cli):
    """``--data imagenet`` (an ImageFolder) goes through the seeded loader with set_epoch."""
    from PIL import Image

    for split in ("train", "val"):
        for c in ("cat", "dog"):
            (tmp_path / "img" / split / c).mkdir(parents=True)
            for i in range(4):
                color = (255, 0, 0) if c == "cat" else (0, 0, 255)
                Image.new("RGB", (40, 30), color).save(tmp_path / "img" / split / c / f"{i}.png")
    code, out, err = run_cli("train", "--model", "conv2", "--width", "0.0625", "--data", "imagenet", "--data-dir",
                             tmp_path / "img", "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25",
                             "--out", tmp_path / "run")
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["data"] == "imagenet" and 0 <= result["test_acc"] <= 1


def test_same_seed_same_mask_from_cli_api_and_the_long_benchmark(run_cli, tmp_path):
    """One gumbel cell of ``benchmarks/masks_long.py`` on digits gives the result of ``netsift extract`` and of
    ``netsift.extract`` with the same seed and settings (the benchmark's numbers are what a user gets)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("masks_long", ROOT / "benchmarks" / "masks_long.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args(["--data", "digits", "--runs", str(tmp_path / "bench"), "--out", str(tmp_path / "b")])
    args.arch_settings["lenet300"].update(width=0.2, train_subset=None, epochs=2, patience=2)
    row = bench.run_cell("lenet300", "gumbel-lr1000", 3, args)
    flags = dict(width=0.2, epochs=2, patience=2, batch_size=128, lr=1000.0, schedule="constant", seed=3)
    api = netsift.extract("lenet300", "digits", "gumbel", **flags)
    code, _, err = run_cli("extract", "--method", "gumbel", "--model", "lenet300", "--data", "digits",
                           *[a for k, v in flags.items() for a in (f"--{k.replace('_', '-')}", str(v))],
                           "--out", tmp_path / "cli")
    assert code == 0, err
    cli = json.loads((tmp_path / "cli" / "result.json").read_text())
    assert row["test_acc"] == api.test_acc == cli["test_acc"]
    assert row["density"] == api.density == cli["density"]
