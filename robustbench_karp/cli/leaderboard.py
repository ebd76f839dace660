"""`karp-robust leaderboard build | publish | add-external | export`: the site from the store, RobustBench in and out,
and figures from papers in."""

from __future__ import annotations

import datetime
import difflib
import json
import re
import sys
from pathlib import Path

from robustbench_karp.store import (
    ResultsStore,
    atomic_write_text,
    deleted_ids,
    file_sha256,
    read_records,
    resolve_path,
    stored_copy,
)
from robustbench_karp.store.records import defense_name


def checkpoint_ok(record: dict) -> bool:
    """reproducible: yes means the record's checkpoint is here and holds its weights (the file it was evaluated
    from, by sha256), and for a model file the store's copy of the module is here too."""
    path = resolve_path(record["checkpoint"]) if record.get("checkpoint") else None
    if path is None or not path.is_file() or file_sha256(path) != record.get("checkpoint_sha256"):
        return False
    source = record["config"].get("source") or {}
    return source.get("kind") != "file" or stored_copy("models", source.get("sha256", ""), source.get("file", "")) is not None


def entries_of(records: list[dict]) -> list[dict]:
    """Leaderboard entries (their flags include the cross-record check: a multi-step attack weaker than a single-step one)."""
    from robustbench_karp.boards.entries import build_entries

    return build_entries(records, checkpoint_ok=checkpoint_ok)


def default_site() -> Path | None:
    """The repository's top-level leaderboard/ when running from a source checkout."""
    candidate = Path(__file__).resolve().parents[2] / "leaderboard"
    return candidate if candidate.is_dir() else None


def cmd_leaderboard(args) -> int:
    actions = {"add-external": _add_external, "export": _export, "build": _build, "publish": _build, "verify": _verify}
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


PAPER_FLAGS = {"model": "--paper", "link": "--link", "clean": "--clean", "robust": "--robust", "attack": "--attack",
               "dataset": "--dataset", "norm": "--norm", "eps": "--eps", "n_examples": "--n-examples",
               "architecture": "--architecture", "venue": "--venue", "source": "--source"}


def paper_figure(args) -> dict:
    """The figure `add-external --paper NAME ...` describes; every required flag named when missing."""
    from robustbench_karp.boards.paper_import import REQUIRED

    values = {"model": args.paper, **{field: getattr(args, field, None) for field in PAPER_FLAGS if field != "model"}}
    missing = [PAPER_FLAGS[field] for field in REQUIRED if values.get(field) in (None, "")]
    if missing:
        usage = " ".join(f"{PAPER_FLAGS[field]} ..." for field in REQUIRED)
        raise ValueError(f"add-external --paper needs {', '.join(missing)} (a paper's figure: {usage})")
    return {field: value for field, value in values.items() if value is not None}


def _add_paper(args, now: str) -> int:
    from robustbench_karp.boards.format import eps_label, fraction
    from robustbench_karp.boards.paper_import import import_paper

    record = import_paper(paper_figure(args), imported_utc=now)
    ResultsStore().append(record)
    config = record["config"]
    print(f"added published figure {record['model_id']} ({config['dataset']} {config['norm']} eps "
          f"{eps_label(config['eps'])}: clean {fraction(record['clean_accuracy'])}, robust "
          f"{fraction(record['robust_accuracy'])} under {config['attacks'][0]['name']}"
          + ("" if record["ranks_beside_protocols"] else "; not AutoAttack, so an upper bound, with the partial rows")
          + "); `karp-robust leaderboard build` publishes it")
    return 0


def _add_external(args) -> int:
    """Import RobustBench model_info files, or one figure from a paper; all are checked before any is stored."""
    from robustbench_karp.boards.format import eps_label, fraction
    from robustbench_karp.boards.robustbench_import import import_robustbench

    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    if getattr(args, "paper", None) is not None:
        if args.files:
            raise ValueError("add-external: give model_info FILE(s) or --paper NAME, not both")
        return _add_paper(args, now)
    if not args.files:
        raise ValueError("add-external: give RobustBench model_info FILE(s), or a paper's figure: --paper NAME --link "
                         "URL --clean PCT --robust PCT --attack NAME --dataset D --norm N --eps EPS")
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
        print(f"imported external entry {record['model_id']} ({record['config']['dataset']} {record['config']['norm']} "
              f"eps {eps_label(record['config']['eps'])}: clean {fraction(record['clean_accuracy'])}, robust "
              f"{fraction(record['robust_accuracy'])} from {record['robust_source']})")
        for warning in record["warnings"]:
            print(f"warning: {record['model_id']}: {warning}", file=sys.stderr)
    return 0


def _find_entry(entry_id: str, site: Path | None) -> dict:
    """The entry of this id built from the store, else the one published in site."""
    from robustbench_karp.boards.published import load_published
    from robustbench_karp.boards.verify import record_problems

    entries = entries_of([r for r in read_records() if not record_problems(r)])  # what a build would publish
    entries += load_published(site) if site is not None else []
    for entry in entries:
        if entry["entry_id"] == entry_id:
            return entry
    raise ValueError(f"unknown entry id {entry_id!r} (looked in the store and in {site or 'no site'}); "
                     f"closest: {closest_ids(entry_id, sorted({e['entry_id'] for e in entries}))}")


