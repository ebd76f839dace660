"""Check a published site against its own records: `karp-robust leaderboard verify [DIR]`.

    problems = verify_site(Path("leaderboard"))     # [] when every published number re-derives

A published number is trusted only if the site's records give it back:
- every record: its id is its config's hash (config_hash of the EvalConfig, or of an import's identity),
  its masks have one '0'/'1' per test point, its accuracies are exactly what its masks count, and every
  certified point is robust; its cascade indicators (black-box-beats-white-box, single-step-beats-multi-step)
  are what its per-attack accuracies give;
- every entry: recomputed from the records (boards/published.rederive), every field agrees with the
  published one, except where the site was built (reproducibility, the examples link);
- every page: README.md, results.csv, index.html and the curves render again byte for byte.
An import's numbers are re-read from the model_info file (or the paper's figure) it carries. Pure, apart from reading the site.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robustbench_karp.boards.paper_import import TOOL, import_paper
from robustbench_karp.boards.published import load_published, rederive
from robustbench_karp.boards.robustbench_import import import_robustbench
from robustbench_karp.boards.site import site_files
from robustbench_karp.store import config_hash

WHERE_BUILT = ("reproducible", "reproducibility", "examples")  # decided on the machine that built the site


def record_problems(record: dict[str, Any]) -> list[str]:
    """What in one record does not hold together (an empty list when everything does)."""
    rid, config = record["id"], record["config"]
    if record.get("source") == "external":
        return _import_problems(record)
    out = []
    if (config.get("schema") or 0) < 2:
        out.append(f"record {rid}: made before the EvalConfig, so its id cannot be re-derived from its config")
    elif config_hash(config) != rid:
        out.append(f"record {rid}: its id is not its config's hash ({config_hash(config)})")
    clean, robust = record.get("clean_mask"), record.get("robust_mask")
    if not clean or not robust:
        return out + [f"record {rid}: no per-example masks, so its numbers cannot be re-derived"]
    n = config.get("n_examples")
    for name, mask in (("clean_mask", clean), ("robust_mask", robust)):
        if len(mask) != n or set(mask) - {"0", "1"}:
            out.append(f"record {rid}: {name} is not {n} characters of '0'/'1'")
            return out
    for field, mask in (("clean_accuracy", clean), ("robust_accuracy", robust)):
        counted = mask.count("1") / max(n, 1)
        if record.get(field) != counted:
            out.append(f"record {rid}: {field} {record.get(field)} but its mask counts {counted}")
    if any(r == "1" and c == "0" for c, r in zip(clean, robust)):
        out.append(f"record {rid}: a point is robust but not clean-correct")
    certified = record.get("certified_mask")
    if certified is not None:
        if len(certified) != n or set(certified) - {"0", "1"}:
            out.append(f"record {rid}: certified_mask is not {n} characters of '0'/'1'")
        else:
            if record.get("certified_accuracy") != certified.count("1") / max(n, 1):
                out.append(f"record {rid}: certified_accuracy {record.get('certified_accuracy')} but its mask counts "
                           f"{certified.count('1') / max(n, 1)}")
            if any(c == "1" and r == "0" for c, r in zip(certified, robust)):
                out.append(f"record {rid}: a certified point is not robust (a certificate contradicts an attack)")
    if record.get("indices") is not None and list(record["indices"]) != list(range(n)):
        out.append(f"record {rid}: its test points are not the first {n} of the test split, as every evaluation's are")
    order, per_attack = record.get("attack_order") or [], record.get("per_attack") or {}
    if order and order[-1] in per_attack and per_attack[order[-1]] != record.get("robust_accuracy"):
        out.append(f"record {rid}: accuracy after its last attack {per_attack[order[-1]]} is not its robust accuracy")
    cumulative = [per_attack[a] for a in order if a in per_attack]  # a cascade only ever removes points
    if any(later > earlier for earlier, later in zip(cumulative, cumulative[1:])) or \
            any(not record["robust_accuracy"] <= acc <= record["clean_accuracy"] for acc in cumulative):
        out.append(f"record {rid}: its per-attack accuracies {cumulative} do not fall from clean to robust accuracy")
    out += _requirement_problems(record)
    out += _indicator_problems(record)
    return out


def _indicator_problems(record: dict[str, Any]) -> list[str]:
    """The indicators a record derives from its cascade's accuracies, derived again (records from before indicators,
    and cascades with an attack the catalog does not know, have nothing to compare)."""
    from robustbench_karp import catalog
    from robustbench_karp.evaluation.indicator_rules import base_name, cascade_indicators

    stored, order = record.get("indicators") or {}, record.get("attack_order") or []
    facts = catalog.facts()
    if not stored or not order or any(base_name(a) not in facts["attacks"] for a in order) or \
            any(a not in (record.get("per_attack") or {}) for a in order):
        return []
    kinds = [{a for a in order if base_name(a) in facts[k]} for k in ("single_step", "black_box")]
    again = cascade_indicators(record["clean_accuracy"], record["per_attack"], order, *kinds,
                               record["config"].get("n_examples") or 0)
    return [f"record {record['id']}: indicator {name} is {_short(stored.get(name))} but its accuracies give "
            f"{_short(ind)}" for name, ind in again.items() if stored.get(name) != ind]


def _requirement_problems(record: dict[str, Any]) -> list[str]:
    """The protocol requirements frozen in a record are this version's for its defense: a protocol version never
    changes what it asks (a change is a new version), so an edit shows."""
    from robustbench_karp import catalog
    from robustbench_karp.evaluation.protocols import canonical

    frozen = record.get("protocol_requirements")
    if not frozen:
        return []
    known = catalog.protocol_requirements(record["config"].get("defense"))
    same = lambda a, b: a is None and b is None or (  # noqa: E731
        a is not None and b is not None and sorted(map(canonical, a)) == sorted(map(canonical, b)))
    return [f"record {record['id']}: its frozen requirements of {label} are not what {label} asks of its defense"
            for label, configs in sorted(frozen.items()) if label in known and not same(configs, known[label])]


def _import_problems(record: dict[str, Any]) -> list[str]:
    """An import's numbers and id, read again from the model_info (or the paper figure) it carries."""
    config, what = record["config"], "paper figure" if record.get("tool") == TOOL else "model_info"
    try:
        again = import_paper(record["paper_figure"], imported_utc=record.get("created_utc")) if what != "model_info" \
            else import_robustbench(record["model_info"], record.get("imported_from") or "model_info.json",
                                    dataset=config["dataset"], norm=config["norm"], imported_utc=record.get("created_utc"))
    except (KeyError, ValueError) as e:
        return [f"record {record['id']}: its {what} does not import ({e})"]
    fields = sorted((set(record) | set(again)) - {"created_utc", "imported_from"})  # all but when and whence
    return [f"record {record['id']}: {f} {_short(record.get(f))} but its {what} gives {_short(again.get(f))}"
            for f in fields if record.get(f) != again.get(f)]


