"""One logical batch of an evaluation: clean prediction, certification, the attacks in cascade, the probes.

    outcome = attack_in_memory(model, x, y, cascade, gen, passes)   # a BatchOutcome; reruns in pieces on OOM

Certified points (cascade.certifier) are robust by proof, so no attack runs on them. Any attack that
does reach one (a probe, which runs on every clean-correct point, or every attack with
cascade.check_certified) and breaks it stops the evaluation with CertificationConflict: a certificate
and an x_adv inside the ball cannot both be right, so one of them has a bug.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustbench_karp.attacks import Attack
from robustbench_karp.attacks.base import margin as margin_of
from robustbench_karp.threat import ThreatModel, check_budget
from robustbench_karp.threat.rows import OutOfMemory, OutOfMemoryError, forward_rows, is_randomized, physical_rows, row_limit

log = logging.getLogger(__name__)


class CertificationConflict(RuntimeError):
    """An attack broke a certified point: the certifier or the attack is wrong. No record is written."""

    def __init__(self, position: int, attack: str, certified_margin: float, attack_margin: float, method: str):
        self.position, self.batch, self.index = position, None, None
        self.attack, self.certified_margin, self.attack_margin, self.method = attack, certified_margin, attack_margin, method
        super().__init__(self.describe())

    def describe(self) -> str:
        where = f"test point {self.index}" if self.index is not None else f"point {self.position} of its batch"
        return (f"certification conflict: {where} is certified by {self.method} (worst margin >= "
                f"{self.certified_margin:.6g}) but {self.attack} broke it (margin {self.attack_margin:.6g} at an "
                "x_adv inside the ball): the certifier or the attack has a bug; no record was written")

    def at(self, batch: int, index: int | None) -> CertificationConflict:
        self.batch, self.index = batch, index
        self.args = (self.describe(),)
        return self


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[bool]:
    """Eval mode for the duration; yields whether the model was in train mode; restores it in finally."""
    was_training = model.training
    model.eval()
    try:
        yield was_training
    finally:
        model.train(was_training)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return forward_rows(lambda rows: model(rows).argmax(1), x)  # in physical pieces when memory asks


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return forward_rows(model, x)


def expand(attacks: Sequence[Attack]) -> list[tuple[str, Attack]]:
    """(name, attack) in run order; composite attacks contribute their components; repeated names get #2, #3."""
    out, seen = [], {}
    for attack in attacks:
        for name, part in attack.components():
            seen[name] = seen.get(name, 0) + 1
            out.append((name if seen[name] == 1 else f"{name}#{seen[name]}", part))
    return out


def unique_names(attacks: Sequence[Attack]) -> list[str]:
    """The attacks' own names, repeats numbered as expand numbers them (two AdvGANs: advgan, advgan#2)."""
    seen: dict[str, int] = {}
    out = []
    for attack in attacks:
        seen[attack.name] = seen.get(attack.name, 0) + 1
        out.append(attack.name if seen[attack.name] == 1 else f"{attack.name}#{seen[attack.name]}")
    return out


@dataclass
class Cascade:
    """What runs on every batch of one evaluation."""

    named: list[tuple[str, Attack]]  # expand(attacks): the cascade in run order
    threat: ThreatModel
    probes: list[tuple[str, Attack]] = field(default_factory=list)  # beside the cascade, on every clean point
    certifier: Callable[[nn.Module, torch.Tensor, torch.Tensor], Any] | None = None  # -> Certificate
    method: str | None = None  # the certifier's name, for the record and errors
    check_certified: bool = False  # attack certified points too, to test certificates against attacks


@dataclass
class BatchOutcome:
    """One batch's part of an evaluation: masks, robust counts after each attack, and what it cost."""

    clean: list[bool]  # (b,)
    robust: list[bool]  # (b,)
    after: dict[str, int]  # points still robust after each attack (and all before it)
    spent: dict[str, dict[str, float]]  # per attack: attacked, forward, backward, seconds
    forward: int = 0  # every pass of the batch through the network, the engine's predictions included
    backward: int = 0
    warnings: list[str] = field(default_factory=list)
    probes: dict[str, dict[str, float]] = field(default_factory=dict)  # per probe: robust, attacked, passes, seconds
    certified: list[bool] | None = None  # (b,) proven robust (None: no certification ran)
    certification: dict[str, float] = field(default_factory=dict)  # seconds and forward passes it took
    traces: dict[str, dict[str, float]] = field(default_factory=dict)  # per attack: its ascents (threat/trace.py)
    # Escalations that fired on this batch: component, rule, fired, value, threshold, points (attacks/strong.py).
    escalations: list[dict[str, Any]] = field(default_factory=list)


