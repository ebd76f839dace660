"""Attack registry. Adding an attack: one file that registers a frozen dataclass, plus one import line here."""

from robustbench_karp.attacks import autoattack, fgsm, pgd, torchattacks_adapter  # noqa: F401  (registration)
from robustbench_karp.attacks.base import ATTACKS, Attack, build_attack

__all__ = ["ATTACKS", "Attack", "build_attack"]
