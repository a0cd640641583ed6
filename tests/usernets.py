"""A user's own CNNs for the tests: grouped and depthwise convolutions, an Inception-style concatenation, batch
norm and a residual add (importable by name, as ``netsift eval --module usernets:UserCNN`` does)."""

from __future__ import annotations

import torch
from torch import nn


class Inception(nn.Module):
    """Two branches concatenated along the channels."""

    def __init__(self, c_in: int, c: int):
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(c_in, c // 2, 1), nn.BatchNorm2d(c // 2), nn.ReLU())
        self.b2 = nn.Sequential(nn.Conv2d(c_in, c // 2, 3, padding=1), nn.BatchNorm2d(c // 2), nn.ReLU())

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x)], 1)


class GroupedResidual(nn.Module):
    """A grouped convolution reading the concatenation, then a depthwise one added back (residual)."""

    def __init__(self, c: int, groups: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, groups=groups)
        self.bn1 = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(y + self.bn2(self.dw(y)))


class UserCNN(nn.Module):
    """stem -> Inception concat (32) -> grouped conv (4 groups) + depthwise residual -> pool -> linear."""

    def __init__(self, c: int = 32, classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.inc = Inception(16, c)
        self.res = GroupedResidual(c)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))

    def forward(self, x):
        return self.head(self.res(self.inc(self.stem(x))))


class OtherCNN(UserCNN):
    """Another architecture of the same shape of code (wider stem): a different structure hash."""

    def __init__(self, c: int = 32, classes: int = 10, in_channels: int = 1):
        super().__init__(c, classes, in_channels)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU())


class _TokenBlock(nn.Module):
    """Reads a class token (a view of a parameter) next to the feature tokens, as CaiT's class-attention blocks."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x, cls):
        return cls + self.fc(torch.cat([cls, x], 1))[:, :1]


class TokenNet(nn.Module):
    """A CNN whose head reads a learned class token expanded to the batch (``token.expand``): under ``no_grad``
    that view of a parameter has no gradient function, which ``FlopCounterMode``'s module tracker trips on."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.token = nn.Parameter(torch.zeros(1, 1, 8))
        self.blk = _TokenBlock(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        t = self.conv2(torch.relu(self.conv(x))).flatten(2).transpose(1, 2)
        return self.head(self.blk(t, self.token.expand(x.shape[0], -1, -1))[:, 0])
