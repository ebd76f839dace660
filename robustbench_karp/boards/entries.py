"""The leaderboard: evaluation records -> ranked entries (site.py renders them), all pure functions.

    entries = build_entries(ResultsStore().records(), checkpoint_exists=lambda p: Path(p).is_file())
    render_site(entries, Path("leaderboard"))  # site.py: entries/*.json, README.md, results.csv, ...

An entry is one (model, dataset, defense, checkpoint, norm, eps). Its robust accuracy is the
per-example worst case over every attack run on it (the AND of its records' robust masks), never
the most favourable attack. Data stay fractions; percentages exist only in the rendered files.
Same entries in, byte-identical files out: no clock, no randomness, no environment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from robustbench_karp import catalog
from robustbench_karp.boards.counts import (
    accuracy_per_attack,
    attack_names,
    certified_counts,
    choose_set,
    entry_cost,
    partial_measurements,
    wilson_interval,
    worst_case_counts,
)
from robustbench_karp.boards.format import CERTIFIED, eps_label
from robustbench_karp.boards.robustbench_import import import_robustbench
from robustbench_karp.evaluation.protocols import record_configs, satisfied
from robustbench_karp.store import config_hash
from robustbench_karp.store.records import defense_name, is_external, migrate

__all__ = ["wilson_interval", "build_entries", "curves", "import_robustbench", "eps_label"]

# An entry is one (model, dataset, defense with every option, weights, norm, eps). "weights" is the
# canonical state_dict hash (identity.weights_sha256); records from before it carry "file:<checkpoint sha256>".
GROUP_FIELDS = ("model", "dataset", "defense", "defense_config", "weights", "norm", "eps")
ENTRY_SCHEMA = 2
REQUIRED_FIELDS = ("id", "clean_accuracy", "robust_accuracy")
REQUIRED_CONFIG = ("model", "dataset", "defense", "norm", "eps")
BULKY_FIELDS = ("indices",)  # left out of a published record when they are the first n test points (records.py)
CSV_COLUMNS = ["entry_id", "dataset", "norm", "eps", "eps_label", "status", "protocols", "evaluated_by", "model",
               "model_id", "defense", "training", "weights", "clean_accuracy", "clean_ci_low", "clean_ci_high",
               "robust_accuracy", "robust_ci_low", "robust_ci_high", "certified_accuracy", "certified_ci_low",
               "certified_ci_high", "certification", "robust_source", "n", "attacks", "seeds",
               "flags", "reproducible", "external", "link", "venue", "additional_data", "forward_passes",
               "grad_evals_per_point", "forward_passes_per_point", "wall_seconds", "devices", "record_ids"]


def _age(record: dict[str, Any]) -> tuple[bool, str]:
    created = str(record.get("created_utc") or "unknown")
    return created != "unknown", created  # ISO-8601 UTC strings sort in time order; "unknown" is oldest


def _check_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record in this version's schema, once it has what an entry needs."""
    record = migrate(record)
    missing = [f for f in REQUIRED_FIELDS if record.get(f) is None]
    missing += [f"config.{f}" for f in REQUIRED_CONFIG if record["config"].get(f) is None]
    if missing:
        raise ValueError(f"record {record.get('id', '?')}: missing field(s) {', '.join(missing)}")
    return record


def record_weights(record: dict[str, Any]) -> str | None:
    """The weights identity of a record's model: the canonical state_dict hash, else (older records) the file's.

    An imported record names its model by the tool's model id ('robustbench:Carmon2019Unlabeled'): two
    models with the same architecture and paper are two entries.
    """
    if is_external(record) and record.get("model_id"):
        return f"{record.get('tool') or 'external'}:{record['model_id']}"
    return record["config"].get("weights")  # "file:<checkpoint sha256>" for records from before weights hashing


