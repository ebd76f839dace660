"""strong: a cascade meant to be at least as strong as AutoAttack at a fraction of its cost, escalating on evidence.

Components, each run only on the points every earlier one left standing (the engine's per-example worst case):

    strong/apgd-ce      our APGD (attacks/apgd.py), cross-entropy, from an output-diversified start (ODI)
    strong/apgd-t       our APGD, targeted DLR, on the `targets` classes ranked first by MALT's score (Melamed et
                        al., NeurIPS 2024, https://arxiv.org/abs/2407.02240)
    strong/square-near  Square (Andriushchenko et al. 2020, https://arxiv.org/abs/1912.00049) with AutoAttack's
                        5000 queries on the fifth of the standing points nearest the boundary: highest margin at
                        any x_adv the white-box parts found (the engine's evidence["margins"]; Nearest)
    strong/square       the black-box safety net: Square with 1000 queries on every point still standing that
                        strong/square-near did not attack (Others)

then escalations: components that run on a batch only when a rule fires on that batch's evidence so far (the
per-component attacked and broken counts, and a probe of a few standing points), so a batch's numbers never
depend on how batches are sharded:

    strong/eot-pgd              unstable-predictions: two identical calls disagree -> EOT-PGD (attacks/eot.py)
    strong/square+              square-finds-points: the two Squares broke enough of the points the white-box
                                attacks missed -> Square again with AutoAttack's queries and restarts
    strong/autoattack/<part>    unavailable-gradients: the margin's input gradient is zero or not finite ->
                                AutoAttack's whole cascade (attacks/autoattack.py)

The engine records every escalation that fired (batch, component, rule, value, threshold) in
EvalResult.escalations and in the record. A model with fewer than 4 classes is refused in one line: the targeted
DLR loss reads the 4th largest logit, and a cascade without its targeted stage would not be `strong`.

Threat model: Linf or L2 ball of radius eps around x, intersected with [0, 1].

Arguments:
    steps (int): APGD-CE iterations (and AutoAttack's, when it escalates). Default 100.
    odi_steps (int): output-diversified steps before APGD-CE. Default 2.
    target_steps (int): APGD-T iterations per target. Default 100.
    targets (int): target classes per point, MALT's first. Default 4: on a PGD-AT MNIST CNN at eps 0.3 every
        point APGD-T broke with 9 targets fell to one of MALT's first 3.
    near_queries (int): queries of strong/square-near. Default 5000.
    near_share (float): the share of standing points strong/square-near attacks. Default 0.2: on that CNN the
        points only 5000 queries broke were 34 of 40 in the nearest quarter by white-box margin and 30 in the
        nearest fifth, spread over the whole set by clean margin. On the board's smallcnn pgd-at recipe (MNIST,
        300 points) 0.15, 0.2 and 0.25 all broke exactly the original AutoAttack's points, at 0.30x, 0.31x and
        0.33x its time.
    near_restarts (int): restarts of strong/square-near. Default 1.
    square_queries (int): queries of the safety net. Default 1000.
    escalated_queries (int): queries of strong/square+ and of AutoAttack's Square. Default 5000.
    escalated_restarts (int): restarts of strong/square+. Default 2.
    eot_samples (int): gradient samples per EOT-PGD step. Default 8.
    escalate (bool): run the escalations; False leaves the four base components. Default True.

Shape: images (B, C, H, W) in [0, 1]; labels (B,). Returns x_adv of the same shape, detached.

Example:
    >>> x_adv = Strong()(model, x, y, ThreatModel("linf", 0.3), gen)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from robustbench_karp.attacks.apgd import APGD
from robustbench_karp.attacks.autoattack import AutoAttack, Square
from robustbench_karp.attacks.base import Attack, check_positive, margin, register, run_cascade
from robustbench_karp.attacks.eot import EOTPGD
from robustbench_karp.threat import ThreatModel

log = logging.getLogger(__name__)

MIN_CLASSES = 4  # targeted DLR divides by z_(1) - (z_(3) + z_(4)) / 2
PROBE_POINTS = 16  # standing points a probe looks at: a few passes, next to the hundreds an attack spends
# square-finds-points: the share of the points Square attacked in a batch that it broke. Square breaks 0.9% of the
# points the white-box attacks missed on our MART row (flag F2) with no sign of masking; 2% is over twice that, so
# only a batch where the white-box attacks clearly fail pays for AutoAttack's queries. At least 2 points, so that
# one lucky query in a small batch (1 of 20 is 5%) escalates nothing.
SQUARE_SHARE = 0.02
SQUARE_MIN_POINTS = 2
# unavailable-gradients: the share of probed points whose margin gradient is zero or not finite. A ReLU network's
# margin gradient is exactly zero only where every path is dead, which a trained classifier barely ever shows at a
# test point; quantized or thresholded inputs zero it on every point. A tenth allows a stray saturated point.
GRADIENT_SHARE = 0.1
# unstable-predictions: the share of probed points whose logits differ between two identical calls. A deterministic
# model repeats itself to float tolerance (rtol 1e-4, atol 1e-5, as indicators.py), so any point is randomness.
UNSTABLE_SHARE = 0.0


def decision(rule: str, value: float, threshold: float, points: int, fired: bool | None = None) -> dict[str, Any]:
    return {"rule": rule, "fired": bool(value > threshold if fired is None else fired), "value": float(value),
            "threshold": float(threshold), "points": int(points)}


def square_break_share(model, x, y, evidence: dict[str, Any], source: str) -> dict[str, Any]:
    """Square's breaks among the points it attacked in this batch: evidence["counts"] of the components named in
    `source` (comma-separated; strong's two Squares split the standing points between them), summed."""
    counts = [evidence.get("counts", {}).get(name, {"attacked": 0, "broken": 0}) for name in source.split(",")]
    attacked, broken = sum(c["attacked"] for c in counts), sum(c["broken"] for c in counts)
    share = broken / attacked if attacked else 0.0
    return decision("square-finds-points", share, SQUARE_SHARE, attacked,
                    fired=share > SQUARE_SHARE and broken >= SQUARE_MIN_POINTS)


def probe_gradients(model, x, y, evidence: dict[str, Any], source: str) -> dict[str, Any]:
    """The share of up to PROBE_POINTS standing points whose margin's input gradient is zero or not finite."""
    x, y = x[:PROBE_POINTS].detach().clone().requires_grad_(True), y[:PROBE_POINTS]
    with torch.enable_grad():
        out = margin(model(x), y).sum()
        if not out.requires_grad:  # no path from the input to the logits at all (a hard threshold)
            return decision("unavailable-gradients", 1.0, GRADIENT_SHARE, len(x))
        (g,) = torch.autograd.grad(out, x, allow_unused=True)
    if g is None:
        return decision("unavailable-gradients", 1.0, GRADIENT_SHARE, len(x))
    flat = g.flatten(1)
    bad = (flat == 0).all(1) | ~torch.isfinite(flat).all(1)  # (k,)
    return decision("unavailable-gradients", float(bad.float().mean()), GRADIENT_SHARE, len(x))


def probe_randomness(model, x, y, evidence: dict[str, Any], source: str) -> dict[str, Any]:
    """The share of up to PROBE_POINTS standing points whose logits differ between two identical calls."""
    x = x[:PROBE_POINTS]
    with torch.no_grad():
        first, second = model(x), model(x)
    differ = ~torch.isclose(first, second, rtol=1e-4, atol=1e-5).all(1)  # (k,)
    return decision("unstable-predictions", float(differ.float().mean()), UNSTABLE_SHARE, len(x))


RULES: dict[str, Callable[..., dict[str, Any]]] = {
    "square-finds-points": square_break_share,
    "unavailable-gradients": probe_gradients,
    "unstable-predictions": probe_randomness,
}


class Wraps:
    """A component that runs `self.attack` on the points the engine gives it (an escalation: when its rule fires; a
    focused one: on the points its `focus` picks), and reports the wrapped attack's forward budget per point and
    what the sanity checks and the engine read (black_box, adaptive, eot, splits)."""

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        return self.attack(model, x, y, threat, gen)

    def forward_budget(self) -> float | None:  # per point it runs on; a probe's few passes aside
        return self.attack.forward_budget()

    black_box = property(lambda self: self.attack.black_box)
    adaptive = property(lambda self: self.attack.adaptive)
    eot = property(lambda self: self.attack.eot)
    splits = property(lambda self: self.attack.splits)


@dataclass(frozen=True)
class Escalation(Wraps, Attack):
    """`attack`, run on a batch only when `rule` fires on that batch's evidence; `source` names the components
    (comma-separated) whose counts the rule reads. A rule is decided once per batch: every component that shares
    it follows that decision."""

    rule: str
    attack: Attack
    source: str = ""

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown escalation rule {self.rule!r}; valid: {', '.join(RULES)}")

    def decide(self, model, x: torch.Tensor, y: torch.Tensor, evidence: dict[str, Any]) -> dict[str, Any]:
        """Whether this component runs on this batch's standing points x, y, from evidence (the engine's, per batch:
        "counts" {component: {attacked, broken}} so far; "decisions" caches each rule's verdict)."""
        made = evidence.setdefault("decisions", {})
        if self.rule not in made:
            made[self.rule] = RULES[self.rule](model, x, y, evidence, self.source)
        return made[self.rule]


@dataclass(frozen=True)
class Nearest(Wraps, Attack):
    """`attack` on the `share` of the standing points nearest the decision boundary: highest margin (best other
    logit - true) at any x_adv the earlier components found (the engine's evidence["margins"], through `focus`).
    Called on its own it attacks every point it is given."""

    attack: Attack
    share: float = 0.25

    def __post_init__(self):
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], got {self.share}")

    def focus(self, evidence: dict[str, Any], idx: torch.Tensor) -> torch.Tensor:
        """(k,) positions into idx (the standing points' batch positions), in order, of the ceil(share * n) points of
        highest margin in evidence["margins"] (ties: the first); all of them where no margin is known yet."""
        if "margins" not in evidence:
            return torch.arange(len(idx), device=idx.device)
        margins = evidence["margins"][idx]
        k = min(len(margins), math.ceil(self.share * len(margins)))
        return margins.argsort(descending=True, stable=True)[:k].sort().values


