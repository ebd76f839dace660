"""`karp-robust records`: browse the results store without building a leaderboard.

    karp-robust records list [--model M] [--dataset D] [--defense F] [--attack A]
    karp-robust records show ID_PREFIX [--json]
    karp-robust records export --format csv|json [--out FILE] [same filters as list]

Records are read from KARP_HOME/results.sqlite through ResultsStore, oldest first; nothing is written
to the store. The CSV holds one row per record without the per-example masks and indices (pandas reads
it back with `pandas.read_csv`); the JSON export is the full records, one per line inside a list.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any

from tabulate import tabulate

from robustbench_karp.boards.format import eps_label, fraction
from robustbench_karp.store import ResultsStore, atomic_write_bytes, karp_home, read_records
from robustbench_karp.store.records import defense_name


def stored_records() -> list[dict[str, Any]]:
    """Every record in the store, oldest first, read without creating or changing anything ([] with no store)."""
    return read_records(karp_home() / "results.sqlite")


def record_attack_names(record: dict[str, Any]) -> list[str]:
    """The attacks a record ran, in order: configured names, then any per-attack result not among them."""
    names = [a["name"] for a in record["config"].get("attacks") or [] if isinstance(a, dict) and "name" in a]
    return list(dict.fromkeys(names + list(record.get("per_attack", {}))))


def matches(record: dict[str, Any], args) -> bool:
    """The list/export filters; names compare case-insensitively and exactly."""
    def same(value, wanted):
        return wanted is None or str(value).lower() == wanted.lower()

    wanted_attack, config = getattr(args, "attack", None), record["config"]
    return (same(config.get("model"), args.model) and same(config.get("dataset"), args.dataset)
            and same(defense_name(record), args.defense)
            and (wanted_attack is None or wanted_attack.lower() in {n.lower() for n in record_attack_names(record)}))


def _created(record: dict[str, Any]) -> str:
    """'2026-12-02T15:31:56.586340+00:00' -> '2026-12-02 15:31' (UTC)."""
    return str(record.get("created_utc", ""))[:16].replace("T", " ")


def cmd_records_list(args) -> int:
    records = [r for r in stored_records() if matches(r, args)]
    if not records:
        print(f"no records{' match these filters' if _filtered(args) else ''} in {karp_home() / 'results.sqlite'}")
        return 0
    rows = [[r["id"], _created(r), c.get("model"), c.get("dataset"), defense_name(r), c.get("norm"),
             eps_label(c.get("eps")), c.get("n_examples"), fraction(r.get("clean_accuracy")),
             fraction(r.get("robust_accuracy")), ", ".join(record_attack_names(r))]
            for r, c in ((r, r["config"]) for r in records)]
    print(tabulate(rows, headers=["id", "created (UTC)", "model", "dataset", "defense", "norm", "eps", "n", "clean",
                                  "robust", "attacks"], tablefmt="github", disable_numparse=True,
                   colalign=["left"] * 6 + ["right"] * 4 + ["left"]))
    print(f"{len(records)} record{'s' if len(records) != 1 else ''}; `karp-robust records show ID` for one of them")
    return 0


def _filtered(args) -> bool:
    return any(getattr(args, k, None) is not None for k in ("model", "dataset", "defense", "attack"))


def find_record(prefix: str, records: list[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """(newest record whose id starts with prefix, how many runs share that id); ValueError if none or several ids."""
    ids = list(dict.fromkeys(r["id"] for r in records if r["id"].startswith(prefix)))
    if not ids:
        raise ValueError(f"unknown record id {prefix!r}: no record in {karp_home() / 'results.sqlite'} starts with it "
                         "(karp-robust records list shows them)")
    if len(ids) > 1:
        shown = ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")
        raise ValueError(f"ambiguous record id {prefix!r}: it starts {len(ids)} ids ({shown}); give more characters")
    runs = [r for r in records if r["id"] == ids[0]]
    return runs[-1], len(runs)


def _options(config: dict[str, Any]) -> str:
    """{'name': 'pgd', 'steps': 10, 'loss': 'ce'} -> 'pgd(loss=ce, steps=10)'."""
    rest = {k: v for k, v in config.items() if k != "name" and v is not None}
    inner = ", ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in sorted(rest.items()))
    return f"{config.get('name', '?')}({inner})" if inner else str(config.get("name", "?"))


def show_record(record: dict[str, Any], runs: int) -> None:
    """The record as a person reads it: configuration, numbers per attack, provenance, warnings."""
    r, c = record, record["config"]
    again = f"   (newest of {runs} runs of this id)" if runs > 1 else ""
    print(f"record {r['id']}   created {str(r.get('created_utc', ''))[:19].replace('T', ' ')} UTC{again}")
    defense = _options(c["defense"] if isinstance(c.get("defense"), dict) else {"name": defense_name(r) or "?"})
    model = str(c.get("model", "?")) + (f"   source {c['source']}" if c.get("source") else "")
    config = [["model", model], ["dataset", f"{c.get('dataset')}   first {c.get('n_examples')} test points"],
              ["defense", defense], ["threat", f"{c.get('norm')} eps={eps_label(c.get('eps'))}"],
              ["attacks", "; ".join(_options(a) for a in c.get("attacks") or [])],
              ["seed, batch", f"{c.get('seed')}, {c.get('batch_size', '?')}"]]
    if c.get("protocol") or r.get("protocols"):
        config.append(["protocol", f"{c.get('protocol') or '-'} (satisfies: {', '.join(r.get('protocols') or []) or 'none'})"])
    print(tabulate(config, tablefmt="plain"))
    print()
    rows = [["clean", fraction(r.get("clean_accuracy"))]]
    rows += [[f"after {name}", fraction(acc)] for name, acc in r.get("per_attack", {}).items()]
    rows.append(["robust (worst case)", fraction(r.get("robust_accuracy"))])
    print(tabulate(rows, headers=["", "accuracy"], tablefmt="github", disable_numparse=True, colalign=["left", "right"]))
    print()
    print("provenance")
    print("\n".join("  " + line for line in tabulate(_provenance(r), tablefmt="plain").splitlines()))
    warnings = r.get("warnings") or []
    print(f"warnings: {'none' if not warnings else ''}")
    for warning in warnings:
        print(f"  - {warning}")


def _provenance(r: dict[str, Any]) -> list[list[str]]:
    cond = r.get("conditions") or {}
    where = ", ".join(f"{k} {v}" for k, v in cond.items() if k != "cpu_isa")
    rows = [["checkpoint", r.get("checkpoint") or r.get("model_file") or "-"],
            ["checkpoint sha256", r.get("checkpoint_sha256") or "-"], ["weights sha256", r["config"].get("weights") or "-"]]
    if r["config"].get("defense_weights"):
        rows.append(["defense weights sha256", r["config"]["defense_weights"]])
    if r.get("train_config"):
        rows.append(["trained with", json.dumps(r["train_config"], sort_keys=True)])
    rows.append(["device", f"{r.get('device')}" + (f" ({where})" if where else "")])
    if cond.get("cpu_isa"):
        rows.append(["vector ISA", cond["cpu_isa"]])
    if r.get("elapsed_seconds") is not None:
        rows.append(["elapsed", f"{r['elapsed_seconds']:.1f} s"])
    rows.append(["versions", ", ".join(f"{k} {v}" for k, v in (r.get("versions") or {}).items())])
    return rows


def cmd_records_show(args) -> int:
    record, runs = find_record(args.id, stored_records())
    if args.json:
        print(json.dumps(record, sort_keys=True))
    else:
        show_record(record, runs)
    return 0


CSV_HEAD = ["id", "created_utc", "model", "model_source", "dataset", "defense", "defense_options", "norm", "eps",
            "n_examples", "seed", "batch_size", "protocol", "attacks", "attack_configs", "clean_accuracy", "robust_accuracy"]
CSV_TAIL = ["n_warnings", "warnings", "elapsed_seconds", "device", "threads", "cpu_capability", "cpu", "checkpoint",
            "checkpoint_sha256", "weights_sha256", "karp_robust", "torch", "git_commit"]


def csv_row(r: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: the configuration and numbers of a record, without masks and indices; '' for missing."""
    config = r["config"]
    own = config.get("defense") if isinstance(config.get("defense"), dict) else {}
    defense = {k: v for k, v in own.items() if k != "name"}
    versions, cond = r.get("versions") or {}, r.get("conditions") or {}
    row = {k: r.get(k) for k in ("id", "created_utc", "clean_accuracy", "robust_accuracy", "elapsed_seconds", "device",
                                 "checkpoint", "checkpoint_sha256")}
    row |= {k: config.get(k) for k in ("model", "dataset", "norm", "eps", "n_examples", "seed", "batch_size", "protocol")}
    row |= {"model_source": config.get("source"), "defense": defense_name(r), "weights_sha256": config.get("weights"),
            "defense_options": json.dumps(defense, sort_keys=True) if defense else None,
            "attacks": "+".join(record_attack_names(r)),
            "attack_configs": json.dumps(config.get("attacks") or [], sort_keys=True),
            "n_warnings": len(r.get("warnings") or []), "warnings": " | ".join(r.get("warnings") or []) or None,
            "threads": cond.get("threads"), "cpu_capability": cond.get("cpu_capability"), "cpu": cond.get("cpu"),
            "karp_robust": versions.get("karp_robust"), "torch": versions.get("torch"), "git_commit": versions.get("git_commit")}
    row |= {f"after_{name}": acc for name, acc in r.get("per_attack", {}).items()}
    return {k: "" if v is None else v for k, v in row.items()}


