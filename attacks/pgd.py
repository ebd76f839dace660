"""PGD: projected gradient descent (Madry et al. 2018, https://arxiv.org/abs/1706.06083).

Threat model: Linf or L2 ball of radius eps around x, intersected with [0, 1].

Arguments:
    steps (int): ascent steps per restart. Default 50.
    step_size (float | None): pixel units; None means 2.5 * eps / steps (Madry's rule). Default None.
    restarts (int): random restarts; a restart only attacks the points still robust. Default 1.
    random_start (bool): start at a uniform random point of the ball. Default True.
    loss (str): "ce" or "margin" (C&W margin on logits). Default "ce".
    early_stop (bool): a point leaves the batch at its first misclassified iterate, which is kept.
        It only saves work: the attack is never weaker than the plain last iterate. Default True.

Shape: images (B, C, H, W) in [0, 1]; labels (B,). Returns x_adv of the same shape.

Example:
    >>> x_adv = PGD(steps=40, step_size=0.01)(model, x, y, ThreatModel("linf", 0.3), gen)
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

from robustbench_karp.attacks.base import Attack, check_positive, register, untargeted_objective
from robustbench_karp.threat import Objective, ThreatModel, ascend
from robustbench_karp.threat.rows import pieces


@register("pgd")
@dataclass(frozen=True)
class PGD(Attack):
    splits = True  # every pass goes through ascend's physical pieces
    steps: int = 50
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    loss: str = "ce"
    early_stop: bool = True

    def __post_init__(self):
        check_positive(steps=self.steps, restarts=self.restarts)
        check_step_size(self.step_size)

    def forward_budget(self) -> float:
        return float(self.restarts * (self.steps + 1) - 1)  # a pass per step, and a check between restarts

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        step_size = self.step_size if self.step_size is not None else 2.5 * threat.eps / self.steps
        return restarted_ascent(lambda y_todo: untargeted_objective(model, y_todo, self.loss), x, y, threat, gen,
                                steps=self.steps, step_size=step_size, restarts=self.restarts,
                                random_start=self.random_start, early_stop=self.early_stop)


def check_step_size(step_size: float | None) -> None:
    if step_size is not None and not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")


def restarted_ascent(make_objective: Callable[[torch.Tensor], Objective], x: torch.Tensor, y: torch.Tensor,
                     threat: ThreatModel, gen: torch.Generator, *, steps: int, step_size: float, restarts: int,
                     random_start: bool, early_stop: bool) -> torch.Tensor:
    """PGD's restart loop over `ascend`: each restart attacks only the points no earlier restart broke.

    make_objective(y_todo) builds the objective for the labels of the points still to attack.
    """
    x_adv = x.clone()
    todo = torch.arange(len(x), device=x.device)  # (t,) points no restart has broken yet
    for restart in range(restarts):
        objective = make_objective(y[todo])
        found, done = ascend(x[todo], objective, threat, steps=steps, step_size=step_size,
                             random_start=random_start, gen=gen, stop_when_done=early_stop,
                             final_check=restart < restarts - 1)
        x_adv[todo] = found
        if restart == restarts - 1:
            break
        if not early_stop:
            with torch.no_grad():  # in physical pieces when memory asks (robustbench_karp.threat.rows)
                positions = torch.arange(len(found), device=x.device)
                done = torch.cat([objective(found[rows], positions[rows])[1] for rows in pieces(len(found))])
        todo = todo[~done]
        if not len(todo):
            break
    return x_adv.detach()