def group_fields(record: dict[str, Any]) -> dict[str, Any]:
    """What an entry is, from a record's config: model, dataset, defense and options, weights, norm, eps."""
    config = record["config"]
    defense = None if is_external(record) else config.get("defense")  # an import's "defense" is a model name only
    return {"model": config.get("model"), "dataset": config.get("dataset"), "defense": defense_name(record),
            "defense_config": defense if isinstance(defense, dict) else None, "weights": record_weights(record),
            "norm": config.get("norm"), "eps": float(config["eps"])}


def _group_key(record: dict[str, Any]) -> str:
    return config_hash(group_fields(record))


def training_label(record: dict[str, Any]) -> str:
    """How the entry's checkpoint was trained, in short: its training ε, defense options off their defaults,
    precision, epochs.

    'init=prior, 10 ep' tells two fgsm-at checkpoints apart; "" for a record without a training config.
    The precision shows only where the checkpoint was trained in another precision than its recipe asked
    for ('fp32 (no bf16)': a bf16 recipe on a device without bf16 units). A training stopped for
    catastrophic overfitting says where it stopped and which epoch's weights it kept. A model loaded from
    elsewhere (`robustbench:<ID>`, a file, torchvision) says so: it was not trained by a recipe here.
    """
    train = record.get("train_config") or {}
    source = record["config"].get("source")
    if not train and isinstance(source, dict) and source.get("kind"):  # a zoo, file or torchvision model
        return f"{source['kind']} weights, trained elsewhere"  # its 'standard' defense means: none added here
    defense = train.get("defense")
    options = dict(defense) if isinstance(defense, dict) else {"name": defense}  # some configs name it only
    name = options.pop("name", None)
    defaults = catalog.facts()["defenses"].get(name, {})
    parts = [f"{k}={v}" for k, v in sorted(options.items()) if k in defaults and defaults[k] != v]
    if name not in (None, "standard") and train.get("eps") is not None:  # one label per checkpoint, at every ε
        parts.insert(0, f"ε {eps_label(train['eps'])}")  # two ibp checkpoints may differ only there
    recipe = train.get("recipe") or {}
    amp, asked = record.get("train_amp"), recipe.get("amp")
    if amp and asked and amp != asked:
        parts.append("fp32 (no bf16)" if amp == "none" else amp)
    epochs, outcome = recipe.get("epochs"), record.get("train_outcome") or {}
    if epochs and outcome.get("stopped_early"):  # say so: the recipe's epochs were not what produced the weights
        label = ", ".join(parts + [f"stopped at ep {outcome['epochs_completed']} of {epochs} (catastrophic "
                                   f"overfitting), kept ep {outcome['selected_epoch']}"])
    else:
        label = ", ".join(parts + ([f"{epochs} ep"] if epochs else []))
    return _wrapper_options(record, name) + label


def _wrapper_options(record: dict[str, Any], classifier_defense: str | None) -> str:
    """'epochs=3, restarts=4, steps=50; classifier standard, ' for a defense around another defense's classifier.

    Defense-GAN's own options (its GAN, L and R) are not in the classifier's training config, yet they decide
    the number: a row at L=50, R=4 must not read like one at the paper's L=200, R=10.
    """
    own = record["config"].get("defense")
    if not isinstance(own, dict) or not own.get("name") or not classifier_defense or own["name"] == classifier_defense:
        return ""
    defaults = catalog.facts()["defenses"].get(own["name"], {})
    off = [f"{k}={v}" for k, v in sorted(own.items()) if k in defaults and k != "base" and defaults[k] != v]
    return "".join(f"{part}; " for part in [", ".join(off)] if part) + f"classifier {classifier_defense}, "


def _reproducibility(chosen: list[dict[str, Any]], checkpoint_ok: Callable[[dict[str, Any]], bool]) -> str:
    if any(is_external(r) for r in chosen):
        return "external"
    return "yes" if any(r.get("checkpoint") and checkpoint_ok(r) for r in chosen) else "no: checkpoint missing"


