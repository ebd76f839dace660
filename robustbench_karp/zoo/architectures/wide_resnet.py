"""RobustBench's WideResNet (its wide_resnet.py, from TRADES): the layout of most CIFAR zoo entries.

state_dict keys: conv1, block{1,2,3}.layer.{i}.{bn1,conv1,bn2,conv2,convShortcut}, bn1, fc; with
sub_block1=True also sub_block1.layer.* (present in Carmon2019Unlabeled's and other checkpoints, never
used by forward). No input normalization: Normalize runs in front. Two forward variants of the zoo:

    input_standardization  each image standardized by its own mean and std (Ding2020MMA)
    normalized_head        cosine logits: unit features times unit class vectors (Pang2020Boosting)

Shape: x (B, 3, 32, 32) -> logits (B, num_classes).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from robustbench_karp.zoo.base import FAMILIES, Family


class WideBasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        # RobustBench decides by channels alone: a block that keeps its width has no shortcut conv.
        self.convShortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = x if self.convShortcut is None else self.convShortcut(out)  # a widening shortcut sees relu(bn(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return skip + out


class WideGroup(nn.Module):
    def __init__(self, n: int, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*(WideBasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
                                     for i in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def standardize_per_image(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> each image minus its mean, over max(its std, 1/sqrt(CHW)) (unbiased std, as RobustBench)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    std_min = torch.ones_like(std) / x[0].numel() ** 0.5  # a constant image would divide by zero
    return (x - mean) / torch.max(std, std_min)


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, sub_block1: bool = False,
                 bias_last: bool = True, input_standardization: bool = False, normalized_head: bool = False):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.input_standardization = input_standardization
        self.normalized_head = normalized_head
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = WideGroup(n, widths[0], widths[1], 1)
        if sub_block1:  # only so that the checkpoints that carry it load strictly
            self.sub_block1 = WideGroup(n, widths[0], widths[1], 1)
        self.block2 = WideGroup(n, widths[1], widths[2], 2)
        self.block3 = WideGroup(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes, bias=bias_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_standardization:
            x = standardize_per_image(x)
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))  # (B, 64 * widen_factor, 8, 8) for 32x32 inputs
        features = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (B, 64 * widen_factor)
        if self.normalized_head:
            # RobustBench overwrites fc.weight with its normalized rows at every forward; we leave it intact.
            return F.linear(F.normalize(features, p=2, dim=1), F.normalize(self.fc.weight, p=2, dim=1), self.fc.bias)
        return self.fc(features)


FAMILIES.register("wide_resnet")(Family(build=WideResNet))
