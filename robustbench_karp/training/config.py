"""A training configuration: everything that determines the trained weights, and the precision it runs in.

    config = make_train_config("smallcnn", "mnist", "pgd-at", seed=0)   # the defense's registered recipe
    config.stem("fp32")   # smallcnn-mnist-pgd-at-s0-fp32-<hash>: the checkpoint's name (checkpoints.py)

Its hash names the checkpoint; the loop that trains it is train.fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from robustbench_karp.data import DATASETS
from robustbench_karp.defenses.base import HASH_OPTIONAL, Recipe, build_defense
from robustbench_karp.models import create_model
from robustbench_karp.store import config_hash
from robustbench_karp.threat import check_eps


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights; its hash names the checkpoint."""

    model: str
    dataset: str
    defense: dict  # defense.config(): name and every option
    recipe: dict  # asdict(Recipe)
    norm: str
    eps: float
    seed: int
    val_size: int = 1000  # held out from the end of the training split
    guard_size: int = 512  # catastrophic-overfitting guard: first points of the training split
    guard_drop: float = 0.2  # collapse = guard PGD accuracy this far below its best
    train_size: int | None = None  # train on the first N points only (None: the whole training split)

    def hash(self) -> str:
        config = asdict(self)
        config["recipe"] = {k: v for k, v in config["recipe"].items() if HASH_OPTIONAL.get(k, object()) != v}
        return config_hash(config)

    def stem(self, precision: str | None = None) -> str:
        """The checkpoint's file stem; precision ("bf16"/"fp32") is the one it was actually trained in."""
        tag = f"-{precision}" if precision else ""
        return f"{self.model}-{self.dataset}-{self.defense['name']}-s{self.seed}{tag}-{self.hash()}"

    def precision(self, device: torch.device) -> str:
        """The precision a training of this config on `device` runs in (bf16 needs bf16 units)."""
        return "bf16" if effective_amp(Recipe(**self.recipe), device) == "bf16" else "fp32"


def make_train_config(model: str, dataset: str, defense: str = "standard", *, defense_options: dict | None = None,
                      recipe_overrides: dict | None = None, norm: str = "linf", eps: float | None = None,
                      seed: int = 0, train_size: int | None = None) -> TrainConfig:
    """The configuration for (model, dataset, defense) with the defense's registered recipe, plus overrides."""
    spec = DATASETS.get(dataset)
    built = build_defense(defense, defense_options, dataset).classifier_defense()  # a purifier trains its base
    recipe = Recipe(**{**asdict(built.recipe_for(dataset)), **(recipe_overrides or {})})
    eps = spec.default_eps[norm] if eps is None else eps
    check_eps(norm, eps, (spec.in_channels, spec.input_size, spec.input_size))  # 8 meaning 8/255 is refused
    if built.adversarial and not eps > 0:
        raise ValueError(f"defense {defense!r} trains against an attack: eps must be > 0, got {eps}")
    val_size = 1000 if dataset != "digits" else 143
    return TrainConfig(model, dataset, built.config(), asdict(recipe), norm, float(eps), seed, val_size=val_size,
                       train_size=train_size)


def build_model(config: TrainConfig) -> nn.Module:
    """A freshly initialized model; initialization is seeded without disturbing the global RNG."""
    spec = DATASETS.get(config.dataset)
    with torch.random.fork_rng(devices=[]):  # the CPU generator only: initialization happens on the CPU
        torch.default_generator.manual_seed(config.seed)
        return create_model(config.model, in_channels=spec.in_channels, num_classes=spec.num_classes,
                            input_size=spec.input_size, mean=spec.mean, std=spec.std)


def bf16_supported(device: torch.device) -> bool:
    """Whether the device computes in bfloat16 natively (elsewhere autocast emulates it, slower than fp32)."""
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch before 2.4 has no including_emulation (and counts no emulation)
            return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def effective_amp(recipe: Recipe, device: torch.device) -> str:
    """The recipe's precision, or "none" where the device has no bf16 units (the checkpoint records which)."""
    return recipe.amp if recipe.amp == "none" or bf16_supported(device) else "none"
