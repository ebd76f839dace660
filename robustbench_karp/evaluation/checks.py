"""Sanity checks for gradient masking: each one that fires becomes a warning in the record.

After Carlini et al. 2019, "On Evaluating Adversarial Robustness" (https://arxiv.org/abs/1902.06705)
and AutoAttack's checks. Checks on one record (run_checks, after every evaluation):
- a single-step attack breaks points a multi-step attack before it missed;
- a black-box attack (Square) breaks points the white-box attacks before it missed;
- robust accuracy rises as eps grows in a sweep;
- an unbounded attack (Linf eps = 1, the whole [0, 1] box) fails to reach about 0%;
- a large share of zero or non-finite input gradients;
- the model's outputs differ on the same input (randomness) and no EOT attack was run;
- the model returns probabilities instead of logits;
- an adaptive attack (BPDA/EOT/transfer) finds much less robustness than the plain ones (obfuscated gradients);
- clean accuracy at chance (untrained or wrong weights, or the wrong normalization).
The train-mode check lives in the engine; `leaderboard.entry_flags` compares attacks across records.

A warning that is also an attack-failure indicator (evaluation/indicators.py) starts with that indicator's
name ("black-box-beats-white-box: ..."), and check_all returns the indicators beside the warnings: a flag
has one name and one meaning, whether it was a check before or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from robustbench_karp.evaluation import indicators
from robustbench_karp.evaluation.engine import EvalResult, eval_mode, expand, in_pieces_on_oom
from robustbench_karp.evaluation.indicator_rules import warning_line
from robustbench_karp.threat import ThreatModel
from robustbench_karp.threat.rows import forward_rows, pieces

UNBOUNDED_MAX_ACCURACY = indicators.UNCONSTRAINED_ACCURACY  # an attack on the whole box should leave about nothing
ZERO_GRADIENT_SHARE = 0.10
OBFUSCATION_GAP = 0.10  # non-adaptive minus adaptive robust accuracy
CHANCE_FACTOR = 1.5  # clean accuracy at most this many times 1/classes: the model is no better than a guess


def _flag(attack, name: str) -> bool:
    return bool(getattr(attack, name, False))


def _drops(result: EvalResult, order: list[str]) -> list[float]:
    """How much each attack in the cascade lowered robust accuracy (the first relative to clean)."""
    values = [result.clean_accuracy] + [result.per_attack[name] for name in order]
    return [before - after for before, after in zip(values, values[1:])]


def cascade_checks(result: EvalResult, attacks: Sequence, order: list[str]) -> list[str]:
    parts = [part for _, part in expand(attacks)]
    drops, out = _drops(result, order), []
    for i, (name, part, drop) in enumerate(zip(order, parts, drops)):
        earlier = parts[:i]
        if drop > 0 and _flag(part, "single_step") and any(not _flag(p, "single_step") and not _flag(p, "black_box")
                                                            for p in earlier):
            out.append(f"single-step-beats-multi-step: single-step {name} broke {drop:.1%} of the points a "
                       "multi-step attack before it missed: "
                       "the multi-step attack is weaker than the single-step one (gradient masking?)")
        if drop > 0 and _flag(part, "black_box") and any(not _flag(p, "black_box") for p in earlier):
            out.append(f"black-box-beats-white-box: black-box {name} broke {drop:.1%} of the points the white-box "
                       "attacks before it missed "
                       "(gradient masking?)")
    return out


def non_adaptive_accuracy(result: EvalResult, attacks: Sequence, order: list[str]) -> float | None:
    """Robust accuracy after the plain attacks that precede the first adaptive one (None without both)."""
    parts = [part for _, part in expand(attacks)]
    first_adaptive = next((i for i, p in enumerate(parts) if _flag(p, "adaptive")), None)
    if not first_adaptive:  # None, or 0: no plain attack ran before it
        return None
    return result.per_attack[order[first_adaptive - 1]]


def sweep_checks(result: EvalResult, threat: ThreatModel, sweep: list[dict[str, Any]]) -> list[str]:
    return [f"robust accuracy rose from {r['robust_accuracy']:.4f} at eps {r['config']['eps']:.6g} to "
            f"{result.robust_accuracy:.4f} at eps {threat.eps:.6g}: accuracy should not grow with eps" for r in sweep
            if r["config"]["eps"] < threat.eps and result.robust_accuracy > r["robust_accuracy"]]


def model_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks: Sequence) -> list[str]:
    """Randomness, probabilities instead of logits, zero or non-finite input gradients (on a sample)."""
    out = []
    with torch.no_grad():  # in physical pieces when memory asks
        first, second = forward_rows(model, x), forward_rows(model, x)
    if not torch.allclose(first, second, rtol=1e-4, atol=1e-5) and not any(_flag(p, "eot") for _, p in expand(attacks)):
        out.append("unstable-predictions: the model's outputs differ on the same input (randomized) and no EOT attack was run")
    ones = torch.ones(len(first), device=first.device)  # on the outputs' device: a CPU tensor fails against CUDA outputs
    if first.min() >= 0 and first.max() <= 1 and torch.allclose(first.sum(1), ones, atol=1e-3):
        out.append("the model returns probabilities instead of logits: losses on them saturate (use logits)")
    grads = []
    for rows in pieces(len(x)):
        xi = x[rows].clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(F.cross_entropy(model(xi), y[rows], reduction="sum"), xi, allow_unused=True)
        grads.append(torch.zeros_like(xi) if g is None else g)
    g = torch.cat(grads).flatten(1)
    bad = (~torch.isfinite(g).all(1)) | (g == 0).all(1)
    if bad.float().mean() > ZERO_GRADIENT_SHARE:
        out.append(f"unavailable-gradients: {bad.float().mean():.0%} of the sampled inputs have zero or non-finite "
                   "input gradients (gradient masking?)")
    return out


def chance_check(result: EvalResult, classes: int) -> list[str]:
    """Clean accuracy no better than guessing: untrained or wrong weights (a model file whose factory loads none),
    or the wrong normalization; every robust number of such a model is meaningless."""
    if classes > 1 and result.n_examples >= 20 and result.clean_accuracy <= CHANCE_FACTOR / classes:
        return [f"clean accuracy {result.clean_accuracy:.1%} is at chance for {classes} classes: untrained or wrong "
                "weights, or the wrong input normalization?"]
    return []


def unbounded_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                    found: dict[str, Any] | None = None) -> list[str]:
    """PGD with eps = 1 in Linf can reach any image: a model that survives it is masking gradients.
    found: the unconstrained-failure indicator when already computed (else it is computed here)."""
    found = found or indicators.unconstrained_failure(model, x, y, device)
    if found["fired"]:
        return [f"unconstrained-failure: an unbounded attack (PGD-10, Linf eps = 1) leaves {found['value']:.1%} "
                "accuracy instead of about 0% (gradient masking?)"]
    return []


def run_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, result: EvalResult, attacks: Sequence,
               order: list[str], threat: ThreatModel, device: torch.device, sweep: list[dict[str, Any]],
               non_adaptive: float | None = None) -> list[str]:
    """Every check that applies to one evaluation, on a sample batch (x, y) of its test points; on out of device
    memory in physical pieces of half the rows, as the engine runs a batch.

    non_adaptive: the plain attacks' robust accuracy (a probe's, on every point); None: read off the cascade.
    """
    return check_all(model, x, y, result, attacks, order, threat, device, sweep, non_adaptive)[0]


def check_all(model: nn.Module, x: torch.Tensor, y: torch.Tensor, result: EvalResult, attacks: Sequence,
              order: list[str], threat: ThreatModel, device: torch.device, sweep: list[dict[str, Any]],
              non_adaptive: float | None = None) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(warnings, indicators): run_checks' warnings, every fired indicator among them under its name, and the
    attack-failure indicators of the evaluation (evaluation/indicators.py). result.indicators is left as it was."""
    return in_pieces_on_oom(lambda: _run_checks(model, x, y, result, attacks, order, threat, device, sweep,
                                                non_adaptive), model, len(x))


