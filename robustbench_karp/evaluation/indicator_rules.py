"""The attack-failure indicators' names, thresholds and the rules that need no model (pure: no torch).

    indicator(value=0.12, threshold=0.05, points=40)     # {"fired": True, "value": 0.12, "threshold": 0.05, "points": 40}
    not_computed("no attack took gradients ...")          # fired False, value None, and why
    cascade_indicators(clean, per_attack, order, single_step, black_box)   # from the cascade's per-attack accuracies
    trace_indicators(summaries)                           # from the ascents' traces (threat/trace.py)

After Pintor et al., "Indicators of Attack Failure" (NeurIPS 2022, https://arxiv.org/abs/2106.09947) and the
checks of AutoAttack and Carlini et al. 2019. Each indicator fires when its value exceeds its threshold; one that
cannot be computed says why instead. evaluation/indicators.py computes the ones that need the model;
`leaderboard verify` re-derives the cascade ones from a record (boards/verify.py). docs/indicators.md says what
each means and what to do when it fires.
"""

from __future__ import annotations

import re
from typing import Any

# Thresholds: an indicator fires when its value is strictly above its threshold.
UNAVAILABLE_GRADIENTS_SHARE = 0.0  # ascent rows whose gradient was zero, NaN or infinite before they fell
UNSTABLE_SHARE = 0.0  # sample points whose logits differ between two identical calls, or whose loss jumps under noise
SILENT_SUCCESS_SHARE = 0.0  # rows with an adversarial iterate whose returned point is not adversarial
INCOMPLETE_RISE = 0.05  # mean rise of the scaled running-best loss over the last 10% of steps, standing rows
TRANSFER_FAILURE_SHARE = 0.0  # standing sample points a surrogate's examples break
UNCONSTRAINED_ACCURACY = 0.05  # accuracy left by PGD at Linf eps = 1 (the whole [0, 1] box)
BEATS_DROP = 0.0  # accuracy a black-box or single-step attack took after the white-box or multi-step ones
MORE_ITERATIONS_GAP = 0.05  # accuracy doubling the steps takes off the sample (2 of its 32 points: one may be luck)

# What each value measures, for the warning line of a fired indicator.
MEASURES = {
    "unavailable-gradients": "share of ascent rows with a zero, NaN or infinite input gradient",
    "unstable-predictions": "share of sample points with random logits or a loss that jumps under small noise",
    "silent-success": "share of rows whose adversarial iterate was not the point returned",
    "incomplete-optimization": "rise of the scaled running-best loss over the last 10% of steps",
    "transfer-failure": "share of the standing sample points a surrogate's examples break",
    "unconstrained-failure": "accuracy left by PGD at Linf eps = 1",
    "black-box-beats-white-box": "accuracy a black-box attack took after the white-box ones",
    "single-step-beats-multi-step": "accuracy a single-step attack took after a multi-step one",
    "more-iterations-help": "accuracy twice the steps took off the standing sample points",
}
NAMES = ("unavailable-gradients", "unstable-predictions", "silent-success", "incomplete-optimization",
         "transfer-failure", "unconstrained-failure", "black-box-beats-white-box", "single-step-beats-multi-step",
         "more-iterations-help")
# Attacks that ascend a surrogate's loss, not the model's: their traces say nothing of the model's gradients.
SURROGATE_ATTACKS = ("transfer-pgd",)


def indicator(value: float, threshold: float, points: int, **extra: Any) -> dict[str, Any]:
    return {"fired": bool(value > threshold), "value": float(value), "threshold": float(threshold),
            "points": int(points), **extra}


def not_computed(why: str, threshold: float) -> dict[str, Any]:
    """An indicator that cannot be computed: never an error, a reason in the record."""
    return {"fired": False, "value": None, "threshold": float(threshold), "points": 0, "why": why}


def fired(indicators: dict[str, dict[str, Any]]) -> list[str]:
    return [name for name, ind in indicators.items() if ind.get("fired")]


def summary_line(indicators: dict[str, dict[str, Any]]) -> str:
    """One line: the fired indicators by name (with value and threshold), then how many stayed quiet or could not run."""
    shown = [f"{name} ({ind['value']:.3g} > {ind['threshold']:.3g})" if ind.get("value") is not None else
             f"{name} ({ind.get('by', 'no value')})" for name, ind in indicators.items() if ind.get("fired")]
    quiet = sum(1 for ind in indicators.values() if not ind.get("fired") and ind.get("value") is not None)
    skipped = sum(1 for ind in indicators.values() if not ind.get("fired") and ind.get("value") is None)
    head = f"fired: {', '.join(shown)}" if shown else "none fired"
    return f"indicators: {head}; {quiet} quiet, {skipped} not computed (docs/indicators.md)"


