"""The evaluation engine: clean accuracy, then attacks in cascade, per-example worst case.

    robust = predict(model, x) == y                        # (N,) bool
    for name, attack in attacks:                           # in the order given
        x_adv = attack(model, x[robust], y[robust], threat, gen)
        check_budget(x_adv, x[robust], threat)             # raises, never clamps
        robust[robust] &= predict(model, x_adv) == y[robust]
        per_attack[name] = robust.mean()                   # accuracy after this attack and all before it

This is AutoAttack's worst-case semantics: only points still robust are attacked again, so a point
counts as robust only if every attack failed on it. Data streams batch by batch, so memory is
bounded by the batch size, not by the number of test points.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustbench_karp.attacks import Attack
from robustbench_karp.evaluation.cost import attack_cost, count_passes
from robustbench_karp.threat import ThreatModel, check_budget
from robustbench_karp.threat.rows import (
    OutOfMemory,
    OutOfMemoryError,
    forward_rows,
    is_randomized,
    physical_rows,
    row_limit,
)

log = logging.getLogger(__name__)


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


def expand(attacks: Sequence[Attack]) -> list[tuple[str, Attack]]:
    """(name, attack) in run order; composite attacks contribute their components; repeated names get #2, #3."""
    out, seen = [], {}
    for attack in attacks:
        for name, part in attack.components():
            seen[name] = seen.get(name, 0) + 1
            out.append((name if seen[name] == 1 else f"{name}#{seen[name]}", part))
    return out


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

    def __repr__(self) -> str:  # not the (N,) masks
        attacks = ", ".join(f"{k} {v:.4f}" for k, v in self.per_attack.items())
        stored = f", record {self.record['id']}" if self.record else ""
        return (f"EvalResult(n={self.n_examples}, clean {self.clean_accuracy:.4f}, robust {self.robust_accuracy:.4f}"
                f" [{attacks}]{stored})")

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


def attack_batch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, named: list[tuple[str, Attack]],
                 threat: ThreatModel, gen: torch.Generator, passes, reporter=None,
                 probes: Sequence[tuple[str, Attack]] = ()) -> BatchOutcome:
    """Clean prediction, then every attack in cascade on the points still robust (model already in eval mode).

    probes run after the cascade, each on every clean-correct point and apart from it: what they break
    is counted on its own and never touches the robust mask (a purifier's plain-PGD accuracy).

    reporter.attack(name, points, budget) is told which attack starts on how many points, and about the most
    forward passes per point it takes (Attack.forward_budget; None if unknown), for the progress display.
    """
    forward0, backward0 = passes.forward, passes.backward
    still = predict(model, x) == y  # (b,) bool
    clean = still.clone()
    after, spent = {}, {}
    for name, attack in named:
        idx = still.nonzero().squeeze(1)
        used, t0 = {"attacked": 0, "forward": 0, "backward": 0, "seconds": 0.0}, time.perf_counter()
        if len(idx) and threat.eps > 0:  # eps 0 allows no perturbation: robust == clean
            forward, backward = passes.forward, passes.backward
            if reporter is not None:
                reporter.attack(name, len(idx), attack.forward_budget())
            try:
                x_adv = attack(model, x[idx], y[idx], threat, gen)
            except OutOfMemoryError:
                if not attack.splits:
                    raise OutOfMemory(f"out of device memory in {name} on {len(idx)} points: its passes cannot be cut "
                                      "into smaller pieces without changing its random draws; pass a smaller "
                                      "--batch-size (a new config, with its own id)") from None
                raise
            used["attacked"] = len(idx)  # the attack's own passes, not the engine's predict below
            used["forward"] = passes.forward - forward
            used["backward"] = passes.backward - backward
            check_budget(x_adv, x[idx], threat)
            predicted = predict(model, x_adv)  # (k,)
            still[idx] &= predicted == y[idx]
            if reporter is not None and hasattr(reporter, "adversarial"):  # evaluate --save-examples
                reporter.adversarial(name, idx, x[idx], x_adv, y[idx], predicted)
        after[name] = int(still.sum())  # the sync that ends the attack's timing
        used["seconds"] = time.perf_counter() - t0
        spent[name] = used
    probed = {name: _probe(model, x, y, clean, attack, threat, gen, passes) for name, attack in probes}
    return BatchOutcome(clean.cpu().tolist(), still.cpu().tolist(), after, spent,
                        passes.forward - forward0, passes.backward - backward0, probes=probed)


