"""Plain convolutional networks: the Conv-n family of the supermask papers and VGG with batch norm."""

from __future__ import annotations

from torch import nn

from . import register, scaled

CONV_WIDTHS = {2: [64, 64], 4: [64, 64, 128, 128], 6: [64, 64, 128, 128, 256, 256],
               8: [64, 64, 128, 128, 256, 256, 512, 512]}

VGG_CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class ConvNet(nn.Module):
    """Conv-n: 3×3 same-padded convolutions with ReLU, 2×2 max-pool after each pair, then FC 256-256-classes.

    Pooling is skipped once the feature map is down to 1×1, so deep variants still take small images.
    Layers have no biases, as in the edge-popup and Gumbel-Softmax supermask experiments.
    """

    def __init__(self, depth: int, in_channels: int, image_size: int, num_classes: int, width: float = 1.0,
                 bias: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, image_size
        for i, out in enumerate(CONV_WIDTHS[depth]):
            out = scaled(out, width)
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=bias), nn.ReLU(inplace=True)]
            c = out
            if i % 2 == 1 and size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        fc = scaled(256, width)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * size * size, fc, bias=bias), nn.ReLU(inplace=True),
            nn.Linear(fc, fc, bias=bias), nn.ReLU(inplace=True),
            nn.Linear(fc, num_classes, bias=bias),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


for _depth in CONV_WIDTHS:
    def _make(depth):
        def builder(in_channels: int, image_size: int, num_classes: int, width: float = 1.0, bias: bool = False):
            return ConvNet(depth, in_channels, image_size, num_classes, width, bias)
        return builder

    register(f"conv{_depth}")(_make(_depth))


class VGG(nn.Module):
    """CIFAR-style VGG with batch norm and one linear classifier; pools stop at a 1×1 feature map."""

    def __init__(self, cfg: list, in_channels: int, image_size: int, num_classes: int, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, image_size
        for v in cfg:
            if v == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                continue
            out = scaled(v, width)
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


for _name, _cfg in VGG_CFGS.items():
    def _make_vgg(cfg):
        def builder(in_channels: int, image_size: int, num_classes: int, width: float = 1.0):
            return VGG(cfg, in_channels, image_size, num_classes, width)
        return builder

    register(_name)(_make_vgg(_cfg))
