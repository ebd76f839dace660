"""Spatial transformer network (Jaderberg et al. 2015, https://arxiv.org/abs/1506.02025).

An affine localization net predicts theta (B, 2, 3); `affine_grid` + `grid_sample` warp the
input, and a small CNN classifies the warped image. theta starts at the identity, so an
untrained STN is the plain CNN. Input sizes from 8x8 up work (adaptive pooling in both nets).
"""

import torch
from torch import nn
from torch.nn import functional as F

from robustbench_karp.models.base import MODELS


class SpatialTransformerNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.localization = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(8, 10, 3, padding=1), nn.AdaptiveAvgPool2d(3), nn.ReLU(),
            nn.Flatten(), nn.Linear(10 * 3 * 3, 32), nn.ReLU(), nn.Linear(32, 6),
        )
        nn.init.zeros_(self.localization[-1].weight)
        with torch.no_grad():
            self.localization[-1].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        self.classifier = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.localization(x).view(-1, 2, 3)  # (B, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
        warped = F.grid_sample(x, grid, align_corners=False)
        return self.classifier(warped)


@MODELS.register("stn")
def stn(in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    return SpatialTransformerNet(in_channels, num_classes)
