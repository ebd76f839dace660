"""A published leaderboard site read back: its entries checked, older schemas migrated, every entry re-derived.

    published = load_published(Path("leaderboard"))
    entries = rederive(published, store_records, checkpoint_ok)     # from the records, never from the entries
    render_site(entries, Path("leaderboard"))
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustbench_karp.boards.counts import entry_cost
from robustbench_karp.boards.entries import (
    ENTRY_SCHEMA,
    GROUP_FIELDS,
    build_entries,
    entry_protocols,
    group_fields,
    training_label,
)
from robustbench_karp.store import config_hash
from robustbench_karp.store.records import migrate

ENTRY_FIELDS = (*GROUP_FIELDS, "schema", "entry_id", "eps_label", "training", "protocols", "status", "clean_accuracy",
                "robust_accuracy", "clean_ci", "robust_ci", "n", "k_clean", "k_robust", "attacks", "per_attack",
                "record_ids", "left_out_record_ids", "seeds", "versions", "flags", "external", "tool", "reproducible",
                "reproducibility", "notes", "records")


LEGACY_GROUP_FIELDS = ("model", "dataset", "defense", "checkpoint_sha256", "norm", "eps")  # entry schema 1


def migrate_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 entry (grouped by checkpoint file sha256, no protocols) in today's schema.

    Its numbers stay as published (its records' masks were not published then); the group gains
    the defense's options and the weights identity ("file:<sha256>" for these records), and its
    protocols are read off its records' attack configs. The entry id changes with the group.
    """
    chosen = [r for r in entry["records"] if r["id"] in set(entry["record_ids"])] or entry["records"]
    fields = {**group_fields(chosen[0]), "eps": float(entry["eps"])} if chosen else {}
    protocols = entry_protocols(chosen, fields.get("defense_config"))
    status = "external" if entry.get("external") else ("ranked" if protocols else "partial")
    out = {k: v for k, v in entry.items() if k != "checkpoint_sha256"}
    if not entry.get("external"):  # its records predate weight identities: a re-run needs the checkpoint retrained
        out["reproducible"], out["reproducibility"] = False, "retrain (`reproduce --train-missing`)"
    return {**out, **fields, "schema": ENTRY_SCHEMA, "entry_id": config_hash(fields), "protocols": protocols,
            "status": status}


def load_published(out_dir: Path) -> list[dict[str, Any]]:
    """The entries of a site render_site wrote into out_dir (entries/*.json), in today's schema; [] when there is none.

    Each file is checked: a JSON object with every entry field, named by its entry id, and that id
    the hash of its group (model, dataset, defense and options, weights, norm, eps). Entries of
    an older schema are checked against their own rules, then migrated; entries published before
    costs were recorded get theirs from their records, and the training label is worded afresh from
    the entry's record. Any other file is an error.
    """
    entries = []
    for path in sorted((Path(out_dir) / "entries").glob("*.json")):
        try:
            entry = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"published entry {path} is not valid JSON ({e})") from None
        if not isinstance(entry, dict):
            raise ValueError(f"published entry {path} is not a JSON object")
        legacy = entry.get("schema") is None
        group, required = (LEGACY_GROUP_FIELDS, [f for f in ENTRY_FIELDS if f not in ("schema", "protocols", "status",
                                                                                       "defense_config", "weights")]
                           ) if legacy else (GROUP_FIELDS, ENTRY_FIELDS)
        missing = [f for f in (*group, *required) if f not in entry]
        if missing:
            raise ValueError(f"published entry {path} lacks {', '.join(dict.fromkeys(missing))}")
        if not isinstance(entry["records"], list) or not all(isinstance(r, dict) and "id" in r for r in entry["records"]):
            raise ValueError(f"published entry {path}: 'records' is not a list of records with ids")
        expected = config_hash({f: entry[f] for f in group})
        if entry["entry_id"] != path.stem or entry["entry_id"] != expected:
            raise ValueError(f"published entry {path}: its id does not match its file name and its group "
                             f"({', '.join(group)}) (expected {expected})")
        entry["records"] = [migrate(r) for r in entry["records"]]  # records of any schema, read as today's
        entry = migrate_entry(entry) if legacy else entry
        chosen = [r for r in entry["records"] if r["id"] in set(entry["record_ids"])]
        if chosen and chosen[0].get("train_config"):  # a display field: today's wording, from the published record
            entry["training"] = training_label(chosen[0])
        if "cost" not in entry:  # published before costs: wall time from its records (passes were not counted)
            entry["cost"] = entry_cost([r for r in entry["records"] if r["id"] in set(entry["record_ids"])], entry["n"])
        entries.append(entry)
    return entries


def site_records(published: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every record a published site holds (each entry publishes all of its records)."""
    return [r for e in published for r in e["records"]]


def rederive(published: list[dict[str, Any]], records: list[dict[str, Any]],
             checkpoint_ok: Callable[[dict[str, Any]], bool],
             keep: Callable[[dict[str, Any]], bool] = lambda entry: True) -> list[dict[str, Any]]:
    """Every entry recomputed from records: the build's own and those its published entries hold.

    Nothing published is trusted as it sits on disk: numbers, status, protocols and flags come from the
    records' masks and configs. A published entry's records stay unless keep(entry) is false (--prune of
    the boards being built). An entry none of whose records are the build's own keeps the reproducibility
    decided where it was published (its checkpoint was there, not here).
    """
    key = lambda r: (r["id"], str(r.get("created_utc")))  # noqa: E731
    own = {key(r) for r in records}
    union = list(records) + [r for e in published if keep(e) for r in e["records"] if key(r) not in own]
    unique = list({key(r): r for r in union}.values())
    if not unique:
        return []
    entries = build_entries(unique, checkpoint_ok=checkpoint_ok)
    before = {e["entry_id"]: e for e in published}
    for e in entries:
        old = before.get(e["entry_id"])
        if old is not None and not any(key(r) in own for r in e["records"]):
            e["reproducible"], e["reproducibility"] = old["reproducible"], old["reproducibility"]
    return entries
