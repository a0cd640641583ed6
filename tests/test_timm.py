"""``timm:<name>`` models (the optional timm extra): built offline, pruned, saved and loaded back, --weights."""

from __future__ import annotations

import pytest
import torch

import netsift
from netsift.errors import NetsiftError
from netsift.models import build_for, build_model

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_timm_model_is_built_for_the_data_and_rebuilt_from_its_manifest(tmp_path):
    net = build_for("timm:resnet10t", (1, 16, 16), 7, seed=3)
    with torch.no_grad():
        assert net.eval()(torch.zeros(2, 1, 16, 16)).shape == (2, 7)
    again = build_for("timm:resnet10t", (1, 16, 16), 7, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    netsift.save_model(tmp_path, net)
    loaded, manifest = netsift.load_model(tmp_path)
    assert manifest["model"] == "timm:resnet10t"
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), net(x))


def test_vit_is_built_for_the_image_size():
    net = build_model("timm:vit_tiny_patch16_224", 3, 32, 10)
    assert net.patch_embed.img_size == (32, 32)


def test_timm_errors_are_one_line():
    with pytest.raises(NetsiftError, match="unknown timm model 'no_such_net'"):
        build_model("timm:no_such_net", 3, 32, 10)
    with pytest.raises(NetsiftError, match="never downloaded"):
        build_model("timm:resnet10t", 3, 32, 10, pretrained=True)
    with pytest.raises(NetsiftError, match="no width multiplier"):
        build_model("timm:resnet10t", 3, 32, 10, width=0.5)


@pytest.mark.slow
def test_prune_a_timm_model_from_a_local_weights_file(tmp_path, run_cli):
    from safetensors.torch import save_file

    source = build_model("timm:resnet10t", 3, 32, 1000)  # the layout of a published checkpoint (RGB, 1000 classes)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    code, out, err = run_cli("prune", "--model", "timm:resnet10t", "--weights", tmp_path / "w.safetensors",
                             "--data", "digits", "--image-size", "16", "--method", "l1", "--macs", "0.5",
                             "--finetune-epochs", "0", "--out", tmp_path / "run", "--latency-threads", "0")
    assert code == 0, err
    r = netsift.load_model(tmp_path / "run")[1]
    assert r["model"] == "timm:resnet10t"
    import json

    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["model"] == "timm:resnet10t" and abs(result["macs_fraction"] - 0.5) < 0.03
    assert result["weights"]["file"] == "w.safetensors"
    assert any("classifier re-initialised" in a for a in result["weights"]["adapted"])
    assert any("filters averaged" in a for a in result["weights"]["adapted"])


def _groups_and_left(name: str, size: int = 32):
    from netsift.selection.groups import find_groups

    net = build_for(f"timm:{name}", (3, size, size), 10, seed=0)
    left: list = []
    return find_groups(net, (3, size, size), skipped=left, verify=False), left


def test_a_runaway_dependency_walk_is_stopped_and_its_root_listed():
    # Torch-Pruning maps EfficientViT-M's attention channels onto spatial positions; its walk from the stage-2
    # stream grew to 100,000+ indices and ran for hours (timm coverage: timeout at 900 s)
    groups, left = _groups_and_left("efficientvit_m0")
    assert len(groups) >= 10
    runaway = [s for s in left if "more than any layer holds" in s.reason]
    assert runaway and all(s.layers and s.channels > 0 for s in runaway)


def test_a_root_torch_pruning_cannot_walk_leaves_only_its_own_group_whole():
    # GCViT: one root's walk raises ZeroDivisionError inside Torch-Pruning; it used to end the whole search
    groups, left = _groups_and_left("gcvit_xxtiny")
    assert len(groups) >= 10
    assert any(s.reason.startswith("Torch-Pruning cannot follow it (ZeroDivisionError") for s in left)


@pytest.mark.slow
def test_a_reshape_torch_pruning_infers_as_zero_channels_does_not_end_the_trace():
    # SHViT: Torch-Pruning divided by the 0 channels it inferred for a reshape and the whole trace failed
    groups, _ = _groups_and_left("shvit_s1")
    assert len(groups) >= 10
