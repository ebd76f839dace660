"""`karp-robust reproduce ID`: re-run a record (or every record of an entry) and compare every number."""

from __future__ import annotations

from tabulate import tabulate

from robustbench_karp.cli.leaderboard import closest_ids, default_site
from robustbench_karp.store import ResultsStore, read_records


def cmd_reproduce(args) -> int:
    from robustbench_karp.reproduce import find_records, rerun

    site = args.site or default_site()
    records = find_records(args.id, site)
    if not records:
        ids = sorted({r["id"] for r in read_records()})
        raise ValueError(f"unknown record or entry id {args.id!r} (looked in the store and in {site or 'no site'}); "
                         f"closest in the store: {closest_ids(args.id, ids)}")
    ok = True
    for record in records:
        new, notes = rerun(record, device=args.device, data_dir=args.data_dir, download=args.download,
                           train_missing=args.train_missing, model_file=args.model_file)
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
