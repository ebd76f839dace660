"""MART: misclassification-aware adversarial training (Wang et al. 2020, https://openreview.net/forum?id=rklOg6EFwS).

loss = BCE(f(x_adv), y) + beta * KL(p(x) || p(x_adv)) * (1 - p_y(x)), where the boosted CE
BCE = CE(f(x_adv), y) - log(1 - max_{k != y} p_k(x_adv)) pushes down the strongest wrong class,
and the KL term is weighted towards misclassified clean points. x_adv is PGD on CE.

Arguments:
    beta (float): Default 6.0 (reference). steps (int): Default 10. step_size: None = 2.5 * eps / steps.
    attack_eval_mode (bool): inner attack in eval mode. Default True (reference).
"""

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from robustbench_karp.attacks.base import check_positive, untargeted_objective
from robustbench_karp.defenses.base import Defense, Recipe, inner_attack_mode, register
from robustbench_karp.threat import ThreatModel, ascend

_CIFAR = Recipe(epochs=100, optimizer="sgd", lr=0.01, weight_decay=3.5e-3, schedule="piecewise")


@register("mart")
@dataclass(frozen=True)
class MART(Defense):
    beta: float = 6.0
    steps: int = 10
    step_size: float | None = None
    attack_eval_mode: bool = True
    recipes = {
        "default": Recipe(epochs=10, optimizer="adam", lr=1e-3, schedule="onecycle", eps_ramp_epochs=2),
        "cifar10": _CIFAR, "cifar100": _CIFAR, "svhn": _CIFAR,
    }

    def __post_init__(self):
        check_positive(steps=self.steps)
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    def loss(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator):
        step_size = self.step_size if self.step_size is not None else 2.5 * threat.eps / self.steps
        with inner_attack_mode(model, self.attack_eval_mode) as inner:
            x_adv, _ = ascend(x, untargeted_objective(inner, y), threat, steps=self.steps, step_size=step_size,
                              random_start=True, gen=gen)
        logits_clean, logits_adv = model(x), model(x_adv)  # (B, classes) each
        p_adv, p_clean = F.softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1)
        top2 = p_adv.argsort(dim=1)[:, -2:]
        strongest_wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
        boosted_ce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), strongest_wrong)
        kl = (p_clean * (torch.log(p_clean + 1e-12) - torch.log(p_adv + 1e-12))).sum(dim=1)  # (B,)
        p_true = p_clean.gather(1, y[:, None]).squeeze(1)
        return boosted_ce + self.beta * (kl * (1.0000001 - p_true)).mean(), logits_adv