def to_csv(records: list[dict[str, Any]]) -> str:
    """Columns: CSV_HEAD, one after_<attack> column per attack seen (first-seen order), CSV_TAIL."""
    rows = [csv_row(r) for r in records]
    per_attack = list(dict.fromkeys(k for row in rows for k in row if k.startswith("after_")))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_HEAD + per_attack + CSV_TAIL, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)  # floats as repr: they read back exactly
    return out.getvalue()


def to_json(records: list[dict[str, Any]]) -> str:
    """A JSON list of the full records, one per line."""
    return "[\n" + ",\n".join(json.dumps(r, sort_keys=True) for r in records) + ("\n]\n" if records else "]\n")


def cmd_records_export(args) -> int:
    records = [r for r in stored_records() if matches(r, args)]
    text = to_csv(records) if args.format == "csv" else to_json(records)
    if args.out is None:
        sys.stdout.write(text)
        return 0
    atomic_write_bytes(args.out, lambda f: f.write(text.encode()))
    print(f"wrote {len(records)} record{'s' if len(records) != 1 else ''} to {args.out}", file=sys.stderr)
    return 0


def cmd_records_delete(args) -> int:
    """Remove records, after asking (or with --yes); a build then drops their rows from the published site."""
    records = stored_records()
    chosen = list(dict.fromkeys(find_record(prefix, records)[0]["id"] for prefix in args.ids))
    for rid in chosen:
        r = next(r for r in records if r["id"] == rid)
        print(f"{rid}  {_created(r)}  {r['config'].get('model')} / {r['config'].get('dataset')} / {defense_name(r)}  "
              f"{r['config'].get('norm')} eps={eps_label(r['config'].get('eps'))}  robust {fraction(r.get('robust_accuracy'))}")
    if not args.yes:
        if not sys.stdin.isatty():
            raise ValueError(f"records delete: {len(chosen)} record(s) to delete and no terminal to ask: pass --yes")
        if input(f"delete {len(chosen)} record(s)? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    removed = ResultsStore(karp_home() / "results.sqlite").delete(chosen)
    print(f"deleted {removed} row(s) of {len(chosen)} record(s); published files are unchanged until the next "
          "`karp-robust leaderboard build`, which drops their rows")
    return 0


def cmd_records(args) -> int:
    return {"list": cmd_records_list, "show": cmd_records_show, "export": cmd_records_export,
            "delete": cmd_records_delete}[args.action](args)
