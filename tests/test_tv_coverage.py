"""torchvision coverage: every classification model under ~30 M parameters prunes (l1, 50% of its MACs), saves,
loads back without the pruning code and runs; the architecture fixes behind it; input sizes and weight files.

Random weights, small inputs, no fine-tuning. The larger models, every method and GFS are in
``benchmarks/tv_coverage.py``.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

import pytest
import torch
import torchvision
from torch import nn

from netsift.errors import NetsiftError
from netsift.models import build_model
from netsift.models.torchvision_models import load_weights_file
from netsift.rundir import load_model, save_model
from netsift.selection.groups import build_graph, find_groups
from netsift.selection.removal import removal_error, remove_channels
from netsift.surgery import module_sizes
from prune_roundtrip import round_trip

pytestmark = pytest.mark.usefixtures("one_thread")

TV = torchvision.models.list_models(module=torchvision.models)
SMALL = [n for n in TV if torchvision.models.get_model_weights(n).DEFAULT.meta["num_params"] < 30e6]
# 32 px unless the model needs more; Swin where its windows (7x7; V2: 8x8) need little padding (at 32 px the
# padded attention, kept whole, is ~89% of its MACs and a 50% budget is out of reach)
SIZE = {"inception_v3": 75, "swin_t": 112, "swin_v2_t": 128}
SLOW = {"densenet161", "densenet169", "densenet201", "swin_t", "swin_v2_t", "inception_v3", "efficientnet_b4",
        "efficientnet_v2_s", "regnet_y_3_2gf", "regnet_x_3_2gf"}  # 10-30 s each on one busy core
TIME_BOX_S = 180


@contextmanager
def time_box(seconds: int):
    """Fail (instead of hanging) when the block runs longer than ``seconds``."""
    def expire(signum, frame):
        raise TimeoutError(f"over the {seconds} s time box")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_the_small_set_is_what_the_issue_names():
    assert len(TV) >= 80 and 40 <= len(SMALL) <= 50
    for family in ("regnet_x_400mf", "resnext50_32x4d", "mnasnet0_5", "convnext_tiny", "shufflenet_v2_x1_0", "swin_t"):
        assert family in SMALL


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in SMALL])
@pytest.mark.slow
def test_model_prunes_saves_loads_back_and_runs(name, tmp_path):
    with time_box(TIME_BOX_S):
        r = round_trip(f"tv:{name}", 3, SIZE.get(name, 32), 10, method="l1", macs=0.5, out_dir=tmp_path)
    assert abs(r["macs_fraction"] - 0.5) <= 0.01, r
    assert r["reload_max_diff"] <= 1e-5 and r["features_max_diff"] <= 1e-5 * max(1.0, r["features_scale"]), r
    assert r["groups"] >= 2


# ------------------------------------------------------------------------------------- architecture fixes


def _masked_equals_pruned(model: nn.Module, shape, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a classifier initialised at zero (torchvision's ViT) would make the comparison empty
        for m in model.modules():
            if isinstance(m, nn.Linear) and not m.weight.any():
                m.weight.normal_(0, 0.1, generator=g)
    groups = find_groups(model, shape)
    kept = {gr.name: sorted(torch.randperm(gr.size, generator=g)[:max(1, gr.size // 2)].tolist()) for gr in groups}
    pruned = remove_channels(model, shape, kept).eval()
    error = removal_error(model, pruned, groups, kept, True, torch.randn(2, *shape))
    assert error is not None and error < 1e-4, error
    return pruned


@pytest.mark.slow
def test_grouped_convolutions_keep_the_same_positions_in_every_group():
    torch.manual_seed(0)
    model = build_model("tv:regnet_y_400mf", 3, 16, 10).eval()
    groups = find_groups(model, (3, 16, 16))
    assert any(g.unit > 1 for g in groups)  # selected in units of one channel per convolution group
    before = {n: m.groups for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    pruned = _masked_equals_pruned(model, (3, 16, 16))
    for n, m in pruned.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.groups == before[n] and m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0


def test_channel_shuffle_is_kept_whole_and_branches_are_pruned():
    torch.manual_seed(0)
    model = build_model("tv:shufflenet_v2_x0_5", 3, 16, 10).eval()
    skipped: list = []
    groups = find_groups(model, (3, 16, 16), skipped=skipped)
    assert groups and all(".branch" in g.name or g.name in ("conv1.0", "conv5.0") for g in groups)
    assert any("shuffle" in s.reason for s in skipped)
    _masked_equals_pruned(model, (3, 16, 16))


def test_vit_keeps_its_embedding_width_and_prunes_mlp_widths(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=5).eval()
    skipped: list = []
    groups = find_groups(model, (3, 32, 32), skipped=skipped)
    assert [g.name for g in groups] == ["encoder.layers.encoder_layer_0.mlp.0", "encoder.layers.encoder_layer_1.mlp.0"]
    assert any("embedding width of attention layer" in s.reason for s in skipped)
    pruned = _masked_equals_pruned(model, (3, 32, 32))
    assert pruned.conv_proj.out_channels == 16 and pruned.encoder.layers[0].mlp[0].out_features == 16


@pytest.mark.slow
def test_unrecorded_tensors_are_in_the_manifest(tmp_path):
    """ConvNeXt's layer scale (a bare parameter) is resized by removal and rebuilt from the manifest."""
    torch.manual_seed(0)
    model = build_model("tv:convnext_tiny", 3, 32, 10).eval()
    groups = find_groups(model, (3, 32, 32))
    pruned = remove_channels(model, (3, 32, 32), {g.name: list(range(g.size // 2)) for g in groups}).eval()
    sizes = module_sizes(pruned)
    assert sizes["features.1.0.layer_scale"]["type"] == "parameter"
    assert sizes["features.1.0.layer_scale"]["shape"][0] < 96
    assert sizes["features.0.1"]["type"] == "LayerNorm"  # LayerNorm2d, by its kind
    manifest = {"model": "tv:convnext_tiny", "width": 1.0, "in_channels": 3, "image_size": 32, "num_classes": 10,
                "modules": sizes}
    save_model(tmp_path, pruned, manifest)
    loaded, _ = load_model(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), pruned(x))


def test_mnasnet_loads_a_state_dict_without_version_metadata():
    torch.manual_seed(0)
    a, b = build_model("tv:mnasnet0_5", 3, 16, 10), build_model("tv:mnasnet0_5", 3, 16, 10)
    b.load_state_dict(dict(a.state_dict()))  # a plain dict, as read from safetensors
    assert torch.equal(a.state_dict()["layers.0.weight"], b.state_dict()["layers.0.weight"])


class _FixedWidth(nn.Module):
    """A network that reshapes with a hard-coded width (as ViT does): its first group cannot lose channels."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x):
        x = self.a(x).view(x.shape[0], 8, -1).view(x.shape[0], 8, x.shape[2], x.shape[3])
        return self.fc(self.b(x).mean((2, 3)))


def test_a_group_whose_removal_breaks_the_forward_pass_is_left_out():
    skipped: list = []
    groups = find_groups(_FixedWidth().eval(), (3, 8, 8), skipped=skipped)
    assert [g.name for g in groups] == ["b"]
    assert skipped and skipped[0].layers[0] == "a" and "fails" in skipped[0].reason


def test_the_tracer_knows_its_opaque_classes_by_their_real_names():
    """The tracer names the opaque classes (nothing registers into it): each name is a class that exists."""
    import importlib

    from netsift.models.torchvision_models import ChannelShuffle
    from netsift.selection.tracing import KNOWN_OPAQUE, opaque_kind

    for name in KNOWN_OPAQUE:
        module, _, attr = name.rpartition(".")
        cls = getattr(importlib.import_module(module), attr)
        assert f"{cls.__module__}.{cls.__qualname__}" == name
    assert opaque_kind(ChannelShuffle(2)) == "atomic" and opaque_kind(nn.Conv2d(1, 1, 1)) is None
    from torchvision.models.swin_transformer import ShiftedWindowAttentionV2
    assert opaque_kind(ShiftedWindowAttentionV2(8, [2, 2], [0, 0], 2)) == "atomic"  # a subclass of a named one


def test_a_model_nothing_can_be_removed_from_is_refused_in_one_line():
    from netsift.models.torchvision_models import ChannelShuffle

    model = nn.Sequential(nn.Conv2d(3, 8, 3), ChannelShuffle(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    with pytest.raises(NetsiftError) as e:
        find_groups(model.eval(), (3, 8, 8))
    assert str(e.value).endswith(": 0 is not pruned because its channels pass through 1, which is kept whole")


@pytest.mark.slow
def test_unreachable_budget_is_refused_in_one_line():
    with pytest.raises(NetsiftError, match=r"out of reach.*keeps 0\.\d+ of its MACs"):
        round_trip("tv:swin_t", 3, 32, 10, macs=0.5)


# ----------------------------------------------------------------------------------- input sizes and weights


@pytest.mark.parametrize("name, size, words", [
    ("tv:inception_v3", 32, "at least 75 px"),
    ("tv:alexnet", 28, "at least 63 px"),
    ("tv:vit_b_16", 24, "multiples of its 16 px patch"),
    ("tv:maxvit_t", 100, "multiples of 224 px"),
])
def test_sizes_a_model_cannot_take_are_refused_before_building(name, size, words):
    with pytest.raises(NetsiftError, match=words):
        build_model(name, 3, size, 10)


@pytest.mark.parametrize("name, size", [("tv:vit_b_32", 64), ("tv:inception_v3", 75), ("tv:swin_t", 32),
                                        ("tv:shufflenet_v2_x0_5", 16)])
@pytest.mark.slow
def test_grey_inputs_and_model_image_sizes(name, size):
    model = build_model(name, 1, size, 7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 7)


def test_googlenet_and_inception_train_without_auxiliary_heads():
    model = build_model("tv:googlenet", 3, 32, 10).train()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.fixture(scope="module")
def rgb_resnet_state():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=1000).state_dict()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_adapts_stem_and_classifier(tmp_path, rgb_resnet_state, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": {f"module.{k}": v for k, v in rgb_resnet_state.items()}}, path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in rgb_resnet_state.items()}, str(path))
    model = build_model("tv:resnet18", 1, 32, 10)
    notes = load_weights_file(model, path)
    assert any("classifier re-initialised (1000 -> 10" in n for n in notes)
    assert any("3-channel filters averaged for 1" in n for n in notes)
    sd = model.state_dict()
    assert torch.allclose(sd["conv1.weight"], rgb_resnet_state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(sd["layer1.0.conv1.weight"], rgb_resnet_state["layer1.0.conv1.weight"])
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 10)


class _Evil:
    """Any object that is not a tensor or a plain container."""


def test_weights_file_errors_are_one_line(tmp_path, rgb_resnet_state):
    cases = {}
    torch.save({"x": _Evil()}, tmp_path / "evil.pth")
    cases["evil.pth"] = "refusing to unpickle"
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    cases["junk.safetensors"] = "not a readable safetensors file"
    torch.save(rgb_resnet_state, tmp_path / "r18.pth")
    cases["r18.pth"] = "does not fit ResNet: it lacks layer1.2"
    torch.save([1, 2], tmp_path / "list.pth")
    cases["list.pth"] = "not a state dict"
    cases["missing.pth"] = "does not exist"
    for name, words in cases.items():
        model = build_model("tv:resnet34" if name == "r18.pth" else "tv:resnet18", 3, 32, 10)
        with pytest.raises(NetsiftError) as e:
            load_weights_file(model, tmp_path / name)
        assert words in str(e.value) and "\n" not in str(e.value), (name, str(e.value))


def test_published_weights_are_adapted_or_refused_in_one_line(monkeypatch, rgb_resnet_state):
    from types import SimpleNamespace

    def weights(state=None, error=None):
        def get_state_dict(progress=True):
            if error:
                raise error
            return state
        return lambda name: SimpleNamespace(DEFAULT=SimpleNamespace(get_state_dict=get_state_dict))

    monkeypatch.setattr(torchvision.models, "get_model_weights", weights(rgb_resnet_state))
    model = build_model("tv:resnet18", 1, 32, 10, pretrained=True)
    assert torch.equal(model.layer4[1].conv2.weight, rgb_resnet_state["layer4.1.conv2.weight"])
    monkeypatch.setattr(torchvision.models, "get_model_weights", weights(error=OSError("no network\nat all")))
    with pytest.raises(NetsiftError, match="^could not load published weights for resnet18: no network$"):
        build_model("tv:resnet18", 3, 32, 10, pretrained=True)


def test_published_layouts_load_into_the_adapted_architectures():
    """GoogLeNet's published state has auxiliary heads (switched off here); SqueezeNet's classifier is a conv."""
    from netsift.models.torchvision_models import load_state

    torch.manual_seed(0)
    published = torchvision.models.googlenet(aux_logits=True, init_weights=True).state_dict()
    notes = load_state(build_model("tv:googlenet", 3, 32, 10), published)
    assert notes == ["fc: classifier re-initialised (1000 -> 10 classes)"]
    published = torchvision.models.squeezenet1_1().state_dict()
    notes = load_state(build_model("tv:squeezenet1_1", 1, 32, 10), published)
    assert sorted(notes) == ["classifier.1: classifier re-initialised (1000 -> 10 classes)",
                             "features.0: 3-channel filters averaged for 1 channels"]


def test_vit_position_embedding_is_interpolated(tmp_path):
    torch.manual_seed(0)
    kw = dict(patch_size=16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3)
    big = torchvision.models.VisionTransformer(image_size=64, **kw)
    small = torchvision.models.VisionTransformer(image_size=32, **kw)
    torch.save(big.state_dict(), tmp_path / "vit.pth")
    notes = load_weights_file(small, tmp_path / "vit.pth")
    assert notes == ["encoder.pos_embedding: position embedding interpolated (17 -> 5 tokens)"]
    assert torch.equal(small.encoder.pos_embedding[:, 0], big.encoder.pos_embedding[:, 0])
    with torch.no_grad():
        assert small(torch.randn(1, 3, 32, 32)).shape == (1, 3)


class _ConvLSTM(nn.Module):
    """Convolutions read row by row by a bidirectional LSTM (timm's Sequencer does this)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.rnn = nn.LSTM(8, 6, batch_first=True, bidirectional=True)
        self.skip = nn.Linear(8, 12)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = self.conv(x).flatten(2).transpose(1, 2)  # (B, 16 positions, 8 channels)
        return self.head((self.rnn(x)[0] + self.skip(x)).mean(1))


def test_an_lstm_reading_pruned_channels_reloads_at_its_new_input_size(tmp_path):
    from netsift.rundir import load_weights

    torch.manual_seed(0)
    model = _ConvLSTM().eval()
    groups = find_groups(model, (3, 8, 8))
    assert "conv.0" in [g.name for g in groups]
    pruned = remove_channels(model, (3, 8, 8), {"conv.0": [0, 2, 3, 5, 6]}).eval()
    assert pruned.rnn.input_size == 5 and module_sizes(pruned)["rnn"]["in"] == 5
    save_model(tmp_path, pruned)
    fresh = load_weights(_ConvLSTM(), tmp_path).eval()
    assert fresh.rnn.input_size == 5
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))


class _GainConv(nn.Conv2d):
    """A convolution with its own per-output-channel gain (timm's ScaledStdConv2d has one)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.rand(self.out_channels, 1, 1, 1) + 0.5)

    def forward(self, x):
        return self._conv_forward(x, self.weight * self.gain.view(-1, 1, 1, 1), self.bias)


def test_a_conv_subclass_with_its_own_per_channel_tensor_is_pruned_and_reloads(tmp_path):
    from netsift.rundir import load_weights

    def make():
        torch.manual_seed(0)
        return nn.Sequential(_GainConv(3, 8, 3), nn.ReLU(), _GainConv(8, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(6, 4)).eval()

    model = make()
    pruned = remove_channels(model, (3, 12, 12), {"0": [0, 2, 3, 6, 7], "2": [1, 2, 3, 4, 5]}).eval()  # kept
    assert pruned[0].gain.shape[0] == 5 and pruned[2].gain.shape[0] == 5
    with torch.no_grad():  # the kept channels keep their own gains
        assert torch.equal(pruned[0].gain, model[0].gain[[0, 2, 3, 6, 7]])
    save_model(tmp_path, pruned)
    fresh = load_weights(make(), tmp_path).eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))


class _GatedTokens(nn.Module):
    """Patch tokens through a gated MLP (``fc1(x).chunk(2, dim=-1)``, one half gating the other), as in EVA-02."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(6, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)  # (B, 4 tokens, 8 channels)
        a, b = self.fc1(t).chunk(2, dim=-1)
        return self.head((t + self.fc2(a * torch.nn.functional.silu(b))).mean(1))


def test_a_gated_mlp_prunes_both_halves_of_its_first_layer_together(tmp_path):
    from netsift.rundir import load_weights

    torch.manual_seed(0)
    model = _GatedTokens().eval()
    groups = {g.name: g for g in find_groups(model, (3, 8, 8))}
    assert groups["fc1"].size == 6 and groups["fc1"].unit == 2  # channel c goes with c + 6
    pruned = _masked_equals_pruned(model, (3, 8, 8))
    assert pruned.fc1.out_features == 6 and pruned.fc2.in_features == 3
    save_model(tmp_path, pruned)
    torch.manual_seed(1)
    fresh = load_weights(_GatedTokens(), tmp_path).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))


