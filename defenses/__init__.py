"""Defense registry. Adding a defense: one file that registers a frozen dataclass, plus one import line here."""

from robustbench_karp.defenses import fgsm_at, mart, pgd_at, standard, trades  # noqa: F401  (registration)
from robustbench_karp.defenses.base import DEFENSES, Defense, Recipe, build_defense

__all__ = ["DEFENSES", "Defense", "Recipe", "build_defense"]
