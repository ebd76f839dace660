"""Import all of RobustBench's Linf/L2 model_info files as a new user would, and check the boards against RobustBench.

    python benchmarks/robustbench_import_check.py --robustbench-src path/to/robustbench   # a checkout: model_info/...

Runs `karp-robust leaderboard add-external` on every model_info/<dataset>/<Linf|L2>/*.json file and
`leaderboard publish` into a scratch directory (a temporary KARP_HOME: your store is not touched), then checks:
- one entry per file (no two models merged into one entry), each named by its model id;
- each board's order equals RobustBench's own ranking (robustbench/leaderboard/template.py: by `external`
  where a file has it, else `autoattack_acc`, descending), and each robust accuracy is that key;
- `leaderboard export` of every entry gives back, read RobustBench's way, the same clean accuracy,
  AutoAttack accuracy and ranking key as the original file.
Exits 1 when a check fails. Ties in RobustBench's key are reported: RobustBench's order among them is its
directory listing's, ours the clean accuracy's; a position may hold another model only within a tie.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

from tabulate import tabulate

from robustbench_karp.boards.published import load_published
from robustbench_karp.boards.robustbench_export import THREAT_DIRS, export_robustbench
from robustbench_karp.cli import main as karp


def robustbench_reads(data: dict) -> tuple[float, float, float]:
    """(clean, AutoAttack, ranking key) as RobustBench's template.py and utils.py read a model_info dict."""
    key = data["external"] if "external" in data else data["autoattack_acc"]
    return float(data["clean_acc"]), float(data["autoattack_acc"]), float(key)


def run_cli(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = karp(list(args))
    if code != 0:
        sys.exit(f"karp-robust {' '.join(args[:2])} failed with exit code {code}")
    return out.getvalue()


def check_board(board: str, files: list[Path], entries: list[dict]) -> tuple[list, list[str]]:
    """(a table row, failures) for one RobustBench board: its files and our entries on it, in our rank order."""
    failures = []
    originals = {p.stem: json.loads(p.read_text()) for p in files}
    ours = [e["model_id"] for e in entries]
    if sorted(ours) != sorted(originals) or len(set(ours)) != len(ours):
        failures.append(f"{board}: entries {len(entries)} for {len(files)} files")
    keys = [robustbench_reads(originals[m])[2] for m in ours if m in originals]
    # RobustBench's own order: a stable sort of its directory listing (sorted here) by the key, descending.
    theirs = sorted(sorted(originals), key=lambda m: -robustbench_reads(originals[m])[2])
    if keys != sorted(keys, reverse=True):
        failures.append(f"{board}: order differs from RobustBench's ranking")
    wrong = [e["model_id"] for e in entries
             if round(100 * e["robust_accuracy"], 2) != robustbench_reads(originals[e["model_id"]])[2]]
    failures += [f"{board}: {m}: robust accuracy is not RobustBench's ranking key" for m in wrong]
    for e in entries:
        exported = robustbench_reads(export_robustbench(e)[0])
        if exported != robustbench_reads(originals[e["model_id"]]):
            failures.append(f"{board}: {e['model_id']}: export reads back {exported}")
    ties = len(keys) - len(set(keys))
    same_order = sum(a == b for a, b in zip(ours, theirs))
    key = {m: robustbench_reads(data)[2] for m, data in originals.items()}
    if any(key[a] != key[b] for a, b in zip(ours, theirs)):  # a different model at a position: only among ties
        failures.append(f"{board}: a model sits where template.py puts one with another key")
    boards_eps = sorted({e["eps_label"] for e in entries})
    return [board, len(files), len(entries), len(files) - len(set(ours)), ", ".join(boards_eps),
            "yes" if keys == sorted(keys, reverse=True) else "NO", ties, f"{same_order}/{len(ours)}",
            len(entries) - len(wrong), sum(1 for e in entries if e["flags"]), sum(1 for e in entries if e["notes"])], failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robustbench-src", type=Path, required=True, help="a RobustBench checkout (holds model_info/)")
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    files = sorted(p for p in (args.robustbench_src / "model_info").glob("*/*/*.json") if p.parent.name in ("Linf", "L2"))
    if not files:
        sys.exit(f"no model_info/<dataset>/<Linf|L2>/*.json under {args.robustbench_src}")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        os.environ["KARP_HOME"] = str(work / "karp-home")
        run_cli("leaderboard", "add-external", *map(str, files))
        run_cli("leaderboard", "add-external", *map(str, files))  # a re-import replaces, never adds a row
        run_cli("leaderboard", "publish", "--out", str(work / "site"))
        entries = load_published(work / "site")
        order = (work / "site" / "results.csv").read_text().splitlines()[1:]  # the site's rank order
        position = {line.split(",", 1)[0]: i for i, line in enumerate(order)}
        ranked = sorted(entries, key=lambda e: position[e["entry_id"]])
    rows, failures = [], []
    for dataset_dir in sorted({p.parent.parent for p in files}):
        for threat in ("Linf", "L2"):
            board_files = [p for p in files if p.parent == dataset_dir / threat]
            if board_files:
                on_board = [e for e in ranked if e["dataset"] == dataset_dir.name and THREAT_DIRS[e["norm"]] == threat]
                row, failed = check_board(f"{dataset_dir.name}/{threat}", board_files, on_board)
                rows.append(row)
                failures += failed
    rows.append(["total", len(files), len(entries), sum(r[3] for r in rows), "", "", sum(r[6] for r in rows), "",
                 sum(r[8] for r in rows), sum(r[9] for r in rows), sum(r[10] for r in rows)])
    print(tabulate(rows, headers=["RobustBench board", "files", "entries", "merged", "our eps board(s)",
                                  "order = RobustBench's", "tied keys", "same model at each position as template.py (ties aside)",
                                  "robust = min(AA, external)", "flagged", "with notes"], tablefmt="github"))
    for failure in failures:
        print(f"FAIL {failure}")
    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
