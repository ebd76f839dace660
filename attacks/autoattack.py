"""AutoAttack, standard version (Croce & Hein 2020, https://arxiv.org/abs/2003.01690).

APGD-CE, APGD-T (9 target classes), FAB-T (9 target classes) and Square (5000 queries), run in
cascade: each attack only sees the points all earlier ones failed on, and robust accuracy is the
per-example worst case. The four components are also registered on their own (`apgd-ce`,
`apgd-t`, `fab-t`, `square`). They run torchattacks' ports through the contained adapter, with the
original's 100 iterations (torchattacks' own AutoAttack leaves APGD at 10 steps).

Threat model: Linf or L2, eps from the run.

Arguments:
    steps (int): iterations of APGD-CE, APGD-T and FAB-T. Default 100.
    square_queries (int): queries of Square. Default 5000.

Shape: images (B, C, H, W) in [0, 1]; labels (B,). Returns x_adv of the same shape.

Example:
    >>> x_adv = AutoAttack()(model, x, y, ThreatModel("linf", 8/255), gen)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustbench_karp.attacks.base import Attack, check_positive, register, run_cascade
from robustbench_karp.attacks.torchattacks_adapter import run_torchattack
from robustbench_karp.threat import ThreatModel

TARGETED_DLR_CLASSES = 4  # the targeted DLR loss divides by z_(1) - (z_(3) + z_(4)) / 2: the 4 largest logits


def check_classes(model, x: torch.Tensor, name: str) -> None:
    """A one-line error, instead of an IndexError deep in the loss, for a model with too few classes."""
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    if classes < TARGETED_DLR_CLASSES:
        raise ValueError(f"{name} needs a model with at least {TARGETED_DLR_CLASSES} classes (its targeted DLR loss "
                         f"uses the 3rd and 4th largest logits); this one has {classes}: use apgd-ce, fab-t and square")


@register("apgd-ce")
@dataclass(frozen=True)
class APGDCE(Attack):
    steps: int = 100
    restarts: int = 1

    def __post_init__(self):
        check_positive(steps=self.steps, restarts=self.restarts)

    def __call__(self, model, x, y, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        return run_torchattack("APGD", model, x, y, threat, gen, steps=self.steps, n_restarts=self.restarts, loss="ce")

    def forward_budget(self) -> float:  # counted on a model no point of which breaks (tests/test_progress.py)
        return float(self.restarts * (self.steps + 1) + 1)


@register("apgd-t")
@dataclass(frozen=True)
class APGDT(Attack):
    steps: int = 100
    restarts: int = 1

    def __post_init__(self):
        check_positive(steps=self.steps, restarts=self.restarts)

    def __call__(self, model, x, y, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        check_classes(model, x, "apgd-t")
        return run_torchattack("APGDT", model, x, y, threat, gen, steps=self.steps, n_restarts=self.restarts)

    def forward_budget(self) -> float:  # 9 target classes
        return float(self.restarts * 9 * (self.steps + 1) + 11)


@register("fab-t")
@dataclass(frozen=True)
class FABT(Attack):
    steps: int = 100
    restarts: int = 1

    def __post_init__(self):
        check_positive(steps=self.steps, restarts=self.restarts)

    def __call__(self, model, x, y, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        return run_torchattack("FAB", model, x, y, threat, gen, steps=self.steps, n_restarts=self.restarts,
                               multi_targeted=True)

    def forward_budget(self) -> float:  # 9 target classes, 2 passes per step
        return float(self.restarts * (18 * self.steps + 29))


@register("square")
@dataclass(frozen=True)
class Square(Attack):
    black_box = True
    queries: int = 5000
    restarts: int = 1

    def __post_init__(self):
        check_positive(queries=self.queries, restarts=self.restarts)

    def __call__(self, model, x, y, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        return run_torchattack("Square", model, x, y, threat, gen, n_queries=self.queries, n_restarts=self.restarts)

    def forward_budget(self) -> float:
        return float(self.restarts * (self.queries + 3))


@register("autoattack")
@dataclass(frozen=True)
class AutoAttack(Attack):
    steps: int = 100
    square_queries: int = 5000

    def __post_init__(self):
        check_positive(steps=self.steps, square_queries=self.square_queries)

    def components(self) -> list[tuple[str, Attack]]:
        return [
            ("autoattack/apgd-ce", APGDCE(self.steps)),
            ("autoattack/apgd-t", APGDT(self.steps)),
            ("autoattack/fab-t", FABT(self.steps)),
            ("autoattack/square", Square(self.square_queries)),
        ]

    def __call__(self, model, x, y, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        """The cascade on its own, for library use; the engine runs `components()` itself."""
        check_classes(model, x, "autoattack")
        return run_cascade(self.components(), model, x, y, threat, gen)
