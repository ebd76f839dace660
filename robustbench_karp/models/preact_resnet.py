"""Pre-activation ResNet-18 (He et al. 2016, https://arxiv.org/abs/1603.05027).

The architecture of the fast-AT and "overfitting in AT" reference recipes (Wong et al. 2020,
Rice et al. 2020) on CIFAR-10. 3x3 stem, global average pooling: any input size works.
"""

import torch
from torch import nn
from torch.nn import functional as F

from robustbench_karp.models.base import MODELS


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512)):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, c_in = [], widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(PreActBlock(c_in, width, stride=2 if (i > 0 and j == 0) else 1))
                c_in = width
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c_in)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.stem(x))))  # (B, 512, H/8, W/8)
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


@MODELS.register("preact-resnet18")
def preact_resnet18(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return PreActResNet(in_channels, num_classes)