def _entry(fields: dict[str, Any], records: list[dict[str, Any]], checkpoint_ok: Callable[[dict[str, Any]], bool]
           ) -> dict[str, Any]:
    records = sorted(records, key=lambda r: (_age(r), r["id"]))
    # a protocol run ranks its model on the protocol's points, whatever else ran on more points
    chosen, subset, left_out = choose_set(records, prefer=lambda s: bool(entry_protocols(s, fields["defense_config"])))
    k_clean, k_robust, n, notes = worst_case_counts(chosen, subset)
    if left_out:
        notes.append(f"worst case over the {len(chosen)} record(s) on a common set of {n} test points; "
                     f"left out (other test points): {', '.join(r['id'] for r in left_out)}")
    beside = partial_measurements([r for r in subset if len(r["indices"]) > n] + left_out)
    notes += [partial_note(m) for m in beside]
    notes += list(dict.fromkeys(note for r in chosen for note in r.get("notes") or []))  # an import's eps footnote
    masked = bool(chosen[0].get("robust_mask"))
    certified = certified_counts(chosen, subset)
    conflict = [f"{certified[2]} point(s) certified by one record were broken by another's attack: a certifier or an "
                "attack is wrong"] if certified and certified[2] else []
    reproducibility = _reproducibility(chosen, checkpoint_ok)
    protocols = entry_protocols(chosen, fields["defense_config"])
    coverage = {} if protocols else protocol_coverage(subset, fields["defense_config"])
    return {
        "schema": ENTRY_SCHEMA, "entry_id": config_hash(fields), **fields, "eps_label": eps_label(fields["eps"]),
        "training": training_label(chosen[0]), "protocols": protocols,
        # Every worst-case upper bound competes on one board: our protocol runs (standard/2's AutoAttack, standard/3's
        # strong: each row names its protocol) and RobustBench's AutoAttack imports
        "status": "ranked" if protocols or (reproducibility == "external" and all(
            r.get("ranks_beside_protocols", True) for r in chosen)) else "partial",  # a paper's PGD figure: partial
        "protocol_coverage": coverage,  # a partial entry's protocol runs on a subset of its points: label -> points
        "evaluated_by": next((r.get("tool") for r in chosen if r.get("tool")), None) or "karp-robust",
        "clean_accuracy": k_clean / n if masked and n else float(chosen[0]["clean_accuracy"]),
        "robust_accuracy": k_robust / n if masked and n else float(chosen[0]["robust_accuracy"]),
        "clean_ci": list(wilson_interval(k_clean, n)), "robust_ci": list(wilson_interval(k_robust, n)),
        # certified <= true robust <= attacked: how much a stronger attack could still find (None: not certified)
        "certified_accuracy": certified[0] / n if certified and n else None,
        "certified_ci": list(wilson_interval(certified[0], n)) if certified and n else None,
        "k_certified": certified[0] if certified else None, "certification": certified[1] if certified else None,
        "n": n, "k_clean": k_clean, "k_robust": k_robust,
        "attacks": attack_names(chosen + subset), "per_attack": accuracy_per_attack(chosen),
        "record_ids": [r["id"] for r in chosen + subset], "left_out_record_ids": [r["id"] for r in left_out],
        "partial_measurements": beside,  # the same model on more or other points: beside the entry, not ranked
        "seeds": sorted({r["config"]["seed"] for r in chosen if r["config"].get("seed") is not None}),
        "versions": {r["id"]: r.get("versions") or {} for r in chosen},
        "flags": sorted({str(w) for r in chosen + subset for w in r.get("warnings") or []}
                        | set(entry_flags(accuracy_per_attack(chosen))) | set(conflict)),
        "external": reproducibility == "external", "tool": next((r.get("tool") for r in chosen if r.get("tool")), None),
        "reproducible": reproducibility == "yes", "reproducibility": reproducibility, "notes": notes,
        **{field: chosen[0].get(field) for field in ABOUT_FIELDS},
        **({"certified_conflicts": certified[2]} if conflict else {}),  # verify refuses a site with any
        "cost": entry_cost(chosen + subset, n),  # passes per test point and wall time; None if a record has none
        "records": [published_record(r) for r in records],
    }


