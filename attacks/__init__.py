"""Attack registry. Adding an attack: one file that registers a frozen dataclass, plus one import line here."""

from robustbench_karp.attacks import advgan, apgd, autoattack, bpda, eot, fgsm, pgd, strong, torchattacks_adapter, transfer  # noqa: F401  (registration)
from robustbench_karp.attacks.base import ATTACKS, Attack, as_attack, build_attack

__all__ = ["ATTACKS", "Attack", "as_attack", "build_attack"]
