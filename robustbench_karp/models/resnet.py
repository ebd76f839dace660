"""ResNet-18 in its CIFAR form (He et al. 2016, https://arxiv.org/abs/1512.03385).

3x3 stride-1 stem and no max-pool, as in the CIFAR adversarial-training literature; global
average pooling makes it accept any input size (8x8 digits, 28x28 MNIST, 32x32 CIFAR).
"""

import torch
from torch import nn
from torch.nn import functional as F

from robustbench_karp.models.base import MODELS


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, c_in = [], widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths)):
            for j in range(n):
                layers.append(BasicBlock(c_in, width, stride=2 if (i > 0 and j == 0) else 1))
                c_in = width
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) normalized
        out = self.layers(self.stem(x))  # (B, 512, H/8, W/8)
        return self.head(F.adaptive_avg_pool2d(out, 1).flatten(1))


@MODELS.register("resnet18")
def resnet18(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return ResNet(in_channels, num_classes)
