"""`karp-robust compare`, `leaderboard build|publish|add-external` and `reproduce`: the CLI's publishing side.

Like commands.py, this is CLI code: it prints; the library it calls does not.
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path

from tabulate import tabulate

from robustbench_karp.attacks import ATTACKS, build_attack
from robustbench_karp.attacks.base import attack_from_config
from robustbench_karp.checks import entry_flags
from robustbench_karp.defenses import DEFENSES
from robustbench_karp.store import CheckpointError, ResultsStore, file_sha256, resolve_path

GPU_TOLERANCE = 0.005  # accuracies re-run on a GPU may differ by this much (nondeterministic kernels)


def _exists(path: str) -> bool:
    return resolve_path(path).is_file()


def _entries_with_flags(records: list[dict]) -> list[dict]:
    """Leaderboard entries, with the cross-record check (multi-step weaker than single-step) added to flags."""
    from robustbench_karp.leaderboard import build_entries

    entries = build_entries(records, checkpoint_exists=_exists)
    single = {n for n in ATTACKS.names() if getattr(ATTACKS.get(n), "single_step", False)}
    multi = set(ATTACKS.names()) - single - {n for n in ATTACKS.names() if getattr(ATTACKS.get(n), "black_box", False)}
    for entry in entries:
        entry["flags"] = sorted(set(entry["flags"]) | set(entry_flags(entry["per_attack"], single, multi)))
    return entries


def parse_compare_options(items: list[str]) -> dict[str, dict[str, str]]:
    """['pgd.steps=50', ...] -> {'pgd': {'steps': '50'}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        attack, dot, key = target.partition(".")
        if not (sep and dot and attack and key):
            raise ValueError(f"--attack-arg for compare is ATTACK.KEY=VALUE (e.g. pgd.steps=50), got {item!r}")
        out.setdefault(attack, {})[key] = value
    return out


def cmd_compare(args) -> int:
    from robustbench_karp.commands import EvalProgress, TqdmTraining
    from robustbench_karp.harness import EvalRequest, plan_evaluation, prepare, run_evaluation

    defenses = [d.strip() for d in args.defenses.split(",") if d.strip()]
    attack_names = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if not defenses:
        raise ValueError("--defenses is empty: name at least one defense, e.g. --defenses standard,fgsm-at")
    if not attack_names:
        raise ValueError("--attacks is empty: name at least one attack, e.g. --attacks fgsm,pgd")
    for d in defenses:
        DEFENSES.get(d)
    options = parse_compare_options(args.attack_arg)
    attacks = [build_attack(name, options.get(name, {})) for name in attack_names]
    store, rows, total, k = ResultsStore(), [], len(defenses) * len(attacks), 0
    for defense in defenses:
        base = dict(model=args.model, dataset=args.dataset, defense=defense, norm=args.norm, eps=args.eps,
                    n_examples=args.n_examples, seed=args.seed, batch_size=args.batch_size, device=args.device,
                    data_dir=args.data_dir, download=args.download)
        prepared = prepare(EvalRequest(**base), train_callbacks=[TqdmTraining()])
        records = []
        for attack in attacks:
            k += 1
            req = EvalRequest(**base, attacks=[attack])
            plan = plan_evaluation(req, prepared)
            record = store.get(plan.id)
            print(f"[{k}/{total}] {defense} x {attack.name}: {'stored, reused' if record else 'running'}", file=sys.stderr)
            if record is None:
                with EvalProgress() as progress:
                    record = run_evaluation(req, prepared=prepared, plan=plan, on_start=progress.start,
                                            on_batch=progress.update)
            records.append(record)
        rows.append((defense, records))
    print_matrix(rows, attacks)
    return 0


def print_matrix(rows: list[tuple[str, list[dict]]], attacks: list) -> None:
    table = []
    for defense, records in rows:
        entry = _entries_with_flags(records)[0]
        cells = [f"{r['robust_accuracy']:.4f}" for r in records]
        worst = f"{entry['robust_accuracy']:.4f} [{entry['robust_ci'][0]:.3f}, {entry['robust_ci'][1]:.3f}]"
        table.append([defense, f"{entry['clean_accuracy']:.4f}", *cells, worst, len(entry["flags"])])
    print(tabulate(table, headers=["defense", "clean", *[a.name for a in attacks], "worst case [95% CI]", "flags"],
                   tablefmt="github"))
    for defense, records in rows:
        for flag in _entries_with_flags(records)[0]["flags"]:
            print(f"warning ({defense}): {flag}")


def _default_leaderboard_dir() -> Path | None:
    """The repository's top-level leaderboard/ when running from a source checkout."""
    candidate = Path(__file__).resolve().parent.parent / "leaderboard"
    return candidate if candidate.is_dir() else None


def cmd_leaderboard(args) -> int:
    from robustbench_karp.leaderboard import import_robustbench, load_published, merge_entries, render_site

    if args.action == "add-external":
        try:
            data = json.loads(Path(args.file).read_text())
        except FileNotFoundError:
            raise ValueError(f"{args.file} does not exist") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{args.file} is not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{args.file}: expected a JSON object (a RobustBench model_info file)")
        record = import_robustbench(data, source=str(args.file))
        ResultsStore().append(record)
        print(f"imported external entry {record['id']} ({record['model']} / {record['defense']}, "
              f"clean {record['clean_accuracy']:.4f}, AutoAttack {record['robust_accuracy']:.4f})")
        return 0
    out = args.out or _default_leaderboard_dir()
    if out is None:
        raise ValueError("not in a source checkout: pass --out DIR")
    records = [r for r in ResultsStore().records()
               if (args.dataset is None or r["dataset"] == args.dataset) and (args.norm is None or r["norm"] == args.norm)
               and (args.eps is None or any(abs(float(r["eps"]) - e) < 1e-9 for e in args.eps))]
    entries = _entries_with_flags(records) if records else []
    if args.merge:
        entries, dropped = merge_entries(load_published(Path(out)), entries)
        for entry_id, record_ids in dropped.items():
            print(f"warning: entry {entry_id}: published record(s) {', '.join(record_ids)} are not in this store; "
                  "the rebuilt entry leaves them out", file=sys.stderr)
    written = render_site(entries, Path(out))
    not_reproducible = sum(1 for e in entries if not e["reproducible"] and not e["external"])
    print(f"wrote {len(written)} files for {len(entries)} entries to {out}"
          + (f" ({not_reproducible} not reproducible: checkpoint missing)" if not_reproducible else ""))
    return 0


def _closest(record_id: str, ids: list[str]) -> str:
    close = [i for i in ids if i.startswith(record_id)] + difflib.get_close_matches(record_id, ids, n=5, cutoff=0.3)
    return ", ".join(dict.fromkeys(close)) or "none"


def cmd_reproduce(args) -> int:
    from robustbench_karp.harness import EvalRequest, run_evaluation

    store = ResultsStore()
    record = store.get(args.id)
    if record is None:
        ids = sorted({r["id"] for r in store.records()})
        raise ValueError(f"unknown record id {args.id!r}; closest: {_closest(args.id, ids)}")
    if record.get("source") == "external":
        raise ValueError(f"record {args.id} was imported from {record.get('tool', 'another tool')}: nothing to re-run")
    path = resolve_path(record["checkpoint"])
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing: record {args.id} is not reproducible")
    if file_sha256(path) != record["checkpoint_sha256"]:
        raise CheckpointError(f"checkpoint {path} changed since record {args.id} (sha256 differs): not reproducible")
    req = EvalRequest(model=record["model"], dataset=record["dataset"], defense=record["defense"],
                      attacks=[attack_from_config(c) for c in record["attacks"]], norm=record["norm"], eps=record["eps"],
                      n_examples=record["n_examples"], seed=record["seed"], batch_size=record["batch_size"],
                      device=args.device, checkpoint=str(path), data_dir=args.data_dir, download=args.download)
    new = run_evaluation(req)
    return report_reproduction(record, new)


def report_reproduction(old: dict, new: dict) -> int:
    exact = old["device"] == "cpu" and new["device"] == "cpu"
    tolerance = 0.0 if exact else GPU_TOLERANCE
    pairs = [("clean_accuracy", old["clean_accuracy"], new["clean_accuracy"]),
             ("robust_accuracy", old["robust_accuracy"], new["robust_accuracy"])]
    pairs += [(f"after {k}", v, new["per_attack"].get(k, float("nan"))) for k, v in old["per_attack"].items()]
    rows, ok = [], new["id"] == old["id"]
    for name, before, now in pairs:
        diff = now - before
        good = abs(diff) <= tolerance
        ok &= good
        rows.append([name, f"{before:.4f}", f"{now:.4f}", "exact match" if diff == 0 else f"{diff:+.4f}",
                     "ok" if good else "MISMATCH"])
    print(f"reproducing {old['id']} on {new['device']} (recorded on {old['device']}; "
          f"{'exact match required' if exact else f'tolerance {tolerance}'})")
    print(tabulate(rows, headers=["quantity", "recorded", "now", "difference", ""], tablefmt="github"))
    if new["id"] != old["id"]:
        print(f"configuration id changed: {old['id']} -> {new['id']}")
    print("reproduced" if ok else "NOT reproduced")
    return 0 if ok else 1
