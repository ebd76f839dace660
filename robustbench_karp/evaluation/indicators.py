"""Attack-failure indicators on every evaluation: what says a robust accuracy may only be a failed attack.

    cascade = traced_cascade(expand(attacks), passes, sink)    # engine: each attack's ascents report to sink
    result.indicators = compute(model, x, y, result, attacks, order, threat, device)   # after the cascade

After Pintor et al., "Indicators of Attack Failure" (NeurIPS 2022, https://arxiv.org/abs/2106.09947). From
what the attacks already produce (threat/trace.py: loss traces, gradients, per-row outcomes; the cascade's
per-attack accuracies) and, for the rest, extra passes on the evaluation's first points (at most 200, fixed
randomness). The names and thresholds live in indicator_rules.py (pure); docs/indicators.md says what to do.

    unavailable-gradients, silent-success, incomplete-optimization    the ascents' traces (engine.combine)
    black-box-beats-white-box, single-step-beats-multi-step           the cascade's accuracies (re-derived by verify)
    unstable-predictions    two identical calls, and small uniform noise, on the sample
    unconstrained-failure   PGD-10 at Linf eps = 1 on the sample's first 100 points
    transfer-failure        PGD on a purifier's own classifier, on the sample points the cascade left standing
    more-iterations-help    the first multi-step attack with `steps`, with twice the steps, on the points of the
                            sample's first 32 that the cascade left standing (unless its trace shows it converged)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from robustbench_karp.attacks.pgd import PGD
from robustbench_karp.evaluation.batch import expand, predict
from robustbench_karp.evaluation.indicator_rules import (
    MORE_ITERATIONS_GAP,
    TRANSFER_FAILURE_SHARE,
    UNCONSTRAINED_ACCURACY,
    UNSTABLE_SHARE,
    base_name,
    cascade_indicators,
    indicator,
    not_computed,
)
from robustbench_karp.threat import ThreatModel
from robustbench_karp.threat.rows import forward_rows
from robustbench_karp.threat.trace import tracing

NOISE_SHARE = 0.1  # the uniform noise of unstable-predictions: a tenth of eps per pixel (Linf units)
LOSS_JUMP = 1.0  # nats: a loss that moves more than this under that noise is unstable
UNBOUNDED_POINTS = 100
MORE_ITERATIONS_POINTS = 32
MORE_ITERATIONS_GATE = 0.025  # half incomplete-optimization's threshold: below it the trace says converged


class Traced:
    """An attack of the cascade whose ascents report to sink[name] (summed), its check's passes left uncounted."""

    def __init__(self, attack, name: str, passes, sink: dict[str, dict[str, float]]):
        self.attack, self.trace_name, self.passes, self.sink = attack, name, passes, sink

    def __getattr__(self, key: str) -> Any:  # name, splits, forward_budget, ...: the attack's own
        return getattr(self.attack, key)

    def __call__(self, model, x, y, threat, gen):
        with tracing() as trace:
            x_adv = self.attack(model, x, y, threat, gen)
        if trace.rows:
            self.passes.forward -= trace.extra_forward  # the indicator's check, not the attack's cost
            self.sink[self.trace_name] = merge(self.sink.get(self.trace_name, {}), trace.summary())
        return x_adv


def traced_cascade(named: list[tuple[str, Any]], passes, sink: dict) -> list[tuple[str, Traced]]:
    return [(name, Traced(attack, name, passes, sink)) for name, attack in named]


