"""PGD adversarial training (Madry et al. 2018, https://arxiv.org/abs/1706.06083).

min_theta E max_{||delta|| <= eps} CE(f(x + delta), y): each batch is replaced by PGD examples
(k steps from a uniform random start, through the shared `ascend`). Threat model: Linf or L2.

Arguments:
    steps (int): inner PGD steps. Default 10 (Madry used 40 on MNIST; 10 fits a CPU budget).
    step_size (float | None): None means 2.5 * eps / steps. Default None.
    attack_eval_mode (bool): run the inner attack with the model in eval mode. Default False.

Recipe (MNIST, sized for two CPU cores): 5 inner steps (step 2.5 eps / 5), Adam with one-cycle to
3e-3, eps ramped from 0 over the first 2 epochs, 6 epochs, the best validation epoch kept, the training step in bf16 autocast with
channels-last (about 2x faster on CPUs with bf16 units; float32 elsewhere).
Madry et al. used 40 steps of 0.01 and about 83 epochs (100k iterations of batch 50).
Measured (seed 0, two CPU cores, benchmarks/train_mnist_defenses.py): 9.8 min of training, clean
99.00%, PGD-50 x 10 restarts 91.90% on the first 1000 test points (Madry: 98.53% / AA 88.43%).
Retrained in float32 on a CPU without bf16 units (about 35 min alone): clean 99.0%, PGD-50 x 10
91.9%, AutoAttack 90.2% (APGD-CE 90.6, +APGD-T 90.4, +FAB-T 90.4, +Square 90.2).
"""

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from robustbench_karp.attacks.base import check_positive, untargeted_objective
from robustbench_karp.defenses.base import Defense, Recipe, inner_attack_mode, register
from robustbench_karp.threat import ThreatModel, ascend

_CIFAR = Recipe(epochs=100, optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="piecewise")


@register("pgd-at")
@dataclass(frozen=True)
class PGDAT(Defense):
    steps: int = 10
    step_size: float | None = None
    attack_eval_mode: bool = False
    dataset_options = {"mnist": {"steps": 5}}
    recipes = {
        "default": Recipe(epochs=10, optimizer="adam", lr=1e-3, schedule="onecycle", eps_ramp_epochs=2),
        "mnist": Recipe(epochs=6, optimizer="adam", lr=3e-3, schedule="onecycle", eps_ramp_epochs=2, select="best",
                        amp="bf16", channels_last=True),
        "cifar10": _CIFAR, "cifar100": _CIFAR, "svhn": Recipe(epochs=40, optimizer="sgd", lr=0.01, weight_decay=5e-4,
                                                              schedule="piecewise", eps_ramp_epochs=5),
    }

    def __post_init__(self):
        check_positive(steps=self.steps)

    def loss(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator):
        step_size = self.step_size if self.step_size is not None else 2.5 * threat.eps / self.steps
        with inner_attack_mode(model, self.attack_eval_mode) as inner:
            x_adv, _ = ascend(x, untargeted_objective(inner, y), threat, steps=self.steps, step_size=step_size,
                              random_start=True, gen=gen)
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits
