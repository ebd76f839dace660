"""Certification inside an evaluation: which method runs, what the record says of it, when a bracket is too wide.

    method = certification_method(requested, protocol, model, defense, example)   # None, "ibp" or "crown-ibp"
    fields = certified_fields(result, plan)                            # certified_accuracy, mask, cost, passes saved

A certified point is robust by proof, so the attacks skip it; the robust accuracy of such a record
means what it means without certification. The bracket certified <= true robust <= attacked says how
much a stronger attack could still find; on a model trained for certification it should be narrow.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from robustbench_karp.certification import PRECISION, UnsupportedOp, check_method, preflight
from robustbench_karp.evaluation.batch import expand
from robustbench_karp.evaluation.engine import EvalResult
from robustbench_karp.evaluation.protocols import get_protocol
from robustbench_karp.threat.rows import is_randomized

log = logging.getLogger(__name__)
CERTIFIED_DEFENSES = ("ibp", "crown-ibp")  # trained for certification: their brackets should be narrow
BRACKET_WARNING = 0.10  # attacked minus certified accuracy, on such a model


def certification_method(requested: str | None, protocol: str | None, model: nn.Module, defense: Any,
                         example: torch.Tensor) -> str | None:
    """The certification an evaluation runs: the one requested (refused, in one line, where it cannot apply),
    else the protocol's where the model allows it (deterministic, every op supported), else none."""
    asked = requested or (get_protocol(protocol).certify if protocol else None)
    if asked is None:
        return None
    check_method(asked)
    defense = defense if isinstance(defense, dict) else {}
    randomized = is_randomized(model) or getattr(model, "preprocess", None) is not None
    reason = (f"its defense ({defense.get('name')}) is randomized or purifies its input: a certificate is a proof about "
              "one deterministic function" if randomized else None)
    if reason is None:
        try:
            preflight(model, example, asked)  # every refusal now, before any attack runs
        except UnsupportedOp as e:
            reason = str(e)
    if reason is None:
        return asked
    if requested:  # asked for by name: say why it cannot run
        raise ValueError(f"--certify: certification does not apply to this model: {reason}" if randomized else reason)
    log.info("protocol %s: no certification for this model (%s)", protocol, reason)
    return None


def certified_fields(result: EvalResult, plan) -> dict[str, Any]:
    """The record's certification fields (none without certification)."""
    if result.certified is None:
        return {}
    n, certified = len(result.certified), sum(result.certified)
    budgets = [attack.forward_budget() for _, attack in expand(plan.attacks)]
    saved = certified * sum(b for b in budgets if b) if all(budgets) else None
    checked = bool(getattr(plan, "check_certified", False))  # every attack ran on the certified points too
    saved = 0 if checked else saved
    spent = result.cost.get("certification", {})
    return {"certified_accuracy": certified / max(n, 1), "certified_mask": "".join("1" if c else "0" for c in
                                                                                   result.certified),
            "certification": {"method": plan.config.certify, **PRECISION, "certified_points": certified,
                              **({"check_certified": True} if checked else {}),
                              "seconds": spent.get("seconds"), "forward_passes": spent.get("forward"),
                              # each attack runs its whole budget on a point it cannot break: what the skip saved
                              "saved_forward_passes": saved}}


def bracket_warning(result: EvalResult, defense: dict[str, Any] | None, eps: float,
                    trained_eps: float | None) -> list[str]:
    """A model trained for certification whose attacked and certified accuracies are far apart, at an ε up to
    the one it was trained for (beyond it, a wide bracket is what such a model is expected to show)."""
    name = (defense or {}).get("name") if isinstance(defense, dict) else None
    if result.certified is None or name not in CERTIFIED_DEFENSES or (trained_eps is not None and eps > trained_eps):
        return []
    certified = sum(result.certified) / max(len(result.certified), 1)
    if result.robust_accuracy - certified > BRACKET_WARNING + 1e-9:  # exactly 10 points apart (0.8 - 0.7) is not more
        return [f"the bracket is wide for a model trained for certification ({name}): attacked {result.robust_accuracy:.1%}"
                f", certified {certified:.1%} (more than {BRACKET_WARNING:.0%} apart)"]
    return []
