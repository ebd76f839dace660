"""The leaderboard site: ranked entries -> entries/*.json, README.md, results.csv, index.html, curves/*.png.

    render_site(build_entries(records, checkpoint_exists=lambda p: Path(p).is_file()), Path("leaderboard"))

A pure function of the entries (leaderboard.build_entries): same entries in, byte-identical files out.
The tables come from tables.py, the page from html.py, the curve figures from curves.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from robustbench_karp.boards.entries import CSV_COLUMNS, curves, rank_key
from robustbench_karp.boards.format import slug
from robustbench_karp.boards.html import render_html
from robustbench_karp.boards.tables import COLUMNS, PAGE_COLUMNS, boards
from robustbench_karp.store import atomic_write_bytes

INTRO = [
    "Generated from evaluation records by a pure function (`robustbench_karp.boards.site.render_site`); "
    "do not edit by hand.",
    "Regenerate a board with the command shown under its title, e.g. "
    "`karp-robust leaderboard build --dataset mnist --norm linf --eps 0.3` (a build limited to some boards keeps "
    "every other published board); `benchmarks/mnist_leaderboard.sh` retrains and re-evaluates every published "
    "MNIST entry from scratch.",
    "Re-run a row with `karp-robust reproduce <record or entry id>`, from a clone of this repository: it re-runs the "
    "stored evaluation config and compares every number and mask; each entry's record ids are in `entries/<entry id>.json`. "
    "The match is bit-exact with the record's thread count on the processor it ran on (newer records name the "
    "processor, older ones only its vector capability). The checkpoints "
    "are not in this repository: `--train-missing` retrains one by its recorded recipe, and the retrained weights "
    "equal the recorded ones only on that processor. Elsewhere `reproduce` evaluates the other weights anyway and says "
    "'statistically reproduced (other weights)' when clean and robust accuracy agree within their 95% intervals "
    "(a two-proportion test), else 'NOT reproduced'.",
    "Robust accuracy is the per-example worst case over every attack run on the entry, never the best attack; "
    "brackets are 95% Wilson intervals. A flag is a warning from the sanity checks (e.g. gradient masking), shown as "
    "a short code (F1, F2, ...) spelled out under its table.",
    "Imported RobustBench entries are external: their model id, paper, venue, extra training data and forward passes "
    "come from RobustBench's `model_info`, and their robust accuracy is the lower of its AutoAttack and best-known "
    "(`external`) figures, as RobustBench ranks them.",
    "Cost: gradient evaluations per test point (backward passes through the model, counted by the engine, over every "
    "attack run on the entry) and the evaluations' wall time on their device; '-' where a record predates the counts.",
    "Only entries whose records cover an evaluation protocol (`standard/1`: AutoAttack standard, plus the defense's "
    "adaptive attacks; `standard/2` adds certification first and, for a purifier, a plain PGD probe; `standard/3` "
    "runs the `strong` cascade in AutoAttack's place) on the same test points are ranked, together, by robust "
    "accuracy; partial evaluations sit in their own table, unranked: their robust "
    "accuracy is an upper bound.",
    "Certified % is a proven lower bound (CROWN-IBP or IBP, on the same test points): certified <= true robust <= "
    "robust %, and the gap is how much a stronger attack could still find. Adversarially trained models (PGD-AT, "
    "TRADES, MART, FGSM-AT) certify little at MNIST eps 0.3: bound propagation is loose on networks not trained for "
    "it, so their bracket stays wide; a model trained for certification (ibp) closes it. That is the point of the "
    "bracket: the attacks' number alone cannot say which case a row is.",
    "Every published number re-derives from the records in `entries/` (`karp-robust leaderboard verify`); records "
    "made before per-example masks cannot, and are not published.",
]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(tables: list[dict[str, Any]], figures: list[tuple[str, str, bytes]], history: str = "") -> str:
    """README.md: the intro, every board, the curves, and the site's hand-written HISTORY.md (rows re-run, dropped)."""
    lines = ["# karp-robust leaderboard", ""] + [f"- {line}" for line in INTRO]
    for board in tables:
        rows = [[_md_cell(f"[{text}]({row['link']})" if name == "defense" and row["link"] else text)
                 for (text, _), (name, _) in zip(row["cells"], COLUMNS)] for row in board["rows"]]
        table = tabulate(rows, headers=[name for name, _ in COLUMNS], tablefmt="github", disable_numparse=True)
        lines += ["", f"## {board['title']}", "", f"`{board['command']}`", "", table, "", board["separation"]]
        if board["legend"]:
            lines += [""] + [f"- {_md_cell(code)}: {_md_cell(text)}" for code, text in board["legend"]]
        if board["notes"]:
            lines += [""] + [f"- Note {_md_cell(note)}" for note in board["notes"]]
    lines += ["", "## Robustness curves", ""] + [f"![{alt}]({path})" for path, alt, _ in figures]
    if history.strip():
        lines += ["", "## History of these boards (HISTORY.md)", "", history.strip()]
    return "\n".join(lines) + "\n"