def test_a_tampered_lstm_size_is_one_line_naming_the_tensor(tmp_path):
    import json

    from netsift.rundir import load_weights

    save_model(tmp_path, _ConvLSTM())
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["manifest"]["modules"]["rnn"]["tensors"]["weight_ih_l0"] = [24, 3]
    (tmp_path / "model.json").write_text(json.dumps(meta))
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(NetsiftError) as e:
        load_weights(_ConvLSTM(), tmp_path)
    assert "\n" not in str(e.value) and "rnn.weight_ih_l0" in str(e.value)
    assert (tmp_path / "model.safetensors").read_bytes() == before


class _Ghost(nn.Module):
    """GhostNet's module: half the outputs from a convolution, the other half a depthwise convolution of them."""

    def __init__(self, cin: int, cout: int, act: bool = True):
        super().__init__()
        self.cout = cout
        relu = (lambda: nn.ReLU(inplace=True)) if act else nn.Identity
        self.primary = nn.Sequential(nn.Conv2d(cin, cout // 2, 1, bias=False), nn.BatchNorm2d(cout // 2), relu())
        self.cheap = nn.Sequential(nn.Conv2d(cout // 2, cout // 2, 3, padding=1, groups=cout // 2, bias=False),
                                   nn.BatchNorm2d(cout // 2), relu())

    def forward(self, x):
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)[:, :self.cout]


class _GhostBottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.ghost1, self.ghost2 = _Ghost(c, 2 * c), _Ghost(2 * c, c, act=False)
        self.reduce, self.expand = nn.Conv2d(2 * c, 4, 1), nn.Conv2d(4, 2 * c, 1)

    def forward(self, x):
        h = self.ghost1(x)
        gate = nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(h.mean((2, 3), keepdim=True)))))
        return x + self.ghost2(h * gate)


def test_a_ghost_module_prunes_each_channel_with_its_depthwise_twin():
    """``cat([x1, dw(x1)])`` gated by squeeze-excitation and added to a residual: channel c of the concatenation and
    channel c + C/2 both come from x1's channel c, so they go as one unit (before, they were separate units: the
    pruned network computed something else than the selection had scored, and the MACs model counted each half
    as the whole group, so GhostNet landed at 0.46 of its MACs for a 0.5 budget)."""
    from netsift.measure import count_macs
    from netsift.selection.budget import MacsModel, allocate

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), _GhostBottleneck(16),
                          _GhostBottleneck(16), nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10)).eval()
    for m in model.modules():  # statistics far from the identity, so a wrongly kept channel shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2)
            m.bias.data.normal_(0, 0.5)
    shape = (3, 8, 8)
    groups = find_groups(model, shape)
    gated = [g for g in groups if "3.expand" in g.members]
    assert gated and gated[0].size == 16 and gated[0].unit == 2  # 32 channels: 16 pairs
    assert gated[0].member_unit("3.ghost1.primary.0") == 1 and gated[0].member_unit("3.expand") == 2
    _masked_equals_pruned(model, shape)
    macs = MacsModel(model, groups, shape)
    for fraction in (0.5, 0.3):
        widths = allocate(macs, fraction)
        pruned = remove_channels(model, shape, {g.name: list(range(w)) for g, w in zip(groups, widths)})
        assert macs.cost(widths) == count_macs(pruned, shape)