def verify_site(site: Path) -> list[str]:
    """Every disagreement between a published site and what its records give; [] when there is none."""
    site = Path(site)
    published = load_published(site)  # a damaged or mislabelled entry file is a ValueError already
    if not published:
        return [f"{site}: no published entries"]
    problems = [p for e in published for r in e["records"] for p in record_problems(r)]
    if problems:  # the entries cannot be re-derived from records that do not hold together
        return problems
    derived = {e["entry_id"]: e for e in rederive(published, [], checkpoint_ok=lambda r: False)}
    problems += [f"entry {i}: {e['certified_conflicts']} point(s) certified by one record were broken by another's "
                 "attack" for i, e in sorted(derived.items()) if e.get("certified_conflicts")]
    shown = {path.stem: json.loads(path.read_text()) for path in (site / "entries").glob("*.json")}  # as on disk
    for entry_id in sorted(set(shown) | set(derived)):
        if entry_id not in derived:
            problems.append(f"entry {entry_id}: published, but its records make no such entry")
            continue
        if entry_id not in shown:
            problems.append(f"entry {entry_id}: its records make it, but it is not published")
            continue
        for field in WHERE_BUILT:  # the published values, so that the pages compare too
            if field in shown[entry_id]:
                derived[entry_id][field] = shown[entry_id][field]
        problems += [f"entry {entry_id}: {field} is {_short(shown[entry_id].get(field))} but its records give "
                     f"{_short(derived[entry_id].get(field))}"
                     for field in sorted(set(shown[entry_id]) | set(derived[entry_id]))
                     if shown[entry_id].get(field) != derived[entry_id].get(field)]
    if not problems:
        for rel, content in site_files(list(derived.values()), site).items():
            path = site / rel
            if not rel.startswith("entries/") and (not path.is_file() or path.read_bytes() != content):
                problems.append(f"{rel}: not what the entries render")
    return problems


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