def merge(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Two trace summaries as one: sums, and the most steps."""
    out = {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}
    out["steps"] = max(a.get("steps", 0), b.get("steps", 0))
    return out


def _flag(attack, name: str) -> bool:
    return bool(getattr(attack, name, False))


def from_cascade(result, attacks: Sequence, order: list[str]) -> dict[str, dict[str, Any]]:
    named = expand(attacks)
    single = {name for name, part in named if _flag(part, "single_step")}
    black = {name for name, part in named if _flag(part, "black_box")}
    return cascade_indicators(result.clean_accuracy, result.per_attack, order, single, black, result.n_examples)


def unstable_predictions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                         attacks: Sequence) -> dict[str, Any]:
    """The share of sample points whose logits differ between two identical calls (unless an EOT attack ran),
    or whose loss moves by more than LOSS_JUMP under uniform noise of NOISE_SHARE * eps per pixel."""
    with torch.no_grad():
        first, second = forward_rows(model, x), forward_rows(model, x)
        random = ~torch.isclose(first, second, rtol=1e-4, atol=1e-5).all(1)  # (n,)
        if any(_flag(part, "eot") for _, part in expand(attacks)):
            random = torch.zeros_like(random)  # randomness an EOT attack already averages over
        jumps = torch.zeros_like(random)
        if threat.eps > 0:
            size = NOISE_SHARE * threat.eps / (x[0].numel() ** 0.5 if threat.norm.value == "l2" else 1.0)
            gen = torch.Generator(device=x.device).manual_seed(0)
            noise = (torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1) * size
            loss = F.cross_entropy(first, y, reduction="none")
            noisy = F.cross_entropy(forward_rows(model, (x + noise).clamp(0, 1)), y, reduction="none")
            jumps = ~((noisy - loss).abs() <= LOSS_JUMP)  # NaN counts as a jump
    unstable = random | jumps
    return indicator(float(unstable.float().mean()), UNSTABLE_SHARE, len(x), random_points=int(random.sum()),
                     noise_points=int(jumps.sum()))


def unconstrained_failure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict[str, Any]:
    """PGD-10 with Linf eps = 1 can reach any image: the accuracy it leaves should be about 0."""
    x, y = x[:UNBOUNDED_POINTS], y[:UNBOUNDED_POINTS]
    gen = torch.Generator(device=device).manual_seed(0)
    x_adv = PGD(steps=10, step_size=0.2)(model, x, y, ThreatModel("linf", 1.0), gen)
    return indicator((predict(model, x_adv) == y).float().mean().item(), UNCONSTRAINED_ACCURACY, len(x))


def transfer_failure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, standing: torch.Tensor, threat: ThreatModel,
                     device: torch.device) -> dict[str, Any]:
    """PGD on the purifier's own classifier (the surrogate), judged by the whole model, on the sample points the
    cascade left standing: any it breaks, the white-box attacks missed."""
    surrogate = getattr(model, "classifier", None)
    if not isinstance(surrogate, nn.Module) or surrogate is model:
        return not_computed("no surrogate: the model has no undefended `classifier` (only purifier defenses do)",
                            TRANSFER_FAILURE_SHARE)
    idx = standing.nonzero().squeeze(1)
    if not len(idx) or threat.eps <= 0:
        return not_computed("no sample point was left standing by the cascade", TRANSFER_FAILURE_SHARE)
    gen = torch.Generator(device=device).manual_seed(0)
    x_adv = PGD(steps=20, early_stop=False)(surrogate, x[idx], y[idx], threat, gen)
    broken = predict(model, x_adv) != y[idx]
    return indicator(float(broken.float().mean()), TRANSFER_FAILURE_SHARE, len(idx))


def more_iterations_help(model: nn.Module, x: torch.Tensor, y: torch.Tensor, standing: torch.Tensor,
                         attacks: Sequence, threat: ThreatModel, device: torch.device,
                         traces: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """The first multi-step gradient attack with a `steps` option, with twice its steps, on the points of the
    sample's first MORE_ITERATIONS_POINTS the cascade left standing: the accuracy it takes off the cascade's.

    Not run where the attack's own trace (traces[name]) shows its standing points' running-best loss flat at the
    end (a mean rise under MORE_ITERATIONS_GATE): twice the steps of a converged ascent find next to nothing, and
    the run would cost twice the attack's steps on every evaluation."""
    chosen = next(((name, part) for name, part in expand(attacks) if isinstance(getattr(part, "steps", None), int)
                   and dataclasses.is_dataclass(part) and not _flag(part, "single_step")
                   and not _flag(part, "black_box") and base_name(name) not in ("transfer-pgd",)), None)
    if chosen is None:
        return not_computed("no multi-step gradient attack with a `steps` option in the cascade", MORE_ITERATIONS_GAP)
    n = min(len(x), MORE_ITERATIONS_POINTS)
    idx = standing[:n].nonzero().squeeze(1)
    name, attack = chosen
    trace = (traces or {}).get(name) or {}
    if len(idx) and trace.get("traced"):
        rise = trace["rise"] / trace["traced"]
        if rise < MORE_ITERATIONS_GATE:
            return not_computed(f"not run: {name}'s running-best loss was flat at the end (mean rise {rise:.3g} < "
                                f"{MORE_ITERATIONS_GATE}), twice its steps would find next to nothing", MORE_ITERATIONS_GAP)
    broken = 0
    if len(idx) and threat.eps > 0:  # only points still standing can lower the accuracy
        gen = torch.Generator(device=device).manual_seed(0)
        x_adv = dataclasses.replace(attack, steps=2 * attack.steps)(model, x[idx], y[idx], threat, gen)
        broken = int((predict(model, x_adv) != y[idx]).sum())
    return indicator(broken / n, MORE_ITERATIONS_GAP, n, attack=name, steps=attack.steps, standing=len(idx))


def compute(model: nn.Module, x: torch.Tensor, y: torch.Tensor, result, attacks: Sequence, order: list[str],
            threat: ThreatModel, device: torch.device) -> dict[str, dict[str, Any]]:
    """Every indicator of one evaluation (model in eval mode), the traces' from result.indicators, in NAMES order.

    x, y: the sample, the evaluation's first points (result.robust's first len(x) entries are theirs).
    """
    from robustbench_karp.evaluation.indicator_rules import NAMES

    out = dict(result.indicators)  # the traces' (engine.combine)
    out.update(from_cascade(result, attacks, order))
    out["unstable-predictions"] = unstable_predictions(model, x, y, threat, attacks)
    standing = torch.tensor(result.robust[: len(x)], dtype=torch.bool, device=x.device)
    if len(standing) == len(x):
        out["transfer-failure"] = transfer_failure(model, x, y, standing, threat, device)
        with torch.enable_grad():
            out["more-iterations-help"] = more_iterations_help(model, x, y, standing, attacks, threat, device,
                                                               result.traces)
    else:
        why = "the sample's masks are not known"
        out["transfer-failure"] = not_computed(why, TRANSFER_FAILURE_SHARE)
        out["more-iterations-help"] = not_computed(why, MORE_ITERATIONS_GAP)
    if threat.eps > 0:
        out["unconstrained-failure"] = unconstrained_failure(model, x, y, device)
    else:
        out["unconstrained-failure"] = not_computed("eps 0: a clean evaluation attacks nothing", UNCONSTRAINED_ACCURACY)
    return {name: out[name] for name in NAMES if name in out}
