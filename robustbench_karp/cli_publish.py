"""`karp-robust compare`, `leaderboard build|publish|add-external|export` and `reproduce`: the CLI's publishing side.

Like commands.py, this is CLI code: it prints; the library it calls does not.
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import re
import sys
from pathlib import Path

from tabulate import tabulate

from robustbench_karp.cli_progress import EvalProgress, TqdmTraining
from robustbench_karp.store import ResultsStore, atomic_write_text, resolve_path


def _exists(path: str) -> bool:
    return resolve_path(path).is_file()


def _entries_with_flags(records: list[dict]) -> list[dict]:
    """Leaderboard entries (their flags include the cross-record check: a multi-step attack weaker than a single-step one)."""
    from robustbench_karp.leaderboard import build_entries

    return build_entries(records, checkpoint_exists=_exists)


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
    from robustbench_karp.attacks import build_attack
    from robustbench_karp.commands import train_limit
    from robustbench_karp.defenses import DEFENSES
    from robustbench_karp.harness import EvalRequest, plan_evaluation, prepare, run_evaluation

    defenses = [d.strip() for d in args.defenses.split(",") if d.strip()]
    attack_names = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if not defenses:
        raise ValueError("--defenses is empty: name at least one defense, e.g. --defenses standard,fgsm-at")
    if not attack_names and not args.protocol:
        raise ValueError("--attacks is empty: name at least one attack, e.g. --attacks fgsm,pgd (or give --protocol)")
    for d in defenses:
        DEFENSES.get(d)
    options = parse_compare_options(args.attack_arg)
    attacks = [build_attack(name, options.get(name, {})) for name in attack_names]
    if args.protocol:
        from robustbench_karp.protocols import get_protocol

        get_protocol(args.protocol)
    cells = [[a] for a in attacks] + ([[]] if args.protocol else [])  # the protocol gets a column of its own
    store, rows, total, k = ResultsStore(), [], len(defenses) * len(cells), 0
    for defense in defenses:
        base = dict(model=args.model, dataset=args.dataset, defense=defense, norm=args.norm, eps=args.eps,
                    n_examples=args.n_examples, seed=args.seed, batch_size=args.batch_size, device=args.device,
                    data_dir=args.data_dir, download=args.download,
                    train_limit_seconds=None if args.train else train_limit())
        records = []
        for cell in cells:
            k += 1
            req = EvalRequest(**base, attacks=cell, protocol=None if cell else args.protocol)
            prepared = prepare(req, train_callbacks=[TqdmTraining()])  # a fresh model per cell: nothing carries over
            plan = plan_evaluation(req, prepared)
            record = store.get(plan.id)
            label = cell[0].name if cell else f"protocol {args.protocol}"
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"[{k}/{total}] {defense} x {label}: {'stored, reused' if record else 'running'}", file=sys.stderr)
            if record is None:
                with EvalProgress() as progress:
                    record = run_evaluation(req, prepared=prepared, plan=plan, on_start=progress.start,
                                            on_batch=progress.update, reporter=progress)
            records.append(record)
        rows.append((defense, records))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 gathered every cell and prints the matrix
        print_matrix(rows, [c[0].name if c else f"protocol {args.protocol}" for c in cells])
    return 0


def print_matrix(rows: list[tuple[str, list[dict]]], columns: list[str]) -> None:
    table = []
    for defense, records in rows:
        entry = _entries_with_flags(records)[0]
        cells = [f"{r['robust_accuracy']:.4f}" for r in records]
        worst = f"{entry['robust_accuracy']:.4f} [{entry['robust_ci'][0]:.3f}, {entry['robust_ci'][1]:.3f}]"
        table.append([defense, f"{entry['clean_accuracy']:.4f}", *cells, worst, len(entry["flags"])])
    print(tabulate(table, headers=["defense", "clean", *columns, "worst case [95% CI]", "flags"],
                   tablefmt="github"))
    for defense, records in rows:
        for flag in _entries_with_flags(records)[0]["flags"]:
            print(f"warning ({defense}): {flag}")


def _default_leaderboard_dir() -> Path | None:
    """The repository's top-level leaderboard/ when running from a source checkout."""
    candidate = Path(__file__).resolve().parent.parent / "leaderboard"
    return candidate if candidate.is_dir() else None


def cmd_leaderboard(args) -> int:
    actions = {"add-external": _add_external, "export": _export, "build": _build, "publish": _build}
    return actions[args.action](args)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object (a RobustBench model_info file)")
    return data


def _add_external(args) -> int:
    """Import RobustBench model_info files; all are checked before any is stored."""
    from robustbench_karp.leaderboard_html import eps_label
    from robustbench_karp.leaderboard_import import import_robustbench

    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    records = []
    for path in args.files:
        data = _read_json(path)
        try:
            records.append(import_robustbench(data, source=str(path), dataset=args.dataset, norm=args.norm,
                                              imported_utc=now))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    store = ResultsStore()
    for record in records:
        store.append(record)
        print(f"imported external entry {record['model_id']} ({record['dataset']} {record['norm']} "
              f"eps {eps_label(record['eps'])}: clean {record['clean_accuracy']:.4f}, robust "
              f"{record['robust_accuracy']:.4f} from {record['robust_source']})")
        for warning in record["warnings"]:
            print(f"warning: {record['model_id']}: {warning}", file=sys.stderr)
    return 0


