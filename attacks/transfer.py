"""Transfer-PGD: PGD on the undefended classifier, evaluated on the defended model
(the transfer baseline of Athalye, Carlini & Wagner 2018, https://arxiv.org/abs/1802.00420).

A purifier defense should at least withstand adversarial examples crafted against its own
classifier without the purifier; if it does not, its robustness is not worth attacking adaptively.
The attack computes PGD on `model.classifier` and returns the points; the engine then judges them
with the full defended model, classifier(preprocess(x)).

Protocol: the model has an attribute `classifier` (nn.Module); a model without one raises ValueError.
It is not marked `adaptive`: it never looks at the purifier, so it cannot get around obfuscated
gradients; it is the sanity check that comes with the adaptive BPDA attack.

Threat model: Linf or L2 ball of radius eps around x, intersected with [0, 1].

Arguments:
    steps (int): ascent steps per restart. Default 50.
    step_size (float | None): pixel units; None means 2.5 * eps / steps. Default None.
    restarts (int): random restarts on the classifier. Default 1.
    random_start (bool): start at a uniform random point of the ball. Default True.
    loss (str): "ce" or "margin". Default "ce".
    early_stop (bool): stop at the first point that fools the classifier (not the defended model).
        Default False: the examples keep climbing the classifier's loss, which transfers better.

Shape: images (B, C, H, W) in [0, 1]; labels (B,). Returns x_adv of the same shape.

Example:
    >>> x_adv = TransferPGD(steps=50)(defended, x, y, ThreatModel("linf", 0.3), gen)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustbench_karp.attacks.base import Attack, register
from robustbench_karp.attacks.pgd import PGD
from robustbench_karp.threat import ThreatModel


@register("transfer-pgd")
@dataclass(frozen=True)
class TransferPGD(Attack):
    splits = True  # every pass goes through ascend's physical pieces
    steps: int = 50
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    loss: str = "ce"
    early_stop: bool = False

    def __post_init__(self):
        self.pgd()  # validates the options

    def pgd(self) -> PGD:
        return PGD(steps=self.steps, step_size=self.step_size, restarts=self.restarts, random_start=self.random_start,
                   loss=self.loss, early_stop=self.early_stop)

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        classifier = getattr(model, "classifier", None)
        if classifier is None:
            raise ValueError(f"transfer-pgd attacks the undefended classifier, but {type(model).__name__} has no "
                             "`classifier` attribute (use it on a purifier defense such as defense-gan)")
        return self.pgd()(classifier, x, y, threat, gen).detach()
