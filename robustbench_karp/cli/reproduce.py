"""`karp-robust reproduce ID`: re-run a record (or every record of an entry) and compare every number."""

from __future__ import annotations

from tabulate import tabulate

from robustbench_karp.boards.format import fraction
from robustbench_karp.cli.leaderboard import closest_ids, default_site
from robustbench_karp.data import DataUnavailable
from robustbench_karp.store import CheckpointError, ResultsStore, read_records


def cmd_reproduce(args) -> int:
    from robustbench_karp.reproduce import find_records, rerun

    site = args.site or default_site()
    records = find_records(args.id, site)
    if not records:
        ids = sorted({r["id"] for r in read_records()})
        raise ValueError(f"unknown record or entry id {args.id!r} (looked in the store and in {site or 'no site'}); "
                         f"closest in the store: {closest_ids(args.id, ids)}")
    outcomes: list[tuple[str, str | None]] = []  # (record id, why it was not reproduced; None: it was)
    for record in records:
        try:
            new, notes = rerun(record, device=args.device, data_dir=args.data_dir, download=args.download,
                               train_missing=args.train_missing, model_file=args.model_file)
        except (CheckpointError, DataUnavailable, ValueError) as e:
            if len(records) == 1:
                raise  # one record: its refusal is the command's one-line error
            why = str(e).replace("\n", " ")
            print(f"reproducing {record['id']}: NOT reproduced: {why}")
            outcomes.append((record["id"], why))
            continue
        why = report_reproduction(record, new, notes)
        outcomes.append((record["id"], why))
        if why is None and args.append:
            ResultsStore().append(new)
            print(f"appended the re-run as a new record of {new['id']}")
    if len(outcomes) > 1:
        failed = [(rid, why) for rid, why in outcomes if why is not None]
        print(f"reproduced {len(outcomes) - len(failed)} of {len(outcomes)} records"
              + "".join(f"\n  {rid}: {why}" for rid, why in failed))
    return 0 if all(why is None for _, why in outcomes) else 1


def report_reproduction(old: dict, new: dict, notes: list[str] = ()) -> str | None:
    """Print the comparison; None when every number and mask matched, else why not (one line)."""
    from robustbench_karp.reproduce import GPU_TOLERANCE, differences, why_not

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
            shown = [fraction(before), fraction(now), "exact match" if diff == 0 else f"{diff:+.4f}"]
        else:
            shown = [before, now, "exact match" if good else "differs"]
        table.append([name, *shown, "ok" if good else "MISMATCH"])
    print(tabulate(table, headers=["quantity", "recorded", "now", "difference", ""], tablefmt="github"))
    why = None if all(good for *_, good in rows) else why_not(old, new, notes)
    print("reproduced" if why is None else f"NOT reproduced: {why} (nothing was written to the store)")
    return why
