"""Defense registry. Adding a defense: one file that registers a frozen dataclass, plus one import line here."""

from robustbench_karp.defenses import (  # noqa: F401  (registration)
    crown_ibp,
    defense_gan,
    fgsm_at,
    ibp,
    mart,
    n_fgsm,
    pgd_at,
    standard,
    trades,
)
from robustbench_karp.defenses.base import DEFENSES, Defense, Recipe, build_defense

__all__ = ["DEFENSES", "Defense", "Recipe", "build_defense"]
