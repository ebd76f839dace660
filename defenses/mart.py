"""MART: misclassification-aware adversarial training (Wang et al. 2020, https://openreview.net/forum?id=rklOg6EFwS).

loss = BCE(f(x_adv), y) + beta * KL(p(x) || p(x_adv)) * (1 - p_y(x)), where the boosted CE
BCE = CE(f(x_adv), y) - log(1 - max_{k != y} p_k(x_adv)) pushes down the strongest wrong class,
and the KL term is weighted towards misclassified clean points. x_adv is PGD on CE.

Arguments:
    beta (float): Default 6.0 (reference). steps (int): Default 10. step_size: None = 2.5 * eps / steps.
    attack_eval_mode (bool): inner attack in eval mode. Default True (reference).

Recipe (MNIST, sized for two CPU cores like PGD-AT's and TRADES'): 5 inner steps, Adam with one-cycle
to 3e-3, eps ramped over 2 epochs, 6 epochs, the best validation epoch kept, the training step in bf16
autocast with channels-last where the CPU has bf16 units (float32 elsewhere). The reference trains on
CIFAR-10 only (SGD 0.01, 10 steps of 2/255, 120 epochs); it has no MNIST recipe.
Measured (seed 0, bf16, two CPU cores, benchmarks/train_mnist_defenses.py): 9.7 min of training, clean
99.0%, PGD-50 x 10 restarts 92.8%, AutoAttack 89.9% (Square flags 0.9%) on the first 1000 test points.
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
    dataset_options = {"mnist": {"steps": 5}}
    recipes = {
        "default": Recipe(epochs=10, optimizer="adam", lr=1e-3, schedule="onecycle", eps_ramp_epochs=2),
        "mnist": Recipe(epochs=6, optimizer="adam", lr=3e-3, schedule="onecycle", eps_ramp_epochs=2, select="best",
                        amp="bf16", channels_last=True),
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
        # (B, classes) each, in float32 even under bf16 autocast: 1.0001 - p is 1 - p in bf16, and the
        # boosted CE's log(1 - p) then diverges (a bf16 MNIST run fell to chance accuracy in one epoch)
        logits_clean, logits_adv = model(x).float(), model(x_adv).float()
        p_adv, p_clean = F.softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1)
        top2 = p_adv.argsort(dim=1)[:, -2:]
        strongest_wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
        boosted_ce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), strongest_wrong)
        kl = (p_clean * (torch.log(p_clean + 1e-12) - torch.log(p_adv + 1e-12))).sum(dim=1)  # (B,)
        p_true = p_clean.gather(1, y[:, None]).squeeze(1)
        return boosted_ce + self.beta * (kl * (1.0000001 - p_true)).mean(), logits_adv
