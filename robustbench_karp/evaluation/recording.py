"""An evaluation's record: its EvalConfig once, its numbers and masks, and everything a reader needs to trust them.

    record = make_record(plan, model, provenance, result, device, sweep=[])   # harness.run_evaluation stores it

The layout is store/records.py's (schema 3): the config under "config" and nowhere else; results,
sanity-check warnings, attack-failure indicators and escalations, what the evaluation cost, and the conditions CPU numbers
depend on beside it.
"""

from __future__ import annotations

import datetime
from typing import Any

import torch
from torch import nn

from robustbench_karp.evaluation import checks, protocols
from robustbench_karp.evaluation.batch import unique_names
from robustbench_karp.evaluation.certified import bracket_warning, certified_fields
from robustbench_karp.evaluation.engine import EvalResult, expand
from robustbench_karp.evaluation.sharded import batch_seed, reseed_randomized
from robustbench_karp.store.identity import cpu_conditions, versions
from robustbench_karp.store.records import CONFIG_COPIES, RECORD_SCHEMA


def run_conditions(device: torch.device) -> dict[str, Any]:
    """What a run's numbers depend on beyond its config: software versions, device (and GPU model, TF32), threads,
    processor, deterministic algorithms. The source commit is left out: a documentation edit changes no number.

    Partial results keep them, and a resume under other conditions is refused (evaluation/sharded.py).
    """
    cpu = cpu_conditions()
    software = {k: v for k, v in versions().items() if k not in ("git_commit", "python")}
    gpu = {"gpu": torch.cuda.get_device_name(device), "tf32": torch.backends.cudnn.allow_tf32} \
        if device.type == "cuda" else {}  # another card, or TF32 on, computes other bits
    return {**software, "device": device.type, **gpu, "threads": cpu["threads"], "cpu": cpu["cpu"],
            "cpu_isa": cpu["cpu_isa"], "cpu_capability": cpu["cpu_capability"],
            "deterministic_algorithms": cpu["deterministic_algorithms"]}


def non_adaptive(result: EvalResult, attacks: list, order: list[str]) -> float | None:
    """The plain attacks' robust accuracy: the probe's when one ran (every point), else the cascade's before
    the first adaptive attack (None when neither exists)."""
    probe = next((acc for name, acc in result.probes.items() if name.startswith("probe:")), None)
    return probe if probe is not None else checks.non_adaptive_accuracy(result, attacks, order)


def make_record(plan, model: nn.Module, provenance: dict[str, Any], result: EvalResult, device: torch.device,
                sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """The record of one finished evaluation (plan: harness.Plan), the sanity checks run on its first points."""
    order = [name for name, _ in expand(plan.attacks)]
    x, y = plan.test.batch(plan.indices[: min(len(plan.indices), 200)])
    base = non_adaptive(result, plan.attacks, order)
    reseed_randomized(model, batch_seed(plan.config.seed, -1))  # the checks draw the same randomness however the
    # batches ran (in one process, resumed, or sharded under torchrun)
    found, result.indicators = checks.check_all(model, x.to(device), y.to(device), result, plan.attacks, order,
                                                plan.threat, device, sweep, non_adaptive=base)
    warnings = result.warnings + [w for w in found if w not in result.warnings]
    warnings += bracket_warning(result, plan.config.defense, plan.config.eps,
                                (provenance.get("train_config") or {}).get("eps"))
    config = plan.config.to_dict()
    required = protocols.requirements(provenance["defense_config"])  # frozen in the record: builds read them here
    cost = dict(result.cost)
    if plan.preparation:  # networks attacks trained before the evaluation: timed apart from its cost
        cost["preparation_seconds"] = dict(plan.preparation)
    return {
        "id": plan.id, "schema": RECORD_SCHEMA, "config": config,  # the config once: nothing copies its fields
        **{k: v for k, v in provenance.items() if k not in CONFIG_COPIES},
        "protocols": protocols.satisfied(protocols.record_configs(config), required),
        "protocol_requirements": required,
        "attack_order": order, "attack_provenance": {name: facts for name, facts in
                                                     zip(unique_names(plan.attacks),
                                                         (a.provenance(model) for a in plan.attacks)) if facts},
        "non_adaptive_accuracy": base, "probes": dict(result.probes),
        "data_sha256": plan.data_sha256, "indices": plan.indices.tolist(),
        "clean_accuracy": result.clean_accuracy, "robust_accuracy": result.robust_accuracy,
        "per_attack": result.per_attack,
        "clean_mask": "".join("1" if c else "0" for c in result.clean),
        "robust_mask": "".join("1" if r else "0" for r in result.robust),
        **certified_fields(result, plan),
        "elapsed_seconds": result.elapsed_seconds, "cost": cost, "device": str(device),
        "conditions": cpu_conditions(),
        "versions": versions(), "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "warnings": warnings,
        "indicators": result.indicators,  # attack-failure indicators (evaluation/indicators.py; a result, not the id)
        "escalations": result.escalations,  # what a cascade ran more of, on which batch, and why (attacks/strong.py)
    }


def escalation_line(escalations: list[dict[str, Any]]) -> str:
    """One line: each escalated component, on how many batches, and the rule that fired with its largest value."""
    seen: dict[str, list[dict[str, Any]]] = {}
    for e in escalations:
        seen.setdefault(e["component"], []).append(e)
    parts = [f"{name} on {len(es)} batch(es) ({es[0]['rule']} {max(e['value'] for e in es):.3g} > "
             f"{es[0]['threshold']:.3g})" for name, es in seen.items()]
    return "escalated: " + "; ".join(parts)