def _certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, cascade: Cascade,
             passes) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """((b,) certified, (b,) margin lower bounds, cost) of the clean-correct points."""
    certified = torch.zeros_like(clean)
    margin = torch.full(clean.shape, float("-inf"), dtype=torch.float64, device=clean.device)
    forward, t0 = passes.forward, time.perf_counter()
    idx = clean.nonzero().squeeze(1)
    if len(idx):
        cert = cascade.certifier(model, x[idx], y[idx])
        certified[idx], margin[idx] = cert.certified.to(clean.device), cert.margin.to(clean.device)
    return certified, margin, {"seconds": time.perf_counter() - t0, "forward": passes.forward - forward,
                               "certified": int(certified.sum())}


def _conflict(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, broken: torch.Tensor,
              certified: torch.Tensor, margin: torch.Tensor, name: str, method: str | None) -> None:
    """Raise CertificationConflict if any broken point (of idx) is certified."""
    hit = (broken & certified[idx]).nonzero().squeeze(1)
    if len(hit):
        i = int(hit[0])
        with torch.no_grad():
            z = model(x_adv[i: i + 1]).double()[0]
        others = z.clone()
        others[y[idx][i]] = float("-inf")
        raise CertificationConflict(int(idx[i]), name, float(margin[idx[i]]), float(z[y[idx][i]] - others.max()),
                                    method or "certification")


def attack_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cascade: Cascade, gen: torch.Generator, passes,
                 reporter=None) -> BatchOutcome:
    """Clean prediction, certification, then every attack in cascade on the points still robust and not certified
    (model already in eval mode); then the probes, each on every clean-correct point, apart from the cascade.

    reporter.attack(name, points, budget) is told which attack starts on how many points, and about the most
    forward passes per point it takes (Attack.forward_budget; None if unknown), for the progress display.
    """
    forward0, backward0, threat = passes.forward, passes.backward, cascade.threat
    still = predict(model, x) == y  # (b,) bool
    clean = still.clone()
    certified, margin, certification = (_certify(model, x, y, clean, cascade, passes) if cascade.certifier else
                                        (torch.zeros_like(clean), None, {}))
    after, spent, evidence, escalations = {}, {}, {"counts": {}}, []
    for name, attack in cascade.named:
        targets = still if cascade.check_certified else still & ~certified  # certified: robust by proof
        idx = targets.nonzero().squeeze(1)
        used, t0 = {"attacked": 0, "forward": 0, "backward": 0, "seconds": 0.0}, time.perf_counter()
        forward, backward = passes.forward, passes.backward
        if len(idx) and threat.eps > 0 and not _escalates(attack, name, model, x[idx], y[idx], evidence, escalations):
            idx = idx[:0]  # an escalation whose rule did not fire on this batch: its probe's passes are its cost
        focus = getattr(attack, "focus", None)  # a component for some of the standing points (attacks/strong.py)
        if focus is not None and len(idx):
            idx = idx[focus(evidence, idx)]
        if len(idx) and threat.eps > 0:  # eps 0 allows no perturbation: robust == clean
            if reporter is not None:
                reporter.attack(name, len(idx), attack.forward_budget())
                if hasattr(reporter, "labels"):  # with outputs(logits), the display sees points break live
                    reporter.labels(y[idx])
            try:
                x_adv = attack(model, x[idx], y[idx], threat, gen)
            except OutOfMemoryError:
                if not attack.splits:
                    raise OutOfMemory(f"out of device memory in {name} on {len(idx)} points: its passes cannot be cut "
                                      "into smaller pieces without changing its random draws; pass a smaller "
                                      "--batch-size (a new config, with its own id)") from None
                raise
            used["attacked"] = len(idx)  # the attack's own passes (and its probe's), not the engine's predict below
            used["forward"] = passes.forward - forward
            used["backward"] = passes.backward - backward
            check_budget(x_adv, x[idx], threat)
            logits = logits_of(model, x_adv)  # (k, classes)
            predicted = logits.argmax(1)
            if margin is not None:
                _conflict(model, x_adv, y, idx, predicted != y[idx], certified, margin, name, cascade.method)
            still[idx] &= predicted == y[idx]
            evidence["counts"][name] = {"attacked": len(idx), "broken": int((predicted != y[idx]).sum())}
            remember_margins(evidence, idx, logits, y[idx], len(x))
            evidence.setdefault("attacked", {})[name] = idx
            if reporter is not None and hasattr(reporter, "adversarial"):  # evaluate --save-examples
                reporter.adversarial(name, idx, x[idx], x_adv, y[idx], predicted)
        after[name] = int(still.sum())  # the sync that ends the attack's timing
        used["seconds"] = time.perf_counter() - t0
        if not used["attacked"]:  # an escalation that did not run: its probe's passes
            used["forward"], used["backward"] = passes.forward - forward, passes.backward - backward
        spent[name] = used
    probed = {name: _probe(model, x, y, clean, attack, threat, gen, passes, certified, margin, cascade)
              for name, attack in cascade.probes}
    return BatchOutcome(clean.cpu().tolist(), still.cpu().tolist(), after, spent, passes.forward - forward0,
                        passes.backward - backward0, probes=probed,
                        certified=certified.cpu().tolist() if cascade.certifier else None, certification=certification,
                        escalations=escalations)


