"""The defense contract and registry, and the pieces defenses share.

A defense is a frozen dataclass that only says how a batch's training loss is formed:

    loss, logits = defense.loss(model, x, y, threat, gen)   # scalar loss, (B, classes) for progress

A defense whose `uses_memory()` is true also gets `memory=` (a robustbench_karp.defenses.memory.BatchMemory):
the rows of a per-example tensor that the loop keeps across epochs, checkpoints and syncs over DDP.

The one training loop (robustbench_karp.training.loop) owns everything else: device, autocast, optimizer,
schedule, epochs, checkpoints, logging and the catastrophic-overfitting guard. `recipes` holds the
defense's registered default training recipe per dataset ("default" for the rest): the one that
reaches its documented numbers with no schedule flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustbench_karp.registry import Registry
from robustbench_karp.threat import ThreatModel
from robustbench_karp.threat.context import RunContext

DEFENSES: Registry[type] = Registry("defense")
SCHEDULES = ("constant", "piecewise", "onecycle", "cosine")
OPTIMIZERS = ("sgd", "adam")
AMP_MODES = ("none", "bf16")
# Recipe fields added after the first checkpoints: they enter a configuration's hash only when set, so the
# checkpoints and records made before them keep their names.
HASH_OPTIONAL = {"amp": "none", "channels_last": False, "fused": False}


@dataclass(frozen=True)
class Recipe:
    """How to train: optimizer, learning-rate schedule, epochs, batch size, eps warm-up."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    milestones: tuple[float, ...] = (0.5, 0.75)  # piecewise: x0.1 at these fractions of training
    warmup_fraction: float = 0.4  # onecycle: share of training spent rising to lr
    eps_ramp_epochs: float = 0.0  # eps rises linearly from 0 over this many epochs (0: off)
    ema_decay: float = 0.0  # evaluate and keep an exponential moving average of the weights (0: off)
    select: str = "last"  # final weights: "last" epoch, or "best" validation PGD accuracy (early stopping)
    amp: str = "none"  # "bf16": autocast the training step to bfloat16 (CUDA, and CPUs with bf16 units)
    channels_last: bool = False  # channels-last memory format for the model and batches
    fused: bool = False  # the optimizer's fused step (one kernel for all parameters; CPU needs torch >= 2.4)

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.select not in ("last", "best"):
            raise ValueError(f"select must be 'last' or 'best', got {self.select!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"unknown amp {self.amp!r}; valid: {', '.join(AMP_MODES)}")
        object.__setattr__(self, "milestones", tuple(self.milestones))


class Defense:
    """Base of the registered defense dataclasses."""

    name: typing.ClassVar[str] = ""
    recipes: typing.ClassVar[dict[str, Recipe]] = {"default": Recipe()}
    # Per-dataset defaults of the defense's own options (e.g. fgsm-at's step on MNIST); explicit options win.
    dataset_options: typing.ClassVar[dict[str, dict[str, Any]]] = {}
    adversarial: typing.ClassVar[bool] = True  # trains against an inner attack: needs eps > 0

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
             gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def uses_memory(self) -> bool:
        """True when loss() takes `memory=`: the batch's rows of the loop's per-example memory."""
        return False

    def uses_ramp(self) -> bool:
        """True when loss() takes `ramp=`: how far the eps warm-up has come, in [0, 1] (certified training's
        kappa and beta follow it)."""
        return False

    @classmethod
    def recipe_for(cls, dataset: str) -> Recipe:
        return cls.recipes.get(dataset, cls.recipes["default"])

    def classifier_defense(self) -> Defense:
        """The defense whose loss and recipe train the classifier checkpoint (a purifier names its base)."""
        return self

    def wrap(self, classifier: nn.Module, context: RunContext) -> nn.Module:
        """The model the harness attacks; a purifier defense puts its purifier in front of the classifier."""
        return classifier

    def adaptive_attacks(self) -> list:
        """Attacks an honest evaluation of this defense must add (BPDA/EOT for a purifier)."""
        return []

    def config(self) -> dict[str, Any]:
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}


def register(name: str):
    def add(cls):
        cls.name = name
        return DEFENSES.register(name)(cls)

    return add


def build_defense(name: str, options: dict[str, Any] | None = None, dataset: str | None = None) -> Defense:
    """The defense with its options (strings are coerced); `dataset` applies the defense's per-dataset defaults."""
    from robustbench_karp.attacks.base import coerce

    cls = DEFENSES.get(name)
    options = {**(cls.dataset_options.get(dataset, {}) if dataset else {}), **(options or {})}
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"defense {name!r} has no option {', '.join(unknown)}; valid: {', '.join(sorted(fields)) or 'none'}")
    return cls(**{k: coerce(v, hints[k], k) for k, v in options.items()})


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel: inner attacks must not go through DDP's hooks."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def inner_attack_mode(model: nn.Module, eval_mode: bool) -> Iterator[nn.Module]:
    """Yield the unwrapped model, in eval mode if asked; the previous mode is restored in finally."""
    inner = unwrap(model)
    was_training = inner.training
    if eval_mode:
        inner.eval()
    try:
        yield inner
    finally:
        inner.train(was_training)

