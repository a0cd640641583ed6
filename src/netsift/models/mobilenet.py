"""MobileNetV2 (Sandler et al. 2018), CIFAR style: stride 1 in the stem and the first downsampling stage."""

from __future__ import annotations

from torch import nn

from . import register, scaled

# expansion t, output channels c, repeats n, stride s (CIFAR variant: the first two stride-2 stages use 1)
SETTING = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Expand (1×1), depthwise 3×3, project (1×1); residual add when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers = [] if expand == 1 else [conv_bn(c_in, hidden, 1)]
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, c_out, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 for small images; downsampling stops at a 1×1 feature map."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, width: float = 1.0):
        super().__init__()
        c = scaled(32, width)
        layers: list[nn.Module] = [conv_bn(in_channels, c, 3, 1)]
        size = image_size
        for t, ch, n, s in SETTING:
            out = scaled(ch, width)
            for i in range(n):
                stride = s if i == 0 and size >= 2 else 1
                size = (size + stride - 1) // stride
                layers.append(InvertedResidual(c, out, stride, t))
                c = out
        last = scaled(1280, max(1.0, width))
        layers.append(conv_bn(c, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register("mobilenetv2")
def mobilenetv2(in_channels: int, image_size: int, num_classes: int, width: float = 1.0) -> nn.Module:
    return MobileNetV2(in_channels, image_size, num_classes, width)