@dataclass(frozen=True)
class Others(Wraps, Attack):
    """`attack` on the standing points that component `after` did not attack (evidence["attacked"][after]): the
    safety net's Square skips the points strong/square-near already gave five times its queries."""

    attack: Attack
    after: str = ""

    def focus(self, evidence: dict[str, Any], idx: torch.Tensor) -> torch.Tensor:
        done = evidence.get("attacked", {}).get(self.after)
        if done is None:
            return torch.arange(len(idx), device=idx.device)
        return (~torch.isin(idx, done)).nonzero().squeeze(1)


def refuse_few_classes(model, x: torch.Tensor) -> None:
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    if classes < MIN_CLASSES:
        raise ValueError(f"strong needs a model with at least {MIN_CLASSES} classes (its targeted DLR stage reads the "
                         f"4th largest logit); this one has {classes}: use --attack apgd,square")


@dataclass(frozen=True)
class CheckedAPGD(APGD):
    """strong's first stage: APGD that first refuses, in one line, a model strong cannot attack in full."""

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        if len(x):
            refuse_few_classes(model, x)
        return super().__call__(model, x, y, threat, gen)


@register("strong")
@dataclass(frozen=True)
class Strong(Attack):
    steps: int = 100
    odi_steps: int = 2
    target_steps: int = 100
    targets: int = 4
    near_queries: int = 5000
    near_share: float = 0.2
    near_restarts: int = 1
    square_queries: int = 1000
    escalated_queries: int = 5000
    escalated_restarts: int = 2
    eot_samples: int = 8
    escalate: bool = True

    def __post_init__(self):
        check_positive(steps=self.steps, target_steps=self.target_steps, targets=self.targets,
                       square_queries=self.square_queries, escalated_queries=self.escalated_queries,
                       escalated_restarts=self.escalated_restarts, eot_samples=self.eot_samples,
                       near_queries=self.near_queries, near_restarts=self.near_restarts)
        if not 0 < self.near_share <= 1:
            raise ValueError(f"near_share must be in (0, 1], got {self.near_share}")
        if self.odi_steps < 0:
            raise ValueError(f"odi_steps must be >= 0, got {self.odi_steps}")

    def base(self) -> list[tuple[str, Attack]]:
        return [
            ("strong/apgd-ce", CheckedAPGD(steps=self.steps, loss="ce", odi_steps=self.odi_steps)),
            ("strong/apgd-t", APGD(steps=self.target_steps, loss="dlr-targeted", targets=self.targets,
                                   target_order="malt")),
            ("strong/square-near", Nearest(Square(self.near_queries, self.near_restarts), self.near_share)),
            ("strong/square", Others(Square(self.square_queries), "strong/square-near")),
        ]

    def escalations(self) -> list[tuple[str, Attack]]:
        auto = AutoAttack(steps=self.steps, square_queries=self.escalated_queries).components()
        return [
            ("strong/eot-pgd", Escalation("unstable-predictions", EOTPGD(samples=self.eot_samples))),
            ("strong/square+", Escalation("square-finds-points",
                                          Square(self.escalated_queries, self.escalated_restarts),
                                          "strong/square-near,strong/square")),
            *((f"strong/{name}", Escalation("unavailable-gradients", part)) for name, part in auto),
        ]

    def components(self) -> list[tuple[str, Attack]]:
        return self.base() + (self.escalations() if self.escalate else [])

    def forward_budget(self) -> float:
        """The base cascade's passes per point; escalations run only where evidence asks for them."""
        near = self.near_restarts * (self.near_queries + 3) * self.near_share  # the nearest share; the net the rest
        return sum(attack.forward_budget() for _, attack in self.base()[:2]) + near + \
            (1 - self.near_share) * Square(self.square_queries).forward_budget()

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        """The cascade on its own, escalations decided on the whole of x as one batch, for library use; the
        engine runs `components()` itself and records the escalations."""
        return run_cascade(self.components(), model, x, y, threat, gen)
