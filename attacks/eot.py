"""EOT-PGD: PGD with Expectation over Transformation (Athalye, Carlini & Wagner 2018, https://arxiv.org/abs/1802.00420).

For a randomized model (random resizing, noise, a purifier with random restarts) the gradient of
one forward pass is one sample of a random variable; EOT ascends the expected loss instead, with
the gradient averaged over `samples` forward/backward passes through the model. A point counts as
misclassified (and leaves the batch under early_stop) only when every one of the samples
misclassifies it, so a lucky draw does not end the attack.

Threat model: Linf or L2 ball of radius eps around x, intersected with [0, 1].

Arguments:
    steps (int): ascent steps per restart. Default 50.
    step_size (float | None): pixel units; None means 2.5 * eps / steps. Default None.
    restarts (int): random restarts, each only on the points no earlier restart broke. Default 1.
    random_start (bool): start at a uniform random point of the ball. Default True.
    samples (int): forward/backward passes averaged per step. Default 8.
    loss (str): "ce" or "margin". Default "ce".
    early_stop (bool): a point leaves the batch at its first misclassified iterate. Default True.

Shape: images (B, C, H, W) in [0, 1]; labels (B,). Returns x_adv of the same shape.

Example:
    >>> x_adv = EOTPGD(steps=40, samples=10)(model, x, y, ThreatModel("linf", 0.3), gen)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from robustbench_karp.attacks.base import LOSSES, Attack, check_positive, register
from robustbench_karp.attacks.pgd import check_step_size, restarted_ascent
from robustbench_karp.threat import Objective, ThreatModel

Forward = Callable[[torch.Tensor], torch.Tensor]  # x (b, C, H, W) -> logits (b, classes), differentiable in x


def eot_objective(forward: Forward, y: torch.Tensor, loss: str, samples: int) -> Objective:
    """objective(x_adv, idx) for `ascend`: the loss averaged over `samples` passes; done = every pass misclassifies."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
    loss_fn = LOSSES[loss]

    def objective(x_adv: torch.Tensor, idx: torch.Tensor):
        total, wrong = 0.0, torch.ones(len(idx), dtype=torch.bool, device=x_adv.device)
        for _ in range(samples):
            logits = forward(x_adv)  # (b, classes)
            total = total + loss_fn(logits, y[idx])
            wrong &= logits.argmax(1) != y[idx]
        return total / samples, wrong

    return objective


@register("eot-pgd")
@dataclass(frozen=True)
class EOTPGD(Attack):
    splits = True  # every pass goes through ascend's physical pieces
    adaptive: ClassVar[bool] = True
    eot: ClassVar[bool] = True
    steps: int = 50
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    samples: int = 8
    loss: str = "ce"
    early_stop: bool = True

    def __post_init__(self):
        check_positive(steps=self.steps, restarts=self.restarts, samples=self.samples)
        check_step_size(self.step_size)
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; valid: {', '.join(LOSSES)}")

    def forward_budget(self) -> float:
        return float((self.restarts * (self.steps + 1) - 1) * self.samples)

    def gradient_model(self, model) -> Forward:
        """What gradients are taken through: the model itself (BPDA replaces its preprocessing)."""
        return model

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        step_size = self.step_size if self.step_size is not None else 2.5 * threat.eps / self.steps
        forward = self.gradient_model(model)
        return restarted_ascent(lambda y_todo: eot_objective(forward, y_todo, self.loss, self.samples), x, y, threat, gen,
                                steps=self.steps, step_size=step_size, restarts=self.restarts,
                                random_start=self.random_start, early_stop=self.early_stop)
