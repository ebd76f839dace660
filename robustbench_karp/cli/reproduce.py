"""`karp-robust reproduce ID`: re-run a record (or every record of an entry) and compare every number.

Exact reproduction is the first check. Retrained weights that differ from the recorded ones (another
processor) are evaluated anyway, and the row counts as "statistically reproduced (other weights)" when
clean and robust accuracy agree within their 95% intervals (reproduce.agreement), else "NOT reproduced".
Missing data is said once per dataset, not once per record; progress shows as `evaluate`'s does.
"""

from __future__ import annotations

import sys

from tabulate import tabulate
from tqdm import tqdm

from robustbench_karp.boards.format import fraction
from robustbench_karp.cli.leaderboard import closest_ids, default_site
from robustbench_karp.cli.progress import EvalProgress, TqdmTraining
from robustbench_karp.data import DataUnavailable
from robustbench_karp.store import CheckpointError, ResultsStore, read_records

EXACT, STATISTICAL = "reproduced", "statistically reproduced (other weights)"


def cmd_reproduce(args) -> int:
    from robustbench_karp.reproduce import find_records

    site = args.site or default_site()
    records = find_records(args.id, site)
    if not records:
        ids = sorted({r["id"] for r in read_records()})
        raise ValueError(f"unknown record or entry id {args.id!r} (looked in the store and in {site or 'no site'}); "
                         f"closest in the store: {closest_ids(args.id, ids)}")
    outcomes: list[tuple[str, str, str | None]] = []  # (record id, verdict, why it was not reproduced exactly)
    no_data: dict[str, str] = {}  # dataset -> why its data is missing: said once, never downloaded again
    for record in records:
        dataset = record["config"]["dataset"]
        if dataset in no_data:
            print(f"reproducing {record['id']}: NOT reproduced: no {dataset} data (see above)")
            outcomes.append((record["id"], "NOT reproduced", f"no {dataset} data"))
            continue
        try:
            new, notes = _rerun(record, args)
        except (CheckpointError, DataUnavailable, ValueError) as e:
            if len(records) == 1:
                raise  # one record: its refusal is the command's one-line error
            why = str(e).replace("\n", " ")
            if isinstance(e, DataUnavailable):
                no_data[dataset] = why
            print(f"reproducing {record['id']}: NOT reproduced: {why}")
            outcomes.append((record["id"], "NOT reproduced", why))
            continue
        verdict, why = report_reproduction(record, new, notes)
        outcomes.append((record["id"], verdict, why))
        if verdict == EXACT and args.append:
            ResultsStore().append(new)
            print(f"appended the re-run as a new record of {new['id']}")
    if len(outcomes) > 1:
        print(summary(outcomes))
    return 0 if all(verdict in (EXACT, STATISTICAL) for _, verdict, _ in outcomes) else 1


def _rerun(record: dict, args):
    """reproduce.rerun with the CLI's progress: evaluate's line every 10 s off a terminal, and a retraining's
    estimate first, corrected as it runs."""
    from robustbench_karp.reproduce import rerun
    from robustbench_karp.training.estimate import TrainingClock

    clock = TrainingClock(say=lambda line: tqdm.write(line, file=sys.stderr), tty=sys.stderr.isatty())
    with EvalProgress() as progress:
        return rerun(record, device=args.device, data_dir=args.data_dir, download=args.download,
                     train_missing=args.train_missing, model_file=args.model_file, progress=progress,
                     train_callbacks=[TqdmTraining(), clock])


def summary(outcomes: list[tuple[str, str, str | None]]) -> str:
    """'reproduced 2 of 3 records (1 exactly, 1 statistically with other weights)' and one line per failure."""
    exact = sum(verdict == EXACT for _, verdict, _ in outcomes)
    statistical = sum(verdict == STATISTICAL for _, verdict, _ in outcomes)
    how = f" ({exact} exactly, {statistical} statistically with other weights)" if statistical else ""
    failed = [(rid, why) for rid, verdict, why in outcomes if verdict not in (EXACT, STATISTICAL)]
    return (f"reproduced {exact + statistical} of {len(outcomes)} records{how}"
            + "".join(f"\n  {rid}: {why}" for rid, why in failed))


def report_reproduction(old: dict, new: dict, notes: list[str] = ()) -> tuple[str, str | None]:
    """Print the comparison; (verdict, why not exactly: None when every number and mask matched)."""
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
    other = any("weights differ" in n for n in notes)  # never bit-exact, even where an old record has no id row
    why = None if all(good for *_, good in rows) and not other else why_not(old, new, notes)
    if why is None:
        print(EXACT)
        return EXACT, None
    if other:
        return statistical_verdict(old, new, why)
    print(f"NOT reproduced: {why} (nothing was written to the store)")
    return "NOT reproduced", why


def statistical_verdict(old: dict, new: dict, why: str) -> tuple[str, str]:
    """Other weights: whether clean and robust accuracy agree within their 95% intervals, printed and returned."""
    from robustbench_karp.reproduce import agreement

    rows = agreement(old, new)
    print(f"not bit-exact: {why}; judged statistically instead (two-proportion z-test at 95%, the two runs "
          "taken as independent samples):")
    print(tabulate([[name, fraction(a), fraction(b), f"{b - a:+.4f}", f"±{half:.4f}", "agrees" if ok else "DIFFERS"]
                    for name, a, b, half, ok in rows],
                   headers=["accuracy", "recorded", "now", "difference", "95% interval", ""], tablefmt="github",
                   disable_numparse=True))
    apart = [f"{name} {fraction(a)} vs {fraction(b)} (difference {b - a:+.4f} beyond ±{half:.4f})"
             for name, a, b, half, ok in rows if not ok]
    if not apart:
        print(f"{STATISTICAL}: clean and robust accuracy agree within their 95% intervals (nothing was written "
              "to the store)")
        return STATISTICAL, f"other weights; {', '.join(name for name, *_ in rows)} agree within 95%"
    line = f"other weights, and {'; '.join(apart)}"
    print(f"NOT reproduced: {line} (nothing was written to the store)")
    return "NOT reproduced", line
