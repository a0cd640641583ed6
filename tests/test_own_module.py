"""Your own module and your own data, all the way: extract -> compact file -> a fresh instance -> the same test
accuracy bit for bit, in Python and on the command line; evaluate and export take what a run returned."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, Dataset, TensorDataset

import netsift
from netsift.errors import NetsiftError
from usernets import OtherCNN, UserCNN

pytestmark = pytest.mark.usefixtures("one_thread")
HERE = Path(__file__).resolve().parent


def _digits_8bit():
    """Digits as 8-bit grey images (what an image folder of them gives back exactly), pixels in [0, 1]."""
    x, y = load_digits(return_X_y=True)
    u8 = torch.tensor(x * 15, dtype=torch.uint8).view(-1, 1, 8, 8)
    return u8, torch.tensor(y)


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """UserCNN extracted on your own loaders (a run folder), and the data."""
    u8, y = _digits_8bit()
    x = u8.float() / 255
    data = {"train": DataLoader(TensorDataset(x[:1200], y[:1200]), batch_size=64, shuffle=True),
            "test": DataLoader(TensorDataset(x[1500:], y[1500:]), batch_size=128)}
    root = tmp_path_factory.mktemp("own")
    torch.manual_seed(0)
    sub = netsift.extract(UserCNN(), data, method="gumbel", epochs=2, out=root / "run", progress=False)
    return sub, data, root, (u8[1500:], y[1500:])


@pytest.mark.slow
def test_python_round_trip_is_bit_exact(own_run, tmp_path):
    sub, data, root, _ = own_run
    assert sub.subnet == "subnet.safetensors" and sub.compact is not None
    r = netsift.export(sub, "compact", tmp_path / "sub.nsc")
    assert r.bytes < r.dense_bytes
    fresh = netsift.load_compact(tmp_path / "sub.nsc", model=UserCNN())
    want = sub.model.state_dict()
    assert set(fresh.state_dict()) == set(want)
    assert all(torch.equal(v, want[k]) for k, v in fresh.state_dict().items())
    m = netsift.evaluate(tmp_path / "sub.nsc", {"test": data["test"]}, model=UserCNN(), progress=False)
    assert m["test_acc"] == sub.test_acc and m["saved_test_acc"] == sub.test_acc
    # the run folder exports the same file, and evaluate takes the returned result and the run folder too
    assert netsift.export(root / "run", "compact", tmp_path / "run.nsc").bytes == r.bytes
    assert netsift.evaluate(sub, {"test": data["test"]}, progress=False)["test_acc"] == sub.test_acc
    assert netsift.evaluate(root / "run", {"test": data["test"]}, model=UserCNN(), progress=False)["test_acc"] \
        == sub.test_acc


def test_the_compact_file_records_what_it_was_made_on(own_run, tmp_path):
    from netsift.masks.compact import read_compact

    sub, _, _, _ = own_run
    netsift.export(sub, "compact", tmp_path / "sub.nsc")
    info = read_compact(tmp_path / "sub.nsc")
    assert info.manifest["model"] == "custom:UserCNN" and len(info.manifest["structure"]) == 64
    assert info.info["data"] == "custom" and info.info["input_shape"] == [1, 8, 8] and info.info["num_classes"] == 10


def test_cli_export_and_eval_with_your_module_and_an_image_folder(own_run, run_cli, tmp_path, monkeypatch):
    from PIL import Image

    sub, _, root, (u8, y) = own_run
    for i, (img, label) in enumerate(zip(u8, y)):
        folder = tmp_path / "images" / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy()).save(folder / f"{i:04d}.png")
    code, out, err = run_cli("export", root / "run", "--out", tmp_path / "model.nsc")
    assert code == 0, err
    module = f"{HERE / 'usernets.py'}:UserCNN"
    code, out, err = run_cli("eval", tmp_path / "model.nsc", "--module", module, "--images", tmp_path / "images")
    assert code == 0, err
    assert f"{sub.test_acc:.4f}" in out  # test_acc and saved_test_acc, side by side
    assert out.count(f"{sub.test_acc:.4f}") == 2
    code, out, err = run_cli("export", tmp_path / "model.nsc", "--format", "safetensors", "--module", module)
    assert code == 0, err
    from safetensors.torch import load_file

    dense = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(dense[k], v) for k, v in sub.model.state_dict().items())
    # the wrong module, or none, is refused in one line
    code, out, err = run_cli("eval", tmp_path / "model.nsc", "--module", f"{HERE / 'usernets.py'}:OtherCNN",
                             "--images", tmp_path / "images")
    assert code == 2 and "structure hash" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("eval", tmp_path / "model.nsc", "--images", tmp_path / "images")
    assert code == 2 and "--module" in err
    code, out, err = run_cli("eval", tmp_path / "model.nsc", "--module", module)
    assert code == 2 and "your own data" in err


def test_a_built_in_data_set_name_evaluates_a_file_made_on_your_data(own_run, tmp_path):
    sub, _, _, _ = own_run
    netsift.export(sub, "compact", tmp_path / "sub.nsc")
    m = netsift.evaluate(tmp_path / "sub.nsc", "digits", model=UserCNN(), progress=False)
    assert m["data"] == "digits" and 0 <= m["test_acc"] <= 1


@pytest.mark.slow
def test_onnx_and_safetensors_take_the_module_a_run_returned(own_run, tmp_path):
    pytest.importorskip("onnxruntime")
    sub, _, root, _ = own_run
    r = netsift.export(sub, "onnx", tmp_path / "sub.onnx")
    assert Path(r["path"]).is_file()
    r = netsift.export(sub.model, "safetensors", tmp_path / "m.safetensors")
    fresh = netsift.load_weights(UserCNN(), tmp_path / "m")
    assert all(torch.equal(v, sub.model.state_dict()[k]) for k, v in fresh.state_dict().items())
    # a run folder of your own module: safetensors needs no module, onnx needs it
    netsift.export(root / "run", "safetensors", tmp_path / "d.safetensors")
    with pytest.raises(NetsiftError, match="your own module"):
        netsift.export(root / "run", "onnx", tmp_path / "r.onnx")
    netsift.export(root / "run", "onnx", tmp_path / "r.onnx", model=UserCNN())
    with pytest.raises(NetsiftError, match="compact export takes the result of netsift.extract"):
        netsift.export(sub.model, "compact", tmp_path / "x.nsc")


def test_weights_that_no_seed_regenerates_give_no_compact_file_and_say_why(tmp_path, capsys, monkeypatch):
    u8, y = _digits_8bit()
    x = u8.float() / 255
    data = {"train": TensorDataset(x[:300], y[:300]), "test": TensorDataset(x[300:400], y[300:400])}
    monkeypatch.setenv("NETSIFT_PROGRESS", "lines")
    sub = netsift.extract(UserCNN(), data, method="random", density=0.5, epochs=1, init=None, out=tmp_path / "r")
    assert sub.subnet is None and sub.compact is None
    assert "no compact subnetwork file: its frozen weights are the network's own" in capsys.readouterr().err
    with pytest.raises(NetsiftError, match="no seed regenerates"):
        netsift.export(tmp_path / "r", "compact")
    with pytest.raises(NetsiftError, match="no compact subnetwork"):
        netsift.export(sub, "compact", tmp_path / "x.nsc")


class _Unlabelled(Dataset):
    """A data set that does not say how many classes it has (no classes, labels or targets attribute)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_a_zoo_network_counts_the_classes_from_your_labels():
    u8, y = _digits_8bit()
    x = u8.float() / 255
    y = y % 7  # 7 classes
    data = {"train": _Unlabelled(x[:200], y[:200]), "test": _Unlabelled(x[200:260], y[200:260])}
    r = netsift.train("lenet300", data, epochs=1, width=0.1, progress=False)
    last = [m for m in r.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert last.out_features == 7


def test_structure_hash_tells_architectures_apart():
    from netsift.structure import structure_hash

    assert structure_hash(UserCNN()) == structure_hash(UserCNN())
    assert structure_hash(UserCNN()) != structure_hash(OtherCNN())
    assert structure_hash(UserCNN()) != structure_hash(UserCNN().double())