def render_csv(entries: list[dict[str, Any]]) -> str:
    rows = [{**{c: e.get(c) for c in CSV_COLUMNS}, "protocols": "; ".join(e.get("protocols") or []),
             "clean_ci_low": e["clean_ci"][0], "clean_ci_high": e["clean_ci"][1],
             "robust_ci_low": e["robust_ci"][0], "robust_ci_high": e["robust_ci"][1],
             "certified_ci_low": (e.get("certified_ci") or [None, None])[0],
             "certified_ci_high": (e.get("certified_ci") or [None, None])[1],
             "certification": "; ".join(e.get("certification") or []) or None,
             "attacks": "; ".join(e["attacks"]), "seeds": "; ".join(map(str, e["seeds"])), "flags": "; ".join(e["flags"]),
             "reproducible": e["reproducibility"], "record_ids": "; ".join(e["record_ids"]),
             "forward_passes": str(e["forward_passes"]) if e.get("forward_passes") else None,  # not 1.000000
             **_csv_cost(e.get("cost"))}
            for e in sorted(entries, key=rank_key)]
    return pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(index=False, float_format="%.6f", lineterminator="\n")


def _csv_cost(cost: dict[str, Any] | None) -> dict[str, Any]:
    if not cost:
        return {}
    return {"grad_evals_per_point": cost["backward_per_point"], "forward_passes_per_point": cost["forward_per_point"],
            "wall_seconds": cost["wall_seconds"], "devices": "; ".join(cost["devices"])}  # None: not counted


def figures(entries: list[dict[str, Any]]) -> list[tuple[str, str, bytes]]:
    """(relative path, alt text, PNG bytes): one robustness-curve figure per (dataset, norm)."""
    from robustbench_karp.boards.curves import curve_png  # here: matplotlib only where a curve is drawn

    per_figure: dict[tuple[str, str], dict[str, list[tuple[float, float]]]] = {}
    for (dataset, norm, label), points in curves(entries).items():
        per_figure.setdefault((dataset, norm), {})[label] = points
    out = []
    for (dataset, norm), lines in per_figure.items():
        alt = f"Robustness curves on {dataset} ({norm}): robust accuracy against eps, one line per model and defense"
        out.append((f"curves/{slug(dataset)}-{slug(norm)}.png", alt, curve_png(f"{dataset} ({norm})", lines)))
    return out


def render_site(entries: list[dict[str, Any]], out_dir: Path, examples: dict[str, bytes] | None = None) -> list[Path]:
    """Write the leaderboard site into out_dir and return the paths written.

    entries/<entry_id>.json, README.md (tabulate), results.csv (pandas), index.html (self-contained)
    and curves/<dataset>-<norm>.png. Output is a pure function of entries (byte-identical on re-run).
    Files of an earlier build that this one does not write (entries/*.json, curves/*.png) are
    removed after the new files are in place, so entries/ is exactly the published set.
    """
    files = site_files(entries, Path(out_dir), examples)
    written = []
    for rel, content in files.items():
        atomic_write_bytes(Path(out_dir) / rel, lambda f, c=content: f.write(c))
        written.append(Path(out_dir) / rel)
    for pattern in ("entries/*.json", "curves/*.png", "examples/*.png"):
        for stale in set(Path(out_dir).glob(pattern)) - set(written):
            stale.unlink()
    return written


def site_files(entries: list[dict[str, Any]], out_dir: Path, examples: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """The site's files (relative path -> bytes) for entries; out_dir only lends the examples already published."""
    if not entries:
        raise ValueError("no entries to publish: run `karp-robust evaluate` or `karp-robust compare` first")
    entries = with_examples(entries, Path(out_dir), examples or {})
    ids = [e["entry_id"] for e in entries]
    if len(set(ids)) != len(ids):
        raise ValueError("render_site: duplicate entry ids (pass the output of build_entries once)")
    tables, figs = boards(sorted(entries, key=rank_key)), figures(entries)
    files: dict[str, bytes] = {f"entries/{e['entry_id']}.json": (json.dumps(e, sort_keys=True, indent=2) + "\n").encode()
                               for e in sorted(entries, key=lambda e: e["entry_id"])}
    history = Path(out_dir) / "HISTORY.md"  # written by hand, kept by builds: which rows were re-run or dropped
    files["README.md"] = render_markdown(tables, figs, history.read_text() if history.is_file() else "").encode()
    files["results.csv"] = render_csv(entries).encode()
    files["index.html"] = render_html(INTRO, tables, COLUMNS, figs, PAGE_COLUMNS).encode()
    files.update({path: png for path, _, png in figs})
    files.update({e["examples"]: (examples or {}).get(e["entry_id"]) or (Path(out_dir) / e["examples"]).read_bytes()
                  for e in entries if e.get("examples")})
    return files


def with_examples(entries: list[dict[str, Any]], out_dir: Path, examples: dict[str, bytes]) -> list[dict[str, Any]]:
    """Entries with "examples" (examples/<entry id>.png, an `evaluate --save-examples` grid) where one is given
    now or already published in out_dir; without the field elsewhere."""
    out = []
    for e in entries:
        e = {k: v for k, v in e.items() if k != "examples"}
        path = f"examples/{e['entry_id']}.png"
        if e["entry_id"] in examples or (out_dir / path).is_file():
            e["examples"] = path
        out.append(e)
    return out
