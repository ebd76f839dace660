"""The attack contract, the attack registry and parsing of attack options.

An attack is a frozen dataclass holding configuration only:

    x_adv = attack(model, x, y, threat, gen)   # (B, C, H, W) in [0, 1], detached

It never stores the model, never calls .train()/.eval(), never touches the global RNG (it draws
from `gen`), never moves tensors between devices. An attack made of several attacks run in
cascade (AutoAttack) lists them in `components()`; the engine runs each on the points still robust.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import torch
from torch.nn import functional as F

from robustbench_karp.registry import Registry
from robustbench_karp.threat import ThreatModel
from robustbench_karp.threat.context import RunContext

ATTACKS: Registry[type] = Registry("attack")


class Attack:
    """Base of the registered attack dataclasses."""

    name: typing.ClassVar[str] = ""
    # What the sanity checks need to know about an attack (robustbench_karp.evaluation.checks).
    single_step: typing.ClassVar[bool] = False
    black_box: typing.ClassVar[bool] = False  # uses only the model's outputs
    adaptive: typing.ClassVar[bool] = False  # built to get through preprocessing defenses (BPDA, EOT, transfer)
    eot: typing.ClassVar[bool] = False  # averages gradients over the model's randomness
    # Whether every pass through the network goes through robustbench_karp.threat.rows, so that the engine
    # may cut a logical batch into smaller physical pieces on out-of-memory without changing a number.
    splits: typing.ClassVar[bool] = False

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def forward_budget(self) -> float | None:
        """About the most forward passes the attack spends per attacked point, for progress estimates only
        (early stop spends fewer); None where unknown. Never part of a config or a record."""
        return None

    def components(self) -> list[tuple[str, Attack]]:
        """(name, attack) pairs the engine runs in cascade; a plain attack is its own only component."""
        return [(self.name, self)]

    def config(self) -> dict[str, Any]:
        """Name and every parameter: serialized into each record."""
        return {"name": self.name, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}}

    def bind(self, context: RunContext) -> Attack:
        """This attack for a given run; attacks that train on the run's data (AdvGAN) fill in fields here."""
        return self

    def provenance(self, model) -> dict[str, Any]:
        """Extra facts for the record after a run (e.g. the sha256 of a trained generator)."""
        return {}

    def prepare(self, model, device: torch.device) -> dict[str, Any] | None:
        """Train or load what the attack needs before the evaluation starts, outside its counted cost, and return
        that network's identity for the EvalConfig (its sha256 and recipe); None for an attack that needs none."""
        return None


def register(name: str):
    """Class decorator: registers a frozen-dataclass attack under `name`."""

    def add(cls):
        cls.name = name
        return ATTACKS.register(name)(cls)

    return add


def parse_number(text: str) -> float:
    """'0.3', '8/255', '1e-2' -> float; anything else raises ValueError."""
    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"not a number or fraction: {text!r}") from None


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Turn a CLI string into the type the dataclass field declares (int, float, bool, str, Optional)."""
    if not isinstance(value, str):
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value.lower() in ("none", "null"):
            return None
        annotation = options[0]
    if annotation is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{key}: expected an integer, got {value!r}") from None
    if annotation is float:
        try:
            return parse_number(value)
        except ValueError:
            raise ValueError(f"{key}: expected a number, got {value!r}") from None
    return value


# "torchattacks:<Class>": a prefix names an adapter that builds any attack of its family; the adapter's module
# registers it here on import (attacks/__init__.py imports it), as every attack registers its name.
PREFIXED: dict[str, Callable[[str, dict[str, Any]], Attack]] = {}


def build_attack(name: str, options: dict[str, Any] | None = None) -> Attack:
    """An attack from its registered name (or 'torchattacks:<Class>') and options given as strings or values."""
    options = dict(options or {})
    prefix, sep, rest = name.partition(":")
    if sep and prefix in PREFIXED:
        return PREFIXED[prefix](rest, options)
    cls = ATTACKS.get(name)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"attack {name!r} has no option {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    return cls(**{k: coerce(v, hints[k], k) for k, v in options.items()})


def as_attack(spec: Attack | str | tuple[str, dict[str, Any]]) -> Attack:
    """An Attack from what the library accepts: an Attack, a name ("pgd"), or (name, options)."""
    if isinstance(spec, Attack):
        return spec
    if isinstance(spec, str):
        return build_attack(spec)
    name, options = spec
    return build_attack(name, options)


def attack_from_config(config: dict[str, Any]) -> Attack:
    """The attack a record's `attacks` entry describes (the inverse of Attack.config())."""
    config = dict(config)
    name = config.pop("name")
    prefix, sep, _ = name.partition(":")
    if sep and prefix in PREFIXED:  # a family of attacks behind one adapter: its config names the class
        return PREFIXED[prefix](config["cls_name"], dict(config.get("kwargs") or {}))
    cls = ATTACKS.get(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise ValueError(f"attack {name!r} has no option {', '.join(unknown)} (recorded by another version?)")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def check_positive(**values: float) -> None:
    for key, value in values.items():
        if value is not None and not value >= 1:
            raise ValueError(f"{key} must be >= 1, got {value}")


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) C&W margin: best other logit minus the true one; > 0 means misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return other - true


LOSSES = {
    "ce": lambda logits, y: F.cross_entropy(logits, y, reduction="none"),
    "margin": margin,
}


def untargeted_objective(model, y: torch.Tensor, loss: str = "ce"):
    """objective(x_adv, idx) for `ascend`: a per-example loss, and done = misclassified."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; valid: {', '.join(LOSSES)}")
    loss_fn = LOSSES[loss]

    def objective(x_adv: torch.Tensor, idx: torch.Tensor):
        logits = model(x_adv)  # (b, classes)
        return loss_fn(logits, y[idx]), logits.argmax(1) != y[idx]

    return objective


def run_cascade(components: list[tuple[str, Attack]], model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                gen: torch.Generator) -> torch.Tensor:
    """A composite attack on its own, for library use (the engine runs components() itself): each component only
    on the points every earlier one left standing; a component with `decide` (an escalation) runs only where its
    rule fires on the evidence so far (the points attacked and broken by each component)."""
    x_adv = x.clone()
    with torch.no_grad():
        todo = (model(x).argmax(1) == y).nonzero().squeeze(1)
    evidence: dict[str, Any] = {"counts": {}, "margins": torch.full((len(x),), float("-inf"), device=x.device)}
    for name, attack in components:
        if not len(todo):
            break
        decide = getattr(attack, "decide", None)
        if decide is not None and not decide(model, x[todo], y[todo], evidence)["fired"]:
            continue
        focus = getattr(attack, "focus", None)  # some of the standing points (attacks/strong.py)
        here = todo[focus(evidence, todo)] if focus is not None else todo
        found = attack(model, x[here], y[here], threat, gen)
        x_adv[here] = found
        with torch.no_grad():
            logits = model(found)
        standing = logits.argmax(1) == y[here]
        evidence["counts"][name] = {"attacked": len(here), "broken": int((~standing).sum())}
        evidence["margins"][here] = torch.maximum(evidence["margins"][here], margin(logits, y[here]))
        evidence.setdefault("attacked", {})[name] = here
        todo = todo[~torch.isin(todo, here[~standing])]
    return x_adv
