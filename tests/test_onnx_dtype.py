"""ONNX through the current exporter (dynamo) with the legacy one as fallback, both checked in onnxruntime; a
wrong dtype is said to be a dtype problem, not a shape problem."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import netsift
from netsift import onnx_export
from netsift.errors import NetsiftError
from netsift.onnx_export import export_onnx

pytestmark = pytest.mark.usefixtures("one_thread")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).eval()


@pytest.mark.slow
def test_current_exporter_is_used_and_checked(tmp_path):
    pytest.importorskip("onnxruntime")
    path = export_onnx(_net(), (1, 6, 6), tmp_path / "m.onnx")
    assert path.is_file() and export_onnx.last_exporter == "dynamo"


def test_legacy_exporter_is_the_fallback(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")

    def broken(*args):
        raise RuntimeError("this model cannot be exported by torch.export\nmore lines")

    monkeypatch.setitem(onnx_export._EXPORT, "dynamo", broken)
    export_onnx(_net(), (1, 6, 6), tmp_path / "m.onnx")
    assert export_onnx.last_exporter == "legacy"
    monkeypatch.setitem(onnx_export._EXPORT, "legacy", broken)
    with pytest.raises(NetsiftError, match="dynamo: RuntimeError: this model cannot.*; legacy: RuntimeError") as e:
        export_onnx(_net(), (1, 6, 6), tmp_path / "n.onnx")
    assert "\n" not in str(e.value) and not (tmp_path / "n.onnx").exists()


def test_a_graph_onnxruntime_disagrees_with_falls_back_then_fails(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")

    def wrong(model, x, out, opset):  # a graph of another network
        onnx_export._legacy(nn.Sequential(nn.Flatten(), nn.Linear(36, 3)), x, out, opset)

    monkeypatch.setitem(onnx_export._EXPORT, "dynamo", wrong)
    export_onnx(_net(), (1, 6, 6), tmp_path / "m.onnx")
    assert export_onnx.last_exporter == "legacy"
    monkeypatch.setitem(onnx_export._EXPORT, "legacy", wrong)
    with pytest.raises(NetsiftError, match="does not match PyTorch in onnxruntime"):
        export_onnx(_net(), (1, 6, 6), tmp_path / "n.onnx")


def test_a_float64_model_is_told_about_its_dtype():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double()
    with pytest.raises(NetsiftError, match="weights are float64 but its inputs are float32") as e:
        netsift.train(model, "digits", epochs=1, progress=False)
    assert "shape" not in str(e.value)
    # your loader yielding float64 samples to a float32 model: the same class of message
    from torch.utils.data import DataLoader, TensorDataset

    x, y = torch.rand(40, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (40,))
    data = {"train": DataLoader(TensorDataset(x[:30], y[:30]), batch_size=8),
            "test": DataLoader(TensorDataset(x[30:], y[30:]), batch_size=8)}
    with pytest.raises(NetsiftError, match="weights are float32 but its inputs are float64"):
        netsift.train(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), data, epochs=1, progress=False)
