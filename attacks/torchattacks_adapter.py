"""Any attack of the torchattacks library, by class name: `--attack torchattacks:PGD --attack-arg steps=100`.

torchattacks (https://github.com/Harry24k/adversarial-attacks-pytorch) attacks hold the model,
switch it to eval mode, reseed the global RNG (APGD, FAB, Square) and may accumulate .grad. The
adapter contains all of that: it builds the torchattacks object per call, seeds it from our
generator inside `torch.random.fork_rng` (the global RNG is restored afterwards), and restores the
model's mode and every parameter's .grad in `finally`. It never calls `set_normalization_used`:
our models normalize themselves.

Threat model: each class attacks one norm, listed in NORMS (from the "Distance Measure" of its
docstring). Nothing is substituted silently:
- A class whose norm is not the run's is an error: `torchattacks:CW attacks the L2 norm but this
  run's threat model is linf; use --norm l2`. It is raised when the attack is built (norms no
  threat model here has: L0, L1, Gaussian noise), when it is bound to the run, and again on call.
- Bounded classes take `eps` (default: the run's eps) and `norm` where they have one (default: the
  run's). Their output goes to the engine's budget check unprojected: an `eps` above the run's is
  refused when the attack is bound, and any real excess raises BudgetViolation. Their own clipping
  keeps within the check's tolerance (1e-6, plus 1e-5 * eps for L2): the largest excess measured
  was 2e-8 for the Linf classes and 5e-7 for the L2 ones (PGDL2, APGD, Square at eps 2 on
  3x32x32); float32 rounding grows with eps and the image size, as it does for `ThreatModel.project`.
- Minimum-norm classes (CW, DeepFool) take no eps: their output is projected onto the run's ball,
  so accuracy is measured inside it, and `config()` records `"projected": true`.

Arguments: the class's own parameters, by their own names (`--attack-arg alpha=0.01`). The CLI's
`--steps`, `--step-size` and `--restarts` reach a class through `option_name` (steps, alpha,
n_restarts); a class without such a parameter does not take the shorthand.

Shape: images (B, C, H, W) in [0, 1]; labels (B,). Returns x_adv of the same shape.

Example:
    >>> x_adv = build_attack("torchattacks:PGDL2", {"steps": "20"})(model, x, y, ThreatModel("l2", 0.5), gen)
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from robustbench_karp.attacks.base import PREFIXED, Attack, coerce
from robustbench_karp.threat import Norm, ThreatModel
from robustbench_karp.threat.context import RunContext

_NORM_NAMES = {Norm.LINF: "Linf", Norm.L2: "L2"}  # our norm -> torchattacks' spelling
_SINGLE_STEP = {"FGSM", "FFGSM", "RFGSM"}
_BLACK_BOX = {"Square", "OnePixel", "Pixle", "SPSA"}
BY_ARGUMENT, ANY = "its `norm` argument", "any"

# Class -> (the norm it attacks, bounded: takes eps and stays inside that ball; else minimum-norm or unbounded).
# BY_ARGUMENT: Linf or L2 as its `norm` argument says (default: the run's). ANY: perturbs nothing.
# Norms that are neither Linf nor L2 have no threat model here: those classes are refused.
NORMS: dict[str, tuple[str, bool]] = {
    **dict.fromkeys(["BIM", "DIFGSM", "EOTPGD", "FFGSM", "FGSM", "Jitter", "MIFGSM", "NIFGSM", "PGD", "PGDRS", "PIFGSM",
                     "PIFGSMPP", "RFGSM", "SINIFGSM", "SPSA", "TIFGSM", "TPGD", "UPGD", "VMIFGSM", "VNIFGSM"], ("Linf", True)),
    **dict.fromkeys(["PGDL2", "PGDRSL2"], ("L2", True)),
    **dict.fromkeys(["APGD", "APGDT", "AutoAttack", "FAB", "Square"], (BY_ARGUMENT, True)),
    **dict.fromkeys(["CW", "DeepFool"], ("L2", False)),
    **dict.fromkeys(["JSMA", "OnePixel", "Pixle", "SparseFool"], ("L0", False)),
    "EADL1": ("L1", False),
    "EADEN": ("elastic-net (L1 + L2)", False),
    "GN": ("no norm (Gaussian noise)", False),
    "VANILA": (ANY, True),
}
_EPS_NAMES = ("eps", "max_epsilon")  # PIFGSM and PIFGSMPP call their radius max_epsilon
_SHORTHANDS = {"steps": ("steps", "num_iter_set", "nb_iter"), "step_size": ("alpha",), "restarts": ("n_restarts",)}


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


def attacked_norm(cls_name: str, kwargs: dict[str, Any]) -> tuple[str, bool]:
    """(the norm torchattacks.<cls_name> attacks with these kwargs, bounded); refuses norms no threat model has."""
    if cls_name not in NORMS:
        raise ValueError(f"torchattacks:{cls_name} is not in the adapter's table of threat norms (NORMS); add it there")
    norm, bounded = NORMS[cls_name]
    if norm == BY_ARGUMENT:
        norm = kwargs.get("norm") or BY_ARGUMENT
    if norm not in (*_NORM_NAMES.values(), BY_ARGUMENT, ANY):
        raise ValueError(f"torchattacks:{cls_name} attacks the {norm} norm, which no threat model here has (linf, l2)")
    return norm, bounded


def check_threat(cls_name: str, kwargs: dict[str, Any], threat: ThreatModel, check_eps: bool = True) -> None:
    """Raise ValueError unless torchattacks.<cls_name> with kwargs attacks the run's norm (and, if asked, eps)."""
    norm, bounded = attacked_norm(cls_name, kwargs)
    ours = _NORM_NAMES[threat.norm]
    if norm not in (ours, BY_ARGUMENT, ANY):
        raise ValueError(f"torchattacks:{cls_name} attacks the {norm} norm but this run's threat model is "
                         f"{threat.norm.value}; use --norm {norm.lower()}")
    given = next((kwargs[k] for k in _EPS_NAMES if kwargs.get(k) is not None), None)
    if check_eps and bounded and given is not None and given > threat.eps:
        raise ValueError(f"torchattacks:{cls_name} eps={given:.6g} exceeds this run's {threat.norm.value} eps "
                         f"{threat.eps:.6g}; leave eps out to use the run's")


