"""Any attack of the torchattacks library, by class name: `--attack torchattacks:CW --attack-arg steps=100`.

torchattacks (https://github.com/Harry24k/adversarial-attacks-pytorch) attacks hold the model,
switch it to eval mode, reseed the global RNG (APGD, FAB, Square) and may accumulate .grad. The
adapter contains all of that: it builds the torchattacks object per call, seeds it from our
generator inside `torch.random.fork_rng` (the global RNG is restored afterwards), and restores the
model's mode and every parameter's .grad in `finally`. It never calls `set_normalization_used`:
our models normalize themselves.

Threat model: `eps` (and `norm`, where the class takes one) default to the run's threat model.
Minimum-norm attacks (CW, DeepFool, ...) are unbounded; their output goes through the threat
model's projection, so accuracy is measured inside the eps-ball like every other attack.

Shape: images (B, C, H, W) in [0, 1]; labels (B,). Returns x_adv of the same shape.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from robustbench_karp.attacks.base import Attack, coerce
from robustbench_karp.threat import ThreatModel

_NORM_NAMES = {"linf": "Linf", "l2": "L2"}
_SINGLE_STEP = {"FGSM", "FFGSM", "RFGSM"}
_BLACK_BOX = {"Square", "OnePixel", "Pixle", "SPSA"}


def torchattacks_names() -> list[str]:
    import torchattacks
    from torchattacks.attack import Attack as TAAttack

    names = []
    for n in torchattacks.__all__ if hasattr(torchattacks, "__all__") else dir(torchattacks):
        obj = getattr(torchattacks, n, None)
        if inspect.isclass(obj) and issubclass(obj, TAAttack) and obj is not TAAttack and n not in _NOT_ATTACKS:
            names.append(n)
    return sorted(names)


_NOT_ATTACKS = {"MultiAttack", "LGV", "MIG"}  # wrappers and attacks that need extra models or data


def _constructor(cls_name: str):
    import torchattacks

    if cls_name not in torchattacks_names():
        raise ValueError(f"unknown torchattacks attack {cls_name!r}; valid: {', '.join(torchattacks_names())}")
    cls = getattr(torchattacks, cls_name)
    params = {n: p for n, p in inspect.signature(cls.__init__).parameters.items() if n not in ("self", "model")}
    return cls, params


def derive_seed(gen: torch.Generator) -> int:
    """A 31-bit seed drawn from our generator, for code that insists on seeding itself."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=gen.device).item())


@contextmanager
def contained(model: torch.nn.Module, device: torch.device, seed: int):
    """Run foreign attack code: global RNG forked and seeded, model mode and .grad restored."""
    training = model.training
    grads = [(p, None if p.grad is None else p.grad.clone()) for p in model.parameters()]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        try:
            yield
        finally:
            model.train(training)
            for p, g in grads:
                p.grad = g


def run_torchattack(cls_name: str, model, x, y, threat: ThreatModel, gen: torch.Generator, **kwargs) -> torch.Tensor:
    """Run torchattacks.<cls_name>, filling eps/norm/seed/n_classes from the run, and project the result."""
    cls, params = _constructor(cls_name)
    seed = derive_seed(gen)
    kwargs = dict(kwargs)
    if "eps" in params:
        kwargs.setdefault("eps", threat.eps)
    if "norm" in params:
        kwargs.setdefault("norm", _NORM_NAMES[threat.norm.value])
    if "seed" in params:
        kwargs.setdefault("seed", seed)
    if "n_classes" in params and "n_classes" not in kwargs:
        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        kwargs["n_classes"] = min(10, classes)  # AutoAttack's 9 target classes, the top-9 by logit
    with contained(model, x.device, seed):
        x_adv = cls(model, **kwargs)(x, y)
    return threat.project(x_adv.detach().to(x.device, x.dtype), x)


@dataclass(frozen=True)
class TorchAttack(Attack):
    cls_name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"torchattacks:{self.cls_name}"

    @property
    def single_step(self) -> bool:  # type: ignore[override]
        return self.cls_name in _SINGLE_STEP

    @property
    def black_box(self) -> bool:  # type: ignore[override]
        return self.cls_name in _BLACK_BOX

    @property
    def eot(self) -> bool:  # type: ignore[override]
        return self.cls_name == "EOTPGD"

    @classmethod
    def from_options(cls, cls_name: str, options: dict[str, Any]) -> TorchAttack:
        _, params = _constructor(cls_name)
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise ValueError(f"torchattacks.{cls_name} has no option {', '.join(unknown)}; valid: {', '.join(params)}")
        typed = {}
        for key, value in options.items():
            default = params[key].default
            kind = type(default) if default is not inspect.Parameter.empty and default is not None else str
            typed[key] = coerce(value, kind, key)
            if key == "steps" and not typed[key] >= 1:
                raise ValueError(f"steps must be >= 1, got {typed[key]}")
        return cls(cls_name, tuple(sorted(typed.items())))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "cls_name": self.cls_name, "kwargs": dict(self.kwargs)}

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        return run_torchattack(self.cls_name, model, x, y, threat, gen, **dict(self.kwargs))
