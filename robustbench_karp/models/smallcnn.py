"""The MNIST challenge CNN of Madry et al. 2018 (https://arxiv.org/abs/1706.06083).

Two 5x5 conv layers (32, 64 channels), each followed by ReLU and 2x2 max-pooling, then a
1024-unit hidden layer. The flattened size follows the input size, so it also runs on 8x8 digits.
"""

from torch import nn

from robustbench_karp.models.base import MODELS


@MODELS.register("smallcnn")
def smallcnn(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    side = input_size // 4  # two 2x2 poolings
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, H/2, W/2)
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, H/4, W/4)
        nn.Flatten(),
        nn.Linear(64 * side * side, 1024), nn.ReLU(),
        nn.Linear(1024, num_classes),
    )