def _export(args) -> int:
    from robustbench_karp.boards.robustbench_export import export_robustbench

    entry = _find_entry(args.id, args.site or default_site())
    if entry["status"] != "ranked":
        raise ValueError(f"entry {args.id} is partial: its records cover no evaluation protocol on the same test "
                         "points, so it has no number RobustBench would rank (run it with --protocol standard)")
    info, where = export_robustbench(entry)
    text = json.dumps(info, indent=2) + "\n"
    if args.out is None:
        print(text, end="")
    else:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    print(f"submit it to RobustBench as {where}", file=sys.stderr)
    return 0


def _build(args) -> int:
    """Re-derive every entry from records: this store's, and those the site already publishes (kept unless --prune)."""
    from robustbench_karp.boards.published import load_published, rederive
    from robustbench_karp.boards.site import render_site
    from robustbench_karp.boards.verify import record_problems

    out = args.out or default_site()
    if out is None:
        raise ValueError("not in a source checkout: pass --out DIR")

    def asked(board: dict) -> bool:  # an entry, or a record's config with its defense's name
        return ((args.dataset is None or board["dataset"] == args.dataset)
                and (args.norm is None or board["norm"] == args.norm)
                and (args.eps is None or any(abs(float(board["eps"]) - e) <= 1e-6 * max(e, 1e-3) for e in args.eps))
                and (args.model is None or board["model"] == args.model)
                and (args.defense is None or board["defense"] == args.defense))

    left_out: dict[str, str] = {}

    def derivable(record: dict) -> bool:  # nothing is published that `verify` could not re-derive
        problems = record_problems(record)
        if problems:
            left_out[record["id"]] = problems[-1]
        return not problems

    records = [r for r in read_records() if asked({**r["config"], "defense": defense_name(r)}) and derivable(r)]
    gone = set(deleted_ids())  # `records delete` was asked to take these off the site too
    shown = load_published(Path(out))
    published = [{**e, "records": [r for r in e["records"] if r["id"] not in gone and derivable(r)]} for e in shown]
    published = [e for e in published if e["records"]]
    if left_out:
        print(f"left out {len(left_out)} record(s) whose numbers cannot be re-derived, e.g. "
              f"{next(iter(left_out.values()))}: re-run them (karp-robust reproduce ID)", file=sys.stderr)
    keep = (lambda e: not asked(e)) if args.prune else (lambda e: True)  # a limited build never touches other boards
    entries = rederive(published, records, checkpoint_ok, keep)
    if not entries and shown:
        raise ValueError(f"nothing left to publish in {out}: its records were deleted, pruned or cannot be "
                         "re-derived; remove the folder to take the site down")
    written = render_site(entries, Path(out), examples=example_grids(entries, args.examples) if args.examples else None)
    not_reproducible = sum(1 for e in entries if not e["reproducible"] and not e["external"])
    print(f"wrote {len(written)} files for {len(entries)} entries to {out}"
          + (f" ({not_reproducible} not reproducible: checkpoint missing)" if not_reproducible else ""))
    return 0


def _verify(args) -> int:
    from robustbench_karp.boards.verify import verify_site

    site = args.site or default_site()
    if site is None:
        raise ValueError("not in a source checkout: pass the site's directory")
    problems = verify_site(Path(site))
    for problem in problems:
        print(problem)
    print(f"{site}: {'verified: every entry, record and page re-derives' if not problems else f'{len(problems)} problem(s)'}")
    return 1 if problems else 0


def example_grids(entries: list[dict], folder: Path) -> dict[str, bytes]:
    """entry id -> the PNG grid `evaluate --save-examples` wrote for one of its records: that of the attack that
    broke the most points (a grid of an attack that broke nothing shows unbroken points only)."""
    grids = {}
    for e in entries:
        for record in e.get("records") or []:
            pngs = {p.stem: p for p in (Path(folder) / record["id"]).glob("*.png")}
            order = record.get("attack_order") or []
            after = [record["clean_accuracy"]] + [record["per_attack"].get(name, 0.0) for name in order]
            broke = {re.sub(r"[^A-Za-z0-9._-]", "_", name): before - now for name, before, now in zip(order, after, after[1:])}
            ranked = sorted((n for n in broke if n in pngs), key=lambda n: -broke[n])  # ties: the earlier attack
            chosen = pngs[ranked[0]] if ranked else next(iter(sorted(pngs.values())), None)
            if chosen is not None:
                grids[e["entry_id"]] = chosen.read_bytes()
                break
    return grids


def closest_ids(record_id: str, ids: list[str]) -> str:
    close = [i for i in ids if i.startswith(record_id)] + difflib.get_close_matches(record_id, ids, n=5, cutoff=0.3)
    return ", ".join(dict.fromkeys(close)) or "none"
