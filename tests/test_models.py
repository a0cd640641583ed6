import pytest
import torch

from netsift.errors import NetsiftError
from netsift.models import build_model, check_input, model_names

SHAPES = [(1, 8), (1, 28), (3, 32)]


@pytest.mark.parametrize("name", model_names())
@pytest.mark.slow
def test_zoo_model_runs_on_every_input_shape(name):
    for channels, size in SHAPES:
        for classes in (10, 100):
            model = build_model(name, channels, size, classes, width=0.25 if name.startswith("vgg") else 0.5)
            model.eval()
            with torch.no_grad():
                out = model(torch.randn(2, channels, size, size))
            assert out.shape == (2, classes)


@pytest.mark.parametrize("name", ["tv:resnet18", "tv:mobilenet_v2"])
def test_torchvision_models_adapt(name):
    for channels, size in [(1, 28), (3, 32)]:
        model = build_model(name, channels, size, 7).eval()
        with torch.no_grad():
            assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


def test_width_multiplier_scales_parameters():
    small = sum(p.numel() for p in build_model("conv4", 1, 28, 10, width=0.5).parameters())
    big = sum(p.numel() for p in build_model("conv4", 1, 28, 10, width=1.0).parameters())
    assert 3.0 < big / small < 4.5


def test_published_conv_widths():
    convs = [m.out_channels for m in build_model("conv6", 3, 32, 10).modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [64, 64, 128, 128, 256, 256]
    lin = [m.out_features for m in build_model("lenet300", 1, 28, 10).modules() if isinstance(m, torch.nn.Linear)]
    assert lin == [300, 100, 10]


def test_bad_model_requests():
    with pytest.raises(NetsiftError, match="unknown model 'resnet7'"):
        build_model("resnet7")
    with pytest.raises(NetsiftError, match="width"):
        build_model("conv2", width=0)
    with pytest.raises(NetsiftError, match="unknown torchvision model"):
        build_model("tv:not_a_model")
    with pytest.raises(NetsiftError, match="cannot take inputs"):
        check_input(build_model("tv:squeezenet1_0", 1, 8, 10), (1, 8, 8))