def option_name(cls_name: str, key: str) -> str | None:
    """torchattacks.<cls_name>'s own parameter for our option `key` (steps, step_size, restarts), or None."""
    _, params = _constructor(cls_name)
    return next((name for name in _SHORTHANDS.get(key, (key,)) if name in params), None)


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
    """Run torchattacks.<cls_name>, filling eps/norm/seed/n_classes from the run.

    A class of another norm raises ValueError. A bounded class's output is returned as it is, for
    the engine's budget check; a minimum-norm class's output is projected onto the run's ball.
    """
    # The eps check is left to the engine's budget check here: a caller that never bound the attack gets BudgetViolation.
    check_threat(cls_name, kwargs, threat, check_eps=False)
    _, bounded = attacked_norm(cls_name, kwargs)
    cls, params = _constructor(cls_name)
    seed = derive_seed(gen)
    kwargs = dict(kwargs)
    for name in _EPS_NAMES:
        if name in params:
            kwargs.setdefault(name, threat.eps)
    if "norm" in params:
        kwargs.setdefault("norm", _NORM_NAMES[threat.norm])
    if "seed" in params:
        kwargs.setdefault("seed", seed)
    if "n_classes" in params and "n_classes" not in kwargs:
        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        kwargs["n_classes"] = min(10, classes)  # AutoAttack's 9 target classes, the top-9 by logit
    with contained(model, x.device, seed):
        x_adv = cls(model, **kwargs)(x, y).detach().to(x.device, x.dtype)
    return x_adv if bounded else threat.project(x_adv, x)


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

    @property
    def projected(self) -> bool:
        """Whether the output is projected onto the run's ball (minimum-norm classes)."""
        return not attacked_norm(self.cls_name, dict(self.kwargs))[1]

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
            if key in ("steps", "n_restarts") and not typed[key] >= 1:
                raise ValueError(f"{key} must be >= 1, got {typed[key]}")
        if isinstance(typed.get("norm"), str):  # torchattacks spells them Linf and L2
            typed["norm"] = {"linf": "Linf", "l2": "L2"}.get(typed["norm"].lower(), typed["norm"])
        attacked_norm(cls_name, typed)  # refuses L0, L1, ... before anything runs
        return cls(cls_name, tuple(sorted(typed.items())))

    def check_norm(self, norm: Norm | str) -> None:
        """Raise ValueError unless this attack attacks `norm` (the CLI checks before training a checkpoint)."""
        check_threat(self.cls_name, dict(self.kwargs), ThreatModel(norm, 0.0), check_eps=False)

    def bind(self, context: RunContext) -> TorchAttack:
        if context.threat is not None:
            check_threat(self.cls_name, dict(self.kwargs), context.threat)
        return self

    def config(self) -> dict[str, Any]:
        config = {"name": self.name, "cls_name": self.cls_name, "kwargs": dict(self.kwargs)}
        return {**config, "projected": True} if self.projected else config

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        return run_torchattack(self.cls_name, model, x, y, threat, gen, **dict(self.kwargs))


PREFIXED["torchattacks"] = TorchAttack.from_options  # build_attack("torchattacks:<Class>", options)