def _run_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, result: EvalResult, attacks: Sequence,
                order: list[str], threat: ThreatModel, device: torch.device, sweep: list[dict[str, Any]],
                non_adaptive: float | None) -> tuple[list[str], dict[str, dict[str, Any]]]:
    out = cascade_checks(result, attacks, order) + sweep_checks(result, threat, sweep)
    with eval_mode(model):
        found = indicators.compute(model, x, y, result, attacks, order, threat, device)
        with torch.no_grad():
            out += chance_check(result, int(forward_rows(model, x[:1]).shape[1]))
        out += model_checks(model, x, y, attacks)
        if threat.eps > 0:
            out += unbounded_check(model, x, y, device, found["unconstrained-failure"])
    gap_base = non_adaptive if non_adaptive is not None else non_adaptive_accuracy(result, attacks, order)
    if gap_base is not None and gap_base - result.robust_accuracy > OBFUSCATION_GAP:
        out.append(f"non-adaptive attacks leave {gap_base:.1%} but adaptive ones {result.robust_accuracy:.1%}: "
                   "the defense relies on obfuscated gradients")
    return _one_meaning(out, found)


def _one_meaning(warnings: list[str], found: dict[str, dict[str, Any]]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """A warning under an indicator's name fires that indicator (the sample's zero-gradient check where the ascents
    saw none); a fired indicator with no warning of its own gets one. One name, one meaning."""
    named = {w.partition(": ")[0] for w in warnings}
    for name in named & set(found):
        if not found[name]["fired"]:
            found[name] = {**found[name], "fired": True, "by": "sanity check on the sample"}
    return warnings + [warning_line(name, ind) for name, ind in found.items() if ind["fired"] and name not in named], found

