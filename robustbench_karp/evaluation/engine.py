"""The evaluation engine: clean accuracy, then attacks in cascade, per-example worst case.

    robust = predict(model, x) == y                        # (N,) bool
    certified = certify(model, x, y)                       # optional: robust by proof, never attacked
    for name, attack in attacks:                           # in the order given
        x_adv = attack(model, x[robust & ~certified], ...)
        check_budget(x_adv, x[...], threat)                # raises, never clamps
        robust[...] &= predict(model, x_adv) == y[...]
        per_attack[name] = robust.mean()                   # accuracy after this attack and all before it

This is AutoAttack's worst-case semantics: only points still robust are attacked again, so a point
counts as robust only if every attack failed on it. Data streams batch by batch (batch.py runs one),
so memory is bounded by the batch size, not by the number of test points.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustbench_karp.attacks import Attack
from robustbench_karp.evaluation.batch import (  # noqa: F401  (eval_mode, predict, in_pieces_on_oom: also from here)
    BatchOutcome,
    Cascade,
    CertificationConflict,
    attack_in_memory,
    eval_mode,
    expand,
    in_pieces_on_oom,
    predict,
)
from robustbench_karp.evaluation.cost import attack_cost, count_passes
from robustbench_karp.evaluation.indicator_rules import trace_indicators
from robustbench_karp.evaluation.indicators import merge, traced_cascade
from robustbench_karp.threat import ThreatModel

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    n_examples: int
    clean_accuracy: float
    robust_accuracy: float
    per_attack: dict[str, float]  # robust accuracy after each attack, in cascade order
    clean: list[bool]  # (N,) clean-correct per test point
    robust: list[bool]  # (N,) robust to every attack per test point
    elapsed_seconds: float
    warnings: list[str] = field(default_factory=list)
    record: dict[str, Any] | None = field(default=None, repr=False)  # the stored record (evaluate(..., store=True))
    # Passes through the model and wall time, in total and per attack (cost.attack_cost); {} when not counted.
    cost: dict[str, Any] = field(default_factory=dict, repr=False)
    probes: dict[str, float] = field(default_factory=dict)  # accuracy under each probe, run beside the cascade
    certified: list[bool] | None = None  # (N,) proven robust (None: no certification ran)
    adversarial: torch.Tensor | None = field(default=None, repr=False)  # (N, C, H, W) worst-case x_adv, when asked
    broken: torch.Tensor | None = field(default=None, repr=False)  # (N,) bool: an attack broke the point
    # Attack-failure indicators, name -> {fired, value, threshold, points[, why]} (evaluation/indicators.py): the
    # traces' from the engine, the rest added by the sanity checks (checks.check_all) where they run.
    indicators: dict[str, dict[str, Any]] = field(default_factory=dict)
    traces: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)  # per attack (threat/trace.py)
    # Escalations that fired: batch, component, rule, value, threshold, points (attacks/strong.py; batch.py decides).
    escalations: list[dict[str, Any]] = field(default_factory=list)

    def __repr__(self) -> str:  # not the (N,) masks
        attacks = ", ".join(f"{k} {v:.4f}" for k, v in self.per_attack.items())
        stored = f", record {self.record['id']}" if self.record else ""
        certified = f", certified {self.certified_accuracy:.4f}" if self.certified is not None else ""
        return (f"EvalResult(n={self.n_examples}, clean {self.clean_accuracy:.4f}{certified}, robust "
                f"{self.robust_accuracy:.4f} [{attacks}]{stored})")

    @property
    def certified_accuracy(self) -> float | None:
        """The share of test points proven robust (None without certification): a lower bound on robust accuracy."""
        return None if self.certified is None else sum(self.certified) / max(self.n_examples, 1)

    def summary(self) -> dict[str, Any]:
        return {"clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy, "per_attack": self.per_attack}


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Hand the heap pages freed by the last batch back to the OS (glibc's malloc_trim; elsewhere a no-op).

    The early-dropping attacks allocate tensors of ever-changing sizes; glibc keeps the freed ones,
    and peak RSS then creeps up with the number of batches (+24% from 1,000 to 10,000 MNIST points).
    Trimming after each batch keeps memory bounded by the batch size (+4%) at no measurable cost.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def combine(outcomes: list[BatchOutcome], names: list[str], elapsed: float, device: torch.device,
            warnings: list[str]) -> EvalResult:
    """The evaluation's result from its batches' outcomes, in batch order (probes: those of the first batch)."""
    clean = [c for o in outcomes for c in o.clean]
    robust = [r for o in outcomes for r in o.robust]
    n = len(clean)
    per_attack = {name: {k: sum(o.spent[name][k] for o in outcomes) for k in ("attacked", "forward", "backward",
                                                                              "seconds")} for name in names}
    probe_names = list(outcomes[0].probes) if outcomes else []
    probed = {name: {k: sum(o.probes[name][k] for o in outcomes) for k in ("robust", "attacked", "forward", "backward",
                                                                         "seconds")} for name in probe_names}
    cost = {"forward_passes": sum(o.forward for o in outcomes), "backward_passes": sum(o.backward for o in outcomes),
            "wall_seconds": elapsed, "device": str(device),
            "per_attack": {name: attack_cost(**used) for name, used in per_attack.items()}}
    if probed:  # beside the cascade: their passes are in the totals above, and here on their own
        cost["probes"] = {name: attack_cost(**{k: v for k, v in used.items() if k != "robust"})
                          for name, used in probed.items()}
    certified = [c for o in outcomes for c in o.certified] if outcomes and outcomes[0].certified is not None else None
    if certified is not None:
        cost["certification"] = {k: sum(o.certification.get(k, 0) for o in outcomes) for k in ("seconds", "forward")}
    seen = list(dict.fromkeys(warnings + [w for o in outcomes for w in o.warnings]))
    traces: dict[str, dict[str, float]] = {}
    for o in outcomes:
        for name, summary in (getattr(o, "traces", None) or {}).items():
            traces[name] = merge(traces.get(name, {}), summary)
    return EvalResult(
        n_examples=n,
        clean_accuracy=sum(clean) / max(n, 1),
        robust_accuracy=sum(robust) / max(n, 1),
        per_attack={name: sum(o.after[name] for o in outcomes) / max(n, 1) for name in names},
        clean=clean,
        robust=robust,
        elapsed_seconds=elapsed,
        warnings=seen,
        cost=cost,
        probes={name: used["robust"] / max(n, 1) for name, used in probed.items()},
        certified=certified,
        indicators=trace_indicators(traces),
        traces=traces,
        escalations=[{"batch": b, **e} for b, o in enumerate(outcomes) for e in getattr(o, "escalations", None) or []],
    )


def attack_batches(model: nn.Module, batches: Iterable[tuple[int, torch.Tensor, torch.Tensor]],
                   attacks: Sequence[Attack], threat: ThreatModel, gen_of: Callable[[int], torch.Generator],
                   device: torch.device, on_outcome: Callable[[int, BatchOutcome], None], reporter=None,
                   probes: Sequence[Attack] = (), certifier=None, method: str | None = None,
                   check_certified: bool = False) -> list[str]:
    """Attack each numbered batch (b, x, y) with the generator gen_of(b); on_outcome(b, outcome) after each.

    certifier(model, x, y) -> Certificate proves points robust first; they skip the attacks (all of them run
    on certified points too with check_certified, and a break raises CertificationConflict, naming batch b).

    reporter (optional, the CLI's progress display): .batch(b), .attack(name, points, budget) and
    .tick(forward passes) after every pass through the network.
    Returns the engine's warnings (a model found in train mode is evaluated in eval mode).
    """
    warnings, sink = [], {}
    on_pass = reporter.tick if reporter is not None else None
    on_output = getattr(reporter, "outputs", None)  # the display counts the running attack's broken points live
    with eval_mode(model) as was_training, count_passes(model, on_pass, on_output) as passes:
        cascade = Cascade(traced_cascade(expand(attacks), passes, sink), threat,  # ascents report to sink
                          [(f"probe:{p.name}", p) for p in probes], certifier, method, check_certified)
        if was_training:
            warnings.append("model was in train mode; it was evaluated in eval mode")
        if hasattr(reporter, "conditional"):  # escalations run only when their rule fires: the display's time left
            reporter.conditional([name for name, attack in cascade.named if hasattr(attack, "decide")])
        for b, x, y in batches:
            if reporter is not None:
                reporter.batch(b)
            try:
                outcome = attack_in_memory(model, x.to(device), y.to(device), cascade, gen_of(b), passes, reporter)
            except CertificationConflict as e:
                raise e.at(b, None) from None
            release_memory()
            outcome.traces = dict(sink)  # this batch's ascents (an OOM rerun's twice: shares barely move)
            sink.clear()
            on_outcome(b, outcome)
    return warnings


def run_attacks(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    attacks: Sequence[Attack],
    threat: ThreatModel,
    gen: torch.Generator,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Attack each batch of (x, y) in [0, 1] with every attack in cascade, one generator across batches.

    The passes each attack spends through the model are counted (cost.count_passes), with its wall time
    up to the sync that follows it (the robust count), so GPU work is timed, not only launched.
    """
    start, outcomes = time.perf_counter(), []

    def keep(b: int, outcome: BatchOutcome) -> None:
        outcomes.append(outcome)
        if on_batch is not None:
            on_batch(len(outcome.clean))

    numbered = ((b, x, y) for b, (x, y) in enumerate(batches))
    warnings = attack_batches(model, numbered, attacks, threat, lambda b: gen, device, keep)
    return combine(outcomes, [name for name, _ in expand(attacks)], time.perf_counter() - start, device, warnings)