def base_name(name: str) -> str:
    """An attack's registered name from its name in a cascade: autoattack/square -> square, pgd#2 -> pgd."""
    return re.sub(r"#\d+$", "", name).rpartition("/")[2]


def cascade_indicators(clean_accuracy: float, per_attack: dict[str, float], order: list[str], single_step: set[str],
                       black_box: set[str], n: int) -> dict[str, dict[str, Any]]:
    """black-box-beats-white-box and single-step-beats-multi-step from the accuracy after each attack in cascade.

    single_step and black_box hold the cascade's names (order's) of such attacks. A black-box attack that breaks
    points every white-box attack before it missed, or a single-step one after a multi-step one, means those
    gradient attacks failed: value is the largest such drop, over all n points.
    """
    values = [clean_accuracy] + [per_attack[name] for name in order]
    drops = {name: before - after for name, before, after in zip(order, values, values[1:])}
    white = [i for i, name in enumerate(order) if name not in black_box]
    multi = [i for i, name in enumerate(order) if name not in black_box and name not in single_step]
    out = {}
    for label, kind, earlier, what in (("black-box-beats-white-box", black_box, white, "white-box"),
                                       ("single-step-beats-multi-step", single_step, multi, "multi-step")):
        later = [name for i, name in enumerate(order) if name in kind and any(j < i for j in earlier)]
        if not later:
            out[label] = not_computed(f"no {label.split('-beats')[0]} attack ran after a {what} one", BEATS_DROP)
            continue
        worst = max(later, key=lambda name: drops[name])
        out[label] = indicator(max(drops[worst], 0.0), BEATS_DROP, n, attack=worst)
    return out


def trace_indicators(summaries: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """unavailable-gradients, silent-success and incomplete-optimization from the per-attack trace summaries."""
    own = {name: s for name, s in summaries.items() if base_name(name) not in SURROGATE_ATTACKS}
    total = {k: sum(s.get(k, 0) for s in own.values()) for k in ("rows", "bad_gradient", "traced", "rise", "short",
                                                                  "adversarial", "silent", "rising")}
    if not total["rows"]:
        why = "no attack took input gradients through the shared ascent loop (black-box or self-looping attacks only)"
        return {name: not_computed(why, threshold) for name, threshold in (
            ("unavailable-gradients", UNAVAILABLE_GRADIENTS_SHARE), ("silent-success", SILENT_SUCCESS_SHARE),
            ("incomplete-optimization", INCOMPLETE_RISE))}
    shares = {name: s.get("bad_gradient", 0) / s["rows"] for name, s in own.items() if s.get("rows")}
    out = {"unavailable-gradients": indicator(total["bad_gradient"] / total["rows"], UNAVAILABLE_GRADIENTS_SHARE,
                                              total["rows"], **({"attack": max(shares, key=shares.get)}
                                                                 if total["bad_gradient"] else {}))}
    out["silent-success"] = (indicator(total["silent"] / total["adversarial"], SILENT_SUCCESS_SHARE,
                                       total["adversarial"]) if total["adversarial"] else
                             not_computed("no iterate of any ascent was adversarial", SILENT_SUCCESS_SHARE))
    if total["traced"]:
        rises = {name: s["rise"] / s["traced"] for name, s in own.items() if s.get("traced")}
        out["incomplete-optimization"] = indicator(max(rises.values()), INCOMPLETE_RISE, total["traced"],
                                                   attack=max(rises, key=rises.get), rising_points=total["rising"])
    elif total["short"]:
        out["incomplete-optimization"] = not_computed(
            f"fewer than 10 steps per ascent ({max(s.get('steps', 0) for s in own.values())}): no trace to read",
            INCOMPLETE_RISE)
    else:
        out["incomplete-optimization"] = not_computed("no point was left standing by a traced ascent", INCOMPLETE_RISE)
    return out


def warning_line(name: str, ind: dict[str, Any]) -> str:
    """A fired indicator as a warning line, its name first (the board shows it as a flag)."""
    where = f" ({ind['attack']})" if ind.get("attack") else ""
    return (f"{name}: {MEASURES[name]} {ind['value']:.4g} > {ind['threshold']:.4g} on {ind['points']} "
            f"point(s){where}; see docs/indicators.md")
