"""Fast adversarial training: FGSM with a random start (Wong, Rice & Kolter 2020, https://arxiv.org/abs/2001.03994).

Each batch is replaced by one FGSM step of size step_scale * eps from a uniform random point of
the eps-ball, projected back to the ball around the clean input (one public reimplementation
skips the projection and trains at up to 2 eps). Threat model: Linf (or L2 with the L2 step).

Catastrophic overfitting: single-step training can suddenly lose all robustness to multi-step
attacks while FGSM accuracy soars. The training loop's guard measures PGD accuracy on a fixed
training slice every epoch, stops when it collapses and keeps the best checkpoint.

Arguments:
    step_scale (float): step = step_scale * eps. Default 1.25 (the paper's alpha).
    attack_eval_mode (bool): inner FGSM with the model in eval mode. Default False (reference).
"""

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from robustbench_karp.attacks.base import untargeted_objective
from robustbench_karp.defenses.base import Defense, Recipe, inner_attack_mode, register
from robustbench_karp.threat import ThreatModel, ascend

_CIFAR = Recipe(epochs=15, optimizer="sgd", lr=0.2, weight_decay=5e-4, schedule="onecycle")


@register("fgsm-at")
@dataclass(frozen=True)
class FGSMAT(Defense):
    step_scale: float = 1.25
    clip_start: bool = True
    attack_eval_mode: bool = False
    recipes = {
        "default": Recipe(epochs=10, optimizer="adam", lr=1e-3, schedule="onecycle", eps_ramp_epochs=2),
        "cifar10": _CIFAR, "cifar100": _CIFAR, "svhn": _CIFAR,
    }

    def __post_init__(self):
        if not self.step_scale > 0:
            raise ValueError(f"step_scale must be > 0, got {self.step_scale}")

    def loss(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator):
        with inner_attack_mode(model, self.attack_eval_mode) as inner:
            start = threat.random_point(x, gen, clip=self.clip_start)
            x_adv, _ = ascend(x, untargeted_objective(inner, y), threat, steps=1,
                              step_size=self.step_scale * threat.eps, random_start=True, gen=gen, start=start)
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits
