"""The plain torchvision ImageNet networks RobustBench wraps (ResNet-18/50, Wide-ResNet-50-2).

RobustBench puts them behind its own ImageNormalizer, nn.Sequential(normalize, model), so its
checkpoints name the network's tensors model.<torchvision key> and the normalizer's normalize.mean and
normalize.std; convert_state_dict strips the prefix and checks the normalizer. Options pass through to
torchvision (Chen2024Data_WRN_50_2 is resnet50 with width_per_group=128, without a normalizer).

Shape: x (B, 3, H, W) -> logits (B, 1000); RobustBench evaluates at 224x224 (Wong2020Fast: 288x288).
"""

from __future__ import annotations

import torchvision
from torch import nn

from robustbench_karp.zoo.base import FAMILIES, Family

ARCHS = ("resnet18", "resnet50", "wide_resnet50_2")


def torchvision_net(arch: str, **kwargs) -> nn.Module:
    if arch not in ARCHS:
        raise ValueError(f"unknown torchvision arch {arch!r}; valid: {', '.join(ARCHS)}")
    return torchvision.models.get_model(arch, weights=None, **kwargs)


FAMILIES.register("torchvision")(Family(build=torchvision_net, normalization_keys=("normalize.mean", "normalize.std")))