def partial_note(m: dict[str, Any]) -> str:
    """A partial measurement beside an entry, in words."""
    return (f"also measured on {m['n']} test points by {', '.join(m['attacks']) or 'no attack'} (record(s) "
            f"{', '.join(m['record_ids'])}): clean {100 * m['clean_accuracy']:.1f}%, robust "
            f"{100 * m['robust_accuracy']:.1f}%, a partial measurement (an upper bound) beside this row")


def published_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record as an entry publishes it: whole (the board re-derives every number from it), less its indices when
    they are the first n test points, which store/records.py restores on read."""
    if record.get("indices") == list(range(len(record.get("indices") or []))):
        return {k: v for k, v in record.items() if k not in BULKY_FIELDS}
    return record


def entry_protocols(chosen: list[dict[str, Any]], defense: dict[str, Any] | None) -> list[str]:
    """The protocols the union of the records' attacks (and probes) covers, on the entry's own test points.

    What each protocol requires is read from the records, frozen there when they ran (a later change of a
    defense's adaptive attacks cannot move an old row); the catalog computes it only for records from
    before that, and for protocols none of the records knew.
    """
    required = dict(catalog.protocol_requirements(defense))
    for r in reversed(chosen):  # the oldest record's word last: it wins
        required.update(r.get("protocol_requirements") or {})
    offered = [c for r in chosen for c in record_configs(r["config"]) if isinstance(c, dict)]
    return satisfied(offered, required)


def protocol_coverage(subset: list[dict[str, Any]], defense: dict[str, Any] | None) -> dict[str, int]:
    """label -> the most points a record on a subset of the entry's points ran the protocol on."""
    out: dict[str, int] = {}
    for r in subset:
        for label in entry_protocols([r], defense):
            out[label] = max(out.get(label, 0), len(r.get("indices") or []))
    return out


def entry_flags(per_attack: dict[str, float]) -> list[str]:
    """Across the records of one entry: a multi-step attack weaker than a single-step one (gradient masking?), under
    its attack-failure indicator's name (a record's fired indicators reach the flags through its warnings)."""
    facts = catalog.facts()
    single = set(facts["single_step"])
    multi = set(facts["attacks"]) - single - set(facts["black_box"])
    return [f"single-step-beats-multi-step: {m} accuracy {per_attack[m]:.4f} is above {s} accuracy "
            f"{per_attack[s]:.4f}: the multi-step attack is weaker than the single-step one (gradient masking?)"
            for m in sorted(multi & set(per_attack)) for s in sorted(single & set(per_attack))
            if per_attack[m] > per_attack[s]]


# What an imported record says about its model, shown beside it; None for our own entries.
ABOUT_FIELDS = ("model_id", "link", "venue", "additional_data", "forward_passes", "robust_source")
TIERS = {"ranked": 0, "external": 0, "partial": 1}  # "external": the status imports had before they were ranked


def rank_key(entry: dict[str, Any]) -> tuple:
    """Within a board (dataset, norm, eps): every entry that ran an evaluation protocol (standard/2's AutoAttack or
    standard/3's strong, side by side) or RobustBench's evaluation, by the worst case; partial evaluations (upper
    bounds) never above them."""
    return (entry["dataset"], entry["norm"], entry["eps"], TIERS.get(entry.get("status", "partial"), 2),
            -entry["robust_accuracy"], -entry["clean_accuracy"], entry["model"], entry["defense"], entry["entry_id"])


def build_entries(records: list[dict[str, Any]], checkpoint_exists: Callable[[str], bool] | None = None, *,
                  checkpoint_ok: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """Leaderboard entries, one per (model, dataset, defense and its options, weights, norm, eps), ranked.

    The newest record of each id counts (records are immutable; a re-run, or a re-import, is newer).
    A missing checkpoint makes an entry not reproducible; it is never dropped. An entry whose
    records cover an evaluation protocol (evaluation/protocols.py) is ranked; the others are partial
    evaluations, whose robust accuracy is an upper bound, listed below the ranked ones.

    Args:
        records: evaluation records (harness.run_evaluation) and imported external ones.
        checkpoint_exists: whether a record's checkpoint path still exists (injected: this stays pure); or
        checkpoint_ok: whether a record's checkpoint still holds its weights, given the record (the CLI's check).
    """
    newest: dict[str, dict[str, Any]] = {}
    for record in records:
        record = _check_record(record)
        old = newest.get(record["id"])
        if old is None or _age(record) >= _age(old):
            newest[record["id"]] = record
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    fields: dict[str, dict[str, Any]] = {}
    for record in newest.values():  # grouped after the newest is chosen: a re-import with a new name moves its row
        key = _group_key(record)
        fields[key] = group_fields(record)
        groups.setdefault(key, {})[record["id"]] = record
    ok = checkpoint_ok or (lambda r: bool(checkpoint_exists and checkpoint_exists(r["checkpoint"])))
    entries = [_entry(fields[key], list(by_id.values()), ok) for key, by_id in groups.items()]
    return sorted(entries, key=rank_key)


def curves(entries: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[tuple[float, float, str]]]:
    """Robustness curves: (dataset, norm, label) -> [(eps, robust accuracy, kind)] sorted by eps; one per checkpoint.

    kind is "protocol" where the entry ran an evaluation protocol (or is clean, eps 0), else "partial". A
    checkpoint certified at two eps or more also gets "<label> · certified": [(eps, certified accuracy, "certified")].
    eps = 0 entries are the clean points. A checkpoint evaluated at a single eps is no curve and is
    left out (an imported board of single-eps entries draws nothing). The label is "model / defense",
    with the training and seed added where two curves would share it.
    """
    series: dict[tuple, list[tuple[float, float, str]]] = {}
    proven: dict[tuple, list[tuple[float, float, str]]] = {}
    for e in entries:
        key = (e["dataset"], e["norm"], e["model"], e["defense"], e.get("training", ""), tuple(e["seeds"]),
               e.get("weights") or e["entry_id"])
        kind = "protocol" if e.get("status") != "partial" or e["eps"] == 0 else "partial"
        series.setdefault(key, []).append((e["eps"], e["robust_accuracy"], kind))
        if e.get("certified_accuracy") is not None:
            proven.setdefault(key, []).append((e["eps"], e["certified_accuracy"], "certified"))
    kept = {k: sorted(points) for k, points in series.items() if len(points) > 1}
    short = {k: f"{k[2]} / {k[3]}" for k in kept}
    shared = {label for label in short.values() if list(short.values()).count(label) > 1}
    labels = {}
    for k in kept:
        seeds = ", ".join(map(str, k[5]))
        detail = ", ".join(p for p in (k[4], f"seed {seeds}" if seeds else "") if p)
        labels[k] = f"{short[k]} ({detail})" if short[k] in shared and detail else short[k]
    named = list(labels.values())  # still shared (other weights, same recipe): the weights' hash tells them apart
    labels = {k: f"{v} · {str(k[6]).removeprefix('file:')[:8]}" if named.count(v) > 1 else v for k, v in labels.items()}
    out: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for k, points in kept.items():
        label = labels[k]
        out.setdefault((k[0], k[1], label), []).extend(points)
        if len(proven.get(k, [])) > 1:
            out.setdefault((k[0], k[1], label + CERTIFIED), []).extend(proven[k])
    return {key: sorted(points) for key, points in sorted(out.items())}