def _probe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, attack: Attack,
           threat: ThreatModel, gen: torch.Generator, passes) -> dict[str, float]:
    """One probe on every clean-correct point: how many stay correct, and what that cost."""
    idx = clean.nonzero().squeeze(1)
    forward, backward, t0 = passes.forward, passes.backward, time.perf_counter()
    robust = 0
    if len(idx) and threat.eps > 0:
        x_adv = attack(model, x[idx], y[idx], threat, gen)
        check_budget(x_adv, x[idx], threat)
        robust = int((predict(model, x_adv) == y[idx]).sum())
    elif len(idx):
        robust = len(idx)
    return {"robust": robust, "attacked": len(idx), "forward": passes.forward - forward,
            "backward": passes.backward - backward, "seconds": time.perf_counter() - t0}


def attack_in_memory(model: nn.Module, x: torch.Tensor, y: torch.Tensor, named: list[tuple[str, Attack]],
                     threat: ThreatModel, gen: torch.Generator, passes, reporter=None,
                     probes: Sequence[tuple[str, Attack]] = ()) -> BatchOutcome:
    """attack_batch; on out of device memory, the batch again from the same generator state in physical pieces
    of half the rows (then a quarter, ...): the same numbers, less memory (robustbench_karp.threat.rows)."""
    state, rows = gen.get_state(), row_limit()
    while True:
        try:
            with physical_rows(rows):
                return attack_batch(model, x, y, named, threat, gen, passes, reporter, probes)
        except OutOfMemoryError as e:
            failed = (str(e).strip().splitlines() or ["out of memory"])[0]
        # out of the except block: the failed attempt's tensors, which its traceback holds, are freed first
        rows = _fewer_rows(rows or len(x), model, failed)
        gen.set_state(state)
        if x.device.type == "cuda":
            torch.cuda.empty_cache()


def in_pieces_on_oom(run: Callable[[], Any], model: nn.Module, n: int) -> Any:
    """run(); on out of device memory, again in physical pieces of half the rows (then a quarter, ...)."""
    rows = row_limit()
    while True:
        try:
            with physical_rows(rows):
                return run()
        except OutOfMemoryError as e:
            failed = (str(e).strip().splitlines() or ["out of memory"])[0]
        rows = _fewer_rows(rows or n, model, failed)


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
    seen = list(dict.fromkeys(warnings + [w for o in outcomes for w in o.warnings]))
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
    )


def attack_batches(model: nn.Module, batches: Iterable[tuple[int, torch.Tensor, torch.Tensor]],
                   attacks: Sequence[Attack], threat: ThreatModel, gen_of: Callable[[int], torch.Generator],
                   device: torch.device, on_outcome: Callable[[int, BatchOutcome], None], reporter=None,
                   probes: Sequence[Attack] = ()) -> list[str]:
    """Attack each numbered batch (b, x, y) with the generator gen_of(b); on_outcome(b, outcome) after each.

    reporter (optional, the CLI's progress display): .batch(b), .attack(name, points, budget) and
    .tick(forward passes) after every pass through the network.
    Returns the engine's warnings (a model found in train mode is evaluated in eval mode).
    """
    named, probed = expand(attacks), [(f"probe:{p.name}", p) for p in probes]
    warnings = []
    on_pass = reporter.tick if reporter is not None else None
    with eval_mode(model) as was_training, count_passes(model, on_pass) as passes:
        if was_training:
            warnings.append("model was in train mode; it was evaluated in eval mode")
        for b, x, y in batches:
            if reporter is not None:
                reporter.batch(b)
            outcome = attack_in_memory(model, x.to(device), y.to(device), named, threat, gen_of(b), passes, reporter,
                                       probed)
            release_memory()
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
