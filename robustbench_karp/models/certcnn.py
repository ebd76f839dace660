"""A small CNN for certified training: two strided 4x4 convolutions, a 512-unit hidden layer.

The shape of IBP's "small" and CROWN-IBP's "DM-small" MNIST models (Gowal et al. 2018, https://arxiv.org/abs/1810.12715;
Zhang et al. 2020, https://arxiv.org/abs/1906.06316), widened: strided convolutions instead of pooling keep
interval bounds tight (a max-pool only passes each box on), and few layers keep them from compounding.
"""

from torch import nn

from robustbench_karp.models.base import MODELS


@MODELS.register("certcnn")
def certcnn(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    side = input_size // 4  # two stride-2 convolutions (4x4, padding 1) floor each: 28 -> 14 -> 7, 30 -> 15 -> 7
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 4, stride=2, padding=1), nn.ReLU(),  # (B, 32, H/2, W/2)
        nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),  # (B, 64, H/4, W/4)
        nn.Flatten(),
        nn.Linear(64 * side * side, 512), nn.ReLU(),
        nn.Linear(512, num_classes),
    )
