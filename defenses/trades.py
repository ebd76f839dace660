"""TRADES (Zhang et al. 2019, https://arxiv.org/abs/1901.08573).

loss = CE(f(x), y) + beta * KL(p(x) || p(x_adv)), where x_adv maximizes the KL term, not the
label loss (one public reimplementation maximizes CE instead). As in the reference, the inner
maximization starts at x + 0.001 * N(0, I) (the KL gradient vanishes at x itself), takes
sign-gradient steps projected to the eps-ball, and runs with the model in eval mode.

Arguments:
    beta (float): weight of the robust KL term. Default 6.0 (the paper's MNIST/CIFAR choice).
    steps (int): inner steps. Default 10. step_size (float | None): None = 2.5 * eps / steps.
    attack_eval_mode (bool): inner maximization in eval mode. Default True (reference).

Recipe (MNIST, sized for two CPU cores): 5 inner steps, Adam with one-cycle to 3e-3, eps ramped over
2 epochs, 6 epochs, the best validation epoch kept, the training step in bf16 autocast with
channels-last (about 2x faster on CPUs with bf16 units; float32 elsewhere). The reference trains SmallCNN for 100 epochs
(SGD 0.01, 40 steps of 0.01). Measured (seed 0, benchmarks/train_mnist_defenses.py): clean 98.30%,
PGD-50 x 10 restarts 92.10% on the first 1000 test points (reference: 99.48% / AA 92.76%); about 2
min per epoch on two cores (the measured run took 41 min beside other jobs). Retrained in float32 on
a CPU without bf16 units (45 min alone): clean 98.0%, PGD-50 x 10 92.1%, AutoAttack 89.2% (APGD-CE
91.0, +APGD-T 90.7, +FAB-T 90.7, +Square 89.2: Square's 1.5% flags possible gradient masking).
"""

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from robustbench_karp.attacks.base import check_positive
from robustbench_karp.defenses.base import Defense, Recipe, inner_attack_mode, register
from robustbench_karp.threat import ThreatModel, ascend, random_normal

_CIFAR = Recipe(epochs=100, optimizer="sgd", lr=0.1, weight_decay=2e-4, schedule="piecewise")


def kl_objective(model, p_clean: torch.Tensor):
    """objective(x_adv, idx) -> per-example KL(p_clean || p(x_adv)), (b,)."""

    def objective(x_adv: torch.Tensor, idx: torch.Tensor):
        log_p_adv = F.log_softmax(model(x_adv), dim=1)
        return F.kl_div(log_p_adv, p_clean[idx], reduction="none").sum(dim=1), None

    return objective


@register("trades")
@dataclass(frozen=True)
class TRADES(Defense):
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
            with torch.no_grad():
                p_clean = F.softmax(inner(x), dim=1)  # (B, classes), fixed target of the inner KL
            start = x + 0.001 * random_normal(x.shape, gen, x)
            x_adv, _ = ascend(x, kl_objective(inner, p_clean), threat, steps=self.steps, step_size=step_size,
                              random_start=False, gen=gen, start=start)
        logits_clean = model(x)
        logits_adv = model(x_adv)
        robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")
        return F.cross_entropy(logits_clean, y) + self.beta * robust, logits_clean
