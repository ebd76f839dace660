"""FGSM: Fast Gradient Sign Method (Goodfellow et al. 2015, https://arxiv.org/abs/1412.6572).

Threat model: Linf (x + eps * sign(grad)) or L2 (x + eps * grad / ||grad||, the "fast gradient
method"), clipped to [0, 1]. One step of the shared `ascend` loop, no random start.

Arguments:
    loss (str): "ce" (cross-entropy, the paper's) or "margin" (C&W margin on logits). Default "ce".

Shape: images (B, C, H, W) in [0, 1]; labels (B,). Returns x_adv of the same shape.

Example:
    >>> x_adv = FGSM()(model, x, y, ThreatModel("linf", 0.3), torch.Generator().manual_seed(0))
"""

from dataclasses import dataclass

import torch

from robustbench_karp.attacks.base import Attack, register, untargeted_objective
from robustbench_karp.threat import ThreatModel, ascend


@register("fgsm")
@dataclass(frozen=True)
class FGSM(Attack):
    single_step = True
    splits = True  # every pass goes through ascend's physical pieces
    loss: str = "ce"

    def forward_budget(self) -> float:
        return 1.0

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        objective = untargeted_objective(model, y, self.loss)
        x_adv, _ = ascend(x, objective, threat, steps=1, step_size=threat.eps, random_start=False, gen=gen)
        return x_adv
