"""WideResNet-28-10 (Zagoruyko & Komodakis 2016, https://arxiv.org/abs/1605.07146).

The backbone of Madry's CIFAR-10 model, TRADES and most RobustBench entries. Pre-activation
wide blocks, widths 16, 160, 320, 640, global average pooling (any input size).
"""

import torch
from torch import nn
from torch.nn import functional as F

from robustbench_karp.models.base import MODELS


class WideBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if (c_in == c_out and stride == 1) else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(out)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + skip


class WideResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, depth: int = 28, widen: int = 10):
        super().__init__()
        n = (depth - 4) // 6  # blocks per group
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, c_in = [], widths[0]
        for group, width in enumerate(widths[1:]):
            for j in range(n):
                layers.append(WideBlock(c_in, width, stride=2 if (group > 0 and j == 0) else 1))
                c_in = width
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c_in)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.stem(x))))  # (B, 640, H/4, W/4)
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


@MODELS.register("wrn-28-10")
def wrn_28_10(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return WideResNet(in_channels, num_classes, depth=28, widen=10)
