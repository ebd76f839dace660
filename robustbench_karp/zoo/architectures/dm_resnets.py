"""DeepMind's WideResNet and PreActResNet (RobustBench's dm_wide_resnet.py; Gowal et al. 2020,
https://arxiv.org/abs/2010.03593): the layout of Gowal2020*, Rebuffi2021*, Wang2023*, Pang2022* and others.

state_dict keys:
    dm_wide_resnet    init_conv, layer.{g}.block.{i}.{batchnorm_0,conv_0,batchnorm_1,conv_1,shortcut}, batchnorm, logits
    dm_preact_resnet  conv_2d, layer_{0..3}.{i}.{batchnorm_0,conv_2d_1,batchnorm_1,conv_2d_2,shortcut}, batchnorm, logits
RobustBench keeps their mean/std as non-persistent attributes; here they live in the table and in the
Normalize in front. Strided 3x3 convolutions use TensorFlow's 'SAME' padding (pad right and bottom only),
as the JAX originals did. "swish" (RobustBench's custom autograd Swish) and "silu" are the same function.

Shape: x (B, 3, 32, 32) -> logits (B, num_classes).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from robustbench_karp.zoo.base import FAMILIES, Family

ACTIVATIONS = {"swish": nn.SiLU, "silu": nn.SiLU, "relu": nn.ReLU}


def pad_same(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Padding that makes a 3x3, padding-0 convolution act like TensorFlow's 'SAME'."""
    if stride == 1:
        return F.pad(x, (1, 1, 1, 1))
    if stride == 2:
        return F.pad(x, (0, 1, 0, 1))
    raise ValueError(f"unsupported stride {stride}")


def activation_class(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class DMWideBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, act: type[nn.Module]):
        super().__init__()
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(c_in)
        self.relu_0 = act()
        self.conv_0 = nn.Conv2d(c_in, c_out, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(c_out)
        self.relu_1 = act()
        self.conv_1 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu_0(self.batchnorm_0(x))
        skip = x if self.shortcut is None else self.shortcut(out)  # a widening shortcut sees the activated input
        out = self.conv_0(pad_same(out, self.stride))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return skip + out


class DMBlockGroup(nn.Module):
    def __init__(self, n: int, c_in: int, c_out: int, stride: int, act: type[nn.Module]):
        super().__init__()
        self.block = nn.Sequential(*(DMWideBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1, act)
                                     for i in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DMWideResNet(nn.Module):
    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, activation: str = "relu"):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"DMWideResNet depth must be 6n + 4, got {depth}")
        act = activation_class(activation)
        n = (depth - 4) // 6
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(*(DMBlockGroup(n, widths[g], widths[g + 1], 1 if g == 0 else 2, act)
                                     for g in range(3)))
        self.batchnorm = nn.BatchNorm2d(widths[3])
        self.relu = act()
        self.logits = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.batchnorm(self.layer(self.init_conv(x))))  # (B, 64 * width, 8, 8) for 32x32 inputs
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


class DMPreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, act: type[nn.Module]):
        super().__init__()
        self.stride = stride
        self.batchnorm_0 = nn.BatchNorm2d(c_in)
        self.relu_0 = act()
        self.conv_2d_1 = nn.Conv2d(c_in, c_out, 3, stride, 0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(c_out)
        self.relu_1 = act()
        self.conv_2d_2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        # Unlike the wide block, the projection is a 3x3 conv and it sees the raw input x.
        has_shortcut = stride != 1 or c_in != c_out
        self.shortcut = nn.Conv2d(c_in, c_out, 3, stride, 0, bias=False) if has_shortcut else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu_0(self.batchnorm_0(x))
        skip = x if self.shortcut is None else self.shortcut(pad_same(x, self.stride))
        out = self.conv_2d_1(pad_same(out, self.stride))
        out = self.conv_2d_2(self.relu_1(self.batchnorm_1(out)))
        return out + skip


class DMPreActResNet(nn.Module):
    BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}

    def __init__(self, depth: int = 18, num_classes: int = 10, activation: str = "relu"):
        super().__init__()
        if depth not in self.BLOCKS:
            raise ValueError(f"DMPreActResNet depth must be 18 or 34, got {depth}")
        act = activation_class(activation)
        widths = [64, 64, 128, 256, 512]
        self.conv_2d = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        for g, n in enumerate(self.BLOCKS[depth]):
            blocks = (DMPreActBlock(widths[g] if i == 0 else widths[g + 1], widths[g + 1],
                                    (1 if g == 0 else 2) if i == 0 else 1, act) for i in range(n))
            self.add_module(f"layer_{g}", nn.Sequential(*blocks))
        self.batchnorm = nn.BatchNorm2d(512)
        self.relu = act()
        self.logits = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_2d(x)
        out = self.layer_3(self.layer_2(self.layer_1(self.layer_0(out))))
        out = self.relu(self.batchnorm(out))  # (B, 512, 4, 4) for 32x32 inputs
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


# RobustBench's DM networks never carry their mean/std in a checkpoint (non-persistent); older exports
# that did would name them mean and std.
FAMILIES.register("dm_wide_resnet")(Family(build=DMWideResNet, normalization_keys=("mean", "std")))
FAMILIES.register("dm_preact_resnet")(Family(build=DMPreActResNet, normalization_keys=("mean", "std")))
