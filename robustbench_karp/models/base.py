"""The model contract: images in [0, 1] go in, logits come out, normalization happens inside.

A registered model factory builds only the backbone, `factory(in_channels, num_classes, input_size)`;
`create_model` puts the one `Normalize` module in front of it. Normalize's buffers are
non-persistent, so checkpoints neither carry nor need them (RobustBench's issue #16).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from robustbench_karp.registry import Registry

ModelFactory = Callable[[int, int, int], nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


class Normalize(nn.Module):
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) in [0, 1]
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """Normalize followed by a backbone: the only model shape the harness attacks."""

    def __init__(self, normalize: Normalize, backbone: nn.Module):
        super().__init__()
        self.normalize = normalize
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.backbone(self.normalize(x))


def create_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> Classifier:
    backbone = MODELS.get(name)(in_channels, num_classes, input_size)
    return Classifier(Normalize(mean, std), backbone)