def remember_margins(evidence: dict[str, Any], idx: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, n: int) -> None:
    """evidence["margins"] (n,): each point's highest margin (best other logit - true) at any x_adv so far, which
    a focused component (`focus`, attacks/strong.py) reads to find the points nearest the boundary; beside it,
    evidence["attacked"][component] holds the batch positions each component attacked."""
    best = evidence.setdefault("margins", torch.full((n,), float("-inf"), device=logits.device))
    best[idx] = torch.maximum(best[idx], margin_of(logits, y))


def _escalates(attack: Attack, name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, evidence: dict[str, Any],
               escalations: list[dict[str, Any]]) -> bool:
    """Whether a component runs on this batch's standing points x, y: a plain attack always; an escalation
    component (one with `decide`, attacks/strong.py) when its rule fires on the evidence, which is then kept.
    The evidence is this batch's alone, so a batch's numbers do not depend on how batches are sharded."""
    decide = getattr(attack, "decide", None)
    if decide is None:
        return True
    verdict = decide(model, x, y, evidence)
    if verdict["fired"]:
        escalations.append({"component": name, **verdict})
        log.info("escalation: %s runs on %d point(s): %s %.4g > %.4g", name, len(x), verdict["rule"],
                 verdict["value"], verdict["threshold"])
    return verdict["fired"]


def _probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, attack: Attack, threat: ThreatModel,
           gen: torch.Generator, passes, certified: torch.Tensor, margin, cascade: Cascade) -> dict[str, float]:
    """One probe on every clean-correct point: how many stay correct, and what that cost."""
    idx = clean.nonzero().squeeze(1)
    forward, backward, t0 = passes.forward, passes.backward, time.perf_counter()
    robust = len(idx)
    if len(idx) and threat.eps > 0:
        x_adv = attack(model, x[idx], y[idx], threat, gen)
        check_budget(x_adv, x[idx], threat)
        predicted = predict(model, x_adv)
        if margin is not None:
            _conflict(model, x_adv, y, idx, predicted != y[idx], certified, margin, f"probe {attack.name}",
                      cascade.method)
        robust = int((predicted == y[idx]).sum())
    return {"robust": robust, "attacked": len(idx), "forward": passes.forward - forward,
            "backward": passes.backward - backward, "seconds": time.perf_counter() - t0}


def attack_in_memory(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cascade: Cascade, gen: torch.Generator,
                     passes, reporter=None) -> BatchOutcome:
    """attack_batch; on out of device memory, the batch again from the same generator state in physical pieces
    of half the rows (then a quarter, ...): the same numbers, less memory (robustbench_karp.threat.rows)."""
    state = gen.get_state()

    def run() -> BatchOutcome:
        gen.set_state(state)
        return attack_batch(model, x, y, cascade, gen, passes, reporter)

    return in_pieces_on_oom(run, model, len(x))


def in_pieces_on_oom(run: Callable[[], Any], model: nn.Module, n: int) -> Any:
    """run(); on out of device memory, again in physical pieces of half the rows (then a quarter, ...)."""
    rows = row_limit()
    while True:
        try:
            with physical_rows(rows):
                return run()
        except OutOfMemoryError as e:
            failed = (str(e).strip().splitlines() or ["out of memory"])[0]
        # out of the except block: the failed attempt's tensors, which its traceback holds, are freed first
        rows = _fewer_rows(rows or n, model, failed)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _fewer_rows(rows: int, model: nn.Module, failed: str) -> int:
    if is_randomized(model):
        raise OutOfMemory("out of device memory, and the model draws its own randomness per row of its input, so "
                          "smaller pieces would change its draws: pass a smaller --batch-size (a new config, with its "
                          f"own id) [{failed}]")
    if rows <= 1:
        raise OutOfMemory(f"out of device memory with one row at a time [{failed}]")
    log.warning("out of device memory with %d rows at once: running the batch again in pieces of %d rows "
                "(the numbers do not change)", rows, rows // 2)
    return rows // 2