def _find_entry(entry_id: str, site: Path | None) -> dict:
    """The entry of this id built from the store, else the one published in site."""
    from robustbench_karp.leaderboard_published import load_published

    entries = _entries_with_flags(ResultsStore().records())
    entries += load_published(site) if site is not None else []
    for entry in entries:
        if entry["entry_id"] == entry_id:
            return entry
    raise ValueError(f"unknown entry id {entry_id!r} (looked in the store and in {site or 'no site'}); "
                     f"closest: {_closest(entry_id, sorted({e['entry_id'] for e in entries}))}")


def _export(args) -> int:
    from robustbench_karp.leaderboard_export import export_robustbench

    info, where = export_robustbench(_find_entry(args.id, args.site or _default_leaderboard_dir()))
    text = json.dumps(info, indent=2) + "\n"
    if args.out is None:
        print(text, end="")
    else:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    print(f"submit it to RobustBench as {where}", file=sys.stderr)
    return 0


def _build(args) -> int:
    from robustbench_karp.leaderboard_published import load_published, merge_entries
    from robustbench_karp.leaderboard_site import render_site

    out = args.out or _default_leaderboard_dir()
    if out is None:
        raise ValueError("not in a source checkout: pass --out DIR")

    def asked(r: dict) -> bool:
        return ((args.dataset is None or r["dataset"] == args.dataset) and (args.norm is None or r["norm"] == args.norm)
                and (args.eps is None or any(abs(float(r["eps"]) - e) < 1e-9 for e in args.eps)))

    records = [r for r in ResultsStore().records() if asked(r)]
    entries = _entries_with_flags(records) if records else []
    published = load_published(Path(out))
    # A build limited to some boards never deletes the others: published entries outside them stay.
    entries += [] if args.merge else [e for e in published if not asked(e)]
    if args.merge:
        entries, dropped = merge_entries(published, entries)
        for entry_id, record_ids in dropped.items():
            print(f"warning: entry {entry_id}: published record(s) {', '.join(record_ids)} are not in this store; "
                  "the rebuilt entry leaves them out", file=sys.stderr)
    written = render_site(entries, Path(out), examples=example_grids(entries, args.examples) if args.examples else None)
    not_reproducible = sum(1 for e in entries if not e["reproducible"] and not e["external"])
    print(f"wrote {len(written)} files for {len(entries)} entries to {out}"
          + (f" ({not_reproducible} not reproducible: checkpoint missing)" if not_reproducible else ""))
    return 0


def example_grids(entries: list[dict], folder: Path) -> dict[str, bytes]:
    """entry id -> the PNG grid `evaluate --save-examples` wrote for one of its records (its last attack's)."""
    grids = {}
    for e in entries:
        for record in e.get("records") or []:
            pngs = {p.stem: p for p in (Path(folder) / record["id"]).glob("*.png")}
            order = [re.sub(r"[^A-Za-z0-9._-]", "_", name) for name in record.get("attack_order") or []]
            chosen = next((pngs[n] for n in reversed(order) if n in pngs), None) or next(iter(sorted(pngs.values())), None)
            if chosen is not None:
                grids[e["entry_id"]] = chosen.read_bytes()
                break
    return grids


def _closest(record_id: str, ids: list[str]) -> str:
    close = [i for i in ids if i.startswith(record_id)] + difflib.get_close_matches(record_id, ids, n=5, cutoff=0.3)
    return ", ".join(dict.fromkeys(close)) or "none"


def cmd_reproduce(args) -> int:
    from robustbench_karp.reproduce import find_records, rerun

    site = args.site or _default_leaderboard_dir()
    records = find_records(args.id, site)
    if not records:
        ids = sorted({r["id"] for r in ResultsStore().records()})
        raise ValueError(f"unknown record or entry id {args.id!r} (looked in the store and in {site or 'no site'}); "
                         f"closest in the store: {_closest(args.id, ids)}")
    ok = True
    for record in records:
        new, notes = rerun(record, device=args.device, data_dir=args.data_dir, download=args.download,
                           train_missing=args.train_missing)
        matched = report_reproduction(record, new, notes)
        ok &= matched
        if matched and args.append:
            ResultsStore().append(new)
            print(f"appended the re-run as a new record of {new['id']}")
    return 0 if ok else 1


def report_reproduction(old: dict, new: dict, notes: list[str] = ()) -> bool:
    from robustbench_karp.reproduce import GPU_TOLERANCE, differences

    rows = differences(old, new)
    exact = old.get("device") == "cpu" and new.get("device") == "cpu"
    print(f"reproducing {old['id']} on {new['device']} (recorded on {old.get('device')}; "
          f"{'exact match required' if exact else f'tolerance {GPU_TOLERANCE}'})")
    for note in notes:
        print(f"note: {note}")
    table = []
    for name, before, now, good in rows:
        if isinstance(before, float):
            diff = now - before
            shown = [f"{before:.4f}", f"{now:.4f}", "exact match" if diff == 0 else f"{diff:+.4f}"]
        else:
            shown = [before, now, "exact match" if good else "differs"]
        table.append([name, *shown, "ok" if good else "MISMATCH"])
    print(tabulate(table, headers=["quantity", "recorded", "now", "difference", ""], tablefmt="github"))
    ok = all(good for *_, good in rows)
    print("reproduced" if ok else "NOT reproduced (nothing was written to the store)")
    return ok
