"""Standard training: cross-entropy on clean images. The baseline every defense is compared with.

Recipes: Adam on the small datasets (digits: 8 epochs of one-cycle to 2e-3, fused step; MNIST: 4 epochs at
1e-3, about 99% test accuracy with smallcnn); SGD 0.1 with momentum, weight decay 5e-4 and the
piecewise schedule for 100 epochs on CIFAR/SVHN-sized data.
"""

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from robustbench_karp.defenses.base import Defense, Recipe, register
from robustbench_karp.threat import ThreatModel

_CIFAR = Recipe(epochs=100, batch_size=128, optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="piecewise")


@register("standard")
@dataclass(frozen=True)
class Standard(Defense):
    adversarial = False
    recipes = {
        "default": Recipe(epochs=10, batch_size=128, optimizer="adam", lr=1e-3),
        "digits": Recipe(epochs=8, batch_size=64, optimizer="adam", lr=2e-3, schedule="onecycle", fused=True),
        "mnist": Recipe(epochs=4, batch_size=128, optimizer="adam", lr=1e-3),
        "fashion-mnist": Recipe(epochs=10, batch_size=128, optimizer="adam", lr=1e-3),
        "cifar10": _CIFAR, "cifar100": _CIFAR, "svhn": Recipe(epochs=40, optimizer="sgd", lr=0.01, weight_decay=5e-4,
                                                              schedule="piecewise"),
    }

    def loss(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator):
        logits = model(x)  # (B, classes)
        return F.cross_entropy(logits, y), logits
