"""RobustBench's CIFAR ResNet and PreActResNet (its resnet.py, from kuangliu/pytorch-cifar).

state_dict keys:
    resnet         conv1, bn1, layer{1..4}.{i}.{conv1,bn1,conv2,bn2[,conv3,bn3]}, .shortcut.{0,1} (conv, bn), linear
    preact_resnet  conv1, layer{1..4}.{i}.{bn1,conv1,bn2,conv2}, .shortcut.0 (conv), [bn], linear

PreActResNet comes in the two block variants RobustBench uses. PreActBlock (Wong2020Fast,
Andriushchenko2020Understanding) feeds the raw input to a projection shortcut; PreActBlockV2 (Rice2020
Overfitting's L2 model, Kireev2021Effectiveness_*, Addepalli2021Towards_PARN18) feeds it relu(bn1(x)),
which is also what PreActBlock does with out_shortcut=True (CIFAR-100 Rice2020Overfitting).

Shape: x (B, 3, 32, 32) -> logits (B, num_classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from robustbench_karp.zoo.base import FAMILIES, Family


def projection(c_in: int, c_out: int, stride: int, with_bn: bool) -> nn.Sequential:
    """An empty Sequential (identity) when shapes match; keys shortcut.0 (and .1) otherwise."""
    if stride == 1 and c_in == c_out:
        return nn.Sequential()
    layers = [nn.Conv2d(c_in, c_out, 1, stride, bias=False)] + ([nn.BatchNorm2d(c_out)] if with_bn else [])
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection(c_in, planes, stride, with_bn=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = projection(c_in, 4 * planes, stride, with_bn=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, shortcut_after_activation: bool):
        super().__init__()
        self.shortcut_after_activation = shortcut_after_activation
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = projection(c_in, planes, stride, with_bn=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        if len(self.shortcut) == 0:  # identity: always the raw x
            skip = x
        else:  # a projection sees x or relu(bn1(x)), by variant
            skip = self.shortcut(out if self.shortcut_after_activation else x)
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + skip


def stages(block, num_blocks: Sequence[int], make) -> list[nn.Sequential]:
    """The four stages (64, 128, 256, 512 planes; strides 1, 2, 2, 2): make(c_in, planes, stride) -> block."""
    layers, c_in = [], 64
    for planes, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
        layers.append(nn.Sequential(*(make(c_in if i == 0 else planes * block.expansion, planes, stride if i == 0 else 1)
                                      for i in range(n))))
        c_in = planes * block.expansion
    return layers


class ResNet(nn.Module):
    BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}

    def __init__(self, block: str = "basic", num_blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10):
        super().__init__()
        if block not in self.BLOCKS:
            raise ValueError(f"unknown ResNet block {block!r}; valid: {', '.join(self.BLOCKS)}")
        cls = self.BLOCKS[block]
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages(cls, num_blocks, cls)
        self.linear = nn.Linear(512 * cls.expansion, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # (B, 512 * expansion, 4, 4)
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class PreActResNet(nn.Module):
    BLOCKS = ("PreActBlock", "PreActBlockV2")

    def __init__(self, block: str = "PreActBlock", num_blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 10,
                 bn_before_fc: bool = False, out_shortcut: bool = False):
        super().__init__()
        if block not in self.BLOCKS:
            raise ValueError(f"unknown PreActResNet block {block!r}; valid: {', '.join(self.BLOCKS)}")
        after = block == "PreActBlockV2" or out_shortcut

        def make(c_in, planes, stride):
            return PreActBlock(c_in, planes, stride, shortcut_after_activation=after)

        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.layer1, self.layer2, self.layer3, self.layer4 = stages(PreActBlock, num_blocks, make)
        self.bn = nn.BatchNorm2d(512) if bn_before_fc else None
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))  # (B, 512, 4, 4)
        if self.bn is not None:
            out = F.relu(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


FAMILIES.register("resnet")(Family(build=ResNet))
# Andriushchenko2020Understanding's (GradAlign's) checkpoint also holds an auxiliary head, model_preact_hl1.*,
# that RobustBench's loader drops with strict=False.
FAMILIES.register("preact_resnet")(Family(build=PreActResNet, ignored_prefixes=("model_preact_hl1.",)))
