"""CIFAR-style ResNets (He et al. 2016): three stages of basic blocks, 16/32/64 channels."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from . import register, scaled


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity or 1×1-conv shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images; strides adapt so tiny inputs are not reduced below 1×1."""

    def __init__(self, depth: int, in_channels: int, image_size: int, num_classes: int, width: float = 1.0):
        super().__init__()
        n = (depth - 2) // 6
        widths = [scaled(16, width), scaled(32, width), scaled(64, width)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        blocks, c, size = [], widths[0], image_size
        for stage, w in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 and size >= 2 else 1
                size = (size + stride - 1) // stride
                blocks.append(BasicBlock(c, w, stride))
                c = w
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register("resnet20")
def resnet20(in_channels: int, image_size: int, num_classes: int, width: float = 1.0) -> nn.Module:
    return CifarResNet(20, in_channels, image_size, num_classes, width)


@register("resnet56")
def resnet56(in_channels: int, image_size: int, num_classes: int, width: float = 1.0) -> nn.Module:
    return CifarResNet(56, in_channels, image_size, num_classes, width)
