"""The leaderboard's tables: one board per (dataset, norm, eps), the rows and legends README.md and index.html share.

    tables = boards(entries)          # entries in rank order (build_entries' order)

Pure functions of the entries: no I/O, no clock, no torch, no matplotlib.
"""

from __future__ import annotations

import shlex
from typing import Any

from robustbench_karp.boards.format import eps_label, slug

COLUMNS = [("rank", "number"), ("model", "text"), ("defense", "text"), ("training", "text"), ("clean % [95% CI]", "number"),
           ("robust % worst case [95% CI]", "number"), ("certified % [95% CI] · gap", "number"), ("protocol", "text"),
           ("attacks run", "text"), ("n", "number"), ("date", "text"), ("extra data", "text"),
           ("forward passes", "number"), ("grad evals / point", "number"), ("wall time", "number"), ("seed", "text"),
           ("flags", "text"), ("reproducible", "text"), ("entry id", "text")]
# index.html shows these (BRACKET: an inline SVG of certified to robust, drawn by html.py); the other columns go into
# each row's expandable detail row (README.md shows all)
BRACKET = "certified → robust"
PAGE_COLUMNS = ("rank", "model", "defense", "clean % [95% CI]", "robust % worst case [95% CI]",
                "certified % [95% CI] · gap", BRACKET, "protocol", "n", "date", "entry id")
BEST_KNOWN_MARK = "\u2020"  # after a robust accuracy that is RobustBench's `external` figure
BEST_KNOWN_LEGEND = ("best known robust accuracy (RobustBench's `external` field: attacks beyond AutoAttack), "
                     "below the entry's AutoAttack figure")


def _percent_ci(accuracy: float, ci: list[float]) -> str:
    return f"{100 * accuracy:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _cost_cells(cost: dict[str, Any] | None) -> list[tuple[str, float | str]]:
    """(gradient evaluations per test point, wall time and device): what the entry's evaluation cost."""
    cost = cost or {}
    grads = cost.get("backward_per_point")
    wall = cost.get("wall_seconds")
    return [(f"{grads:.1f}", grads) if grads is not None else ("-", ""),
            (f"{_duration(wall)} ({', '.join(cost['devices'])})", wall) if wall is not None else ("-", "")]


def _cells(rank: int, e: dict[str, Any], codes: dict[str, str], ranked: bool = True) -> list[tuple[str, float | int | str]]:
    """(shown text, sort value) per column of COLUMNS; an unranked (partial) row shows '–' as its rank.

    codes: the board's short code of each flag ('F1'); the legend under the table spells them out.
    """
    seeds = ", ".join(str(s) for s in e["seeds"]) or "-"
    training = e.get("training") or "-"
    rank_cell = (str(rank), rank) if ranked else ("–", rank)
    protocols = protocol_cell(e)
    model = f"{e['model_id']} ({e['model']})" if e.get("model_id") not in (None, e["model"]) else e["model"]
    defense = f"{e['defense']} · {e['venue']}" if e.get("venue") else e["defense"]
    robust = _percent_ci(e["robust_accuracy"], e["robust_ci"])
    robust += f" {BEST_KNOWN_MARK}" if e.get("robust_source") == "external" else ""
    proven = e.get("certified_accuracy")  # the bracket: proven <= true robust <= attacked; its gap in points
    certified = ("-", "") if proven is None else (
        f"{_percent_ci(proven, e['certified_ci'])} · {100 * (e['robust_accuracy'] - proven):.1f}", proven)
    extra = {True: "yes", False: "no"}.get(e.get("additional_data"), "-")
    passes = e.get("forward_passes")
    date = entry_date(e)
    return [rank_cell, (model, model), (defense, defense), (training, training),
            (_percent_ci(e["clean_accuracy"], e["clean_ci"]), e["clean_accuracy"]), (robust, e["robust_accuracy"]),
            certified, (protocols, protocols), (", ".join(e["attacks"]), ", ".join(e["attacks"])), (str(e["n"]), e["n"]),
            (date or "-", date), (extra, extra), (str(passes), passes) if passes else ("-", ""),
            *_cost_cells(e.get("cost")), (seeds, seeds),
            (", ".join(codes[f] for f in e["flags"]), "; ".join(e["flags"])),
            (e["reproducibility"], e["reproducibility"]), (e["entry_id"], e["entry_id"])]


def entry_date(e: dict[str, Any]) -> str:
    """The day of the entry's newest counted record (its evaluation, or the import of a published figure), 'YYYY-MM-DD';
    '' where no record says."""
    counted = set(e.get("record_ids") or [])
    days = [str(r.get("created_utc"))[:10] for r in e.get("records") or [] if r.get("id") in counted
            and str(r.get("created_utc") or "unknown") != "unknown"]
    return max(days, default="")


def _web_link(e: dict[str, Any]) -> str | None:
    """An imported entry's paper link, if it is an http(s) URL (never a javascript: one from a foreign file)."""
    link = e.get("link")
    return link if isinstance(link, str) and link.startswith(("https://", "http://")) else None


def flag_codes(entries: list[dict[str, Any]]) -> dict[str, str]:
    """flag -> short code: F1, F2, ... in order of first appearance on the page, the same code on every board."""
    flags = dict.fromkeys(f for e in entries for f in e["flags"])
    return {flag: f"F{i}" for i, flag in enumerate(flags, start=1)}


def _legend(ranked: list[dict[str, Any]], codes: dict[str, str]) -> list[tuple[str, str]]:
    """[(code, full text)] of the codes a board's rows use, in code order."""
    used = {f for e in ranked for f in e["flags"]}
    legend = [(code, flag) for flag, code in codes.items() if flag in used]
    if any(e.get("robust_source") == "external" for e in ranked):
        legend.append((BEST_KNOWN_MARK, BEST_KNOWN_LEGEND))
    return legend


def _separation(ranked: list[dict[str, Any]]) -> str:
    """Which adjacent ranks are not statistically separated (overlapping 95% CIs of robust accuracy)."""
    if len(ranked) < 2:
        return "A single entry: nothing to separate."
    pairs = [f"#{i + 1} and #{i + 2}" for i, (a, b) in enumerate(zip(ranked, ranked[1:]))
             if a["robust_ci"][0] <= b["robust_ci"][1] and b["robust_ci"][0] <= a["robust_ci"][1]]
    if not pairs:
        return "Every pair of adjacent entries is statistically separated (95% CIs of robust accuracy do not overlap)."
    return f"Not statistically separated (95% CIs of robust accuracy overlap): {'; '.join(pairs)}."


def protocol_cell(e: dict[str, Any]) -> str:
    """Which protocol ran and who evaluated it: 'standard/2 · karp-robust', 'AutoAttack · robustbench', or '-'.

    Of one protocol's versions only the newest the entry covers is shown (a standard/2 run covers standard/1).
    """
    if e.get("external") and e.get("tool") == "paper":  # the attack the paper's figure names, as published
        return f"{', '.join(e['attacks'])} · published"
    if e.get("external"):
        return f"AutoAttack · {e.get('evaluated_by') or e.get('tool') or 'external'}"
    if not e.get("protocols") and e.get("protocol_coverage"):  # a protocol ran, on some of the entry's points
        return "; ".join(f"{label} on {k} of {e['n']} points" for label, k in sorted(e["protocol_coverage"].items()))
    newest: dict[str, str] = {}
    for label in e.get("protocols") or []:
        name, _, version = label.partition("/")
        if name not in newest or int(version or 0) > int(newest[name].partition("/")[2] or 0):
            newest[name] = label
    return ", ".join(f"{label} · karp-robust" for label in newest.values()) or "-"


def _tier(e: dict[str, Any]) -> str:
    if e["eps"] == 0:
        return "clean"
    return "partial" if e.get("status", "partial") == "partial" else "ranked"


def boards(ranked_entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tables of the site: entries, given in rank order (build_entries' order), grouped by (dataset, norm, eps).

    A board at eps > 0 has two tables: the entries whose records cover an evaluation protocol,
    ranked, and the partial evaluations (upper bounds), unranked, below them.
    """
    grouped: dict[tuple[str, str, float, str], list[dict[str, Any]]] = {}
    for e in ranked_entries:
        grouped.setdefault((e["dataset"], e["norm"], e["eps"], _tier(e)), []).append(e)
    out, codes = [], flag_codes([e for ranked in grouped.values() for e in ranked])
    for (dataset, norm, eps, tier), ranked in grouped.items():
        label = eps_label(eps)
        key = f"{slug(dataset)}-{slug(norm)}-{slug(label)}" + ("-partial" if tier == "partial" else "")
        heading = f"{dataset} · {norm} · ε = {label}"
        subtitle = {"clean": "clean accuracy only", "ranked": "ranked (evaluation protocol run)",
                    "partial": "partial evaluations (no protocol run: robust accuracy is an upper bound, not ranked)"}[tier]
        title = f"{heading} ({subtitle})" if tier == "clean" else f"{heading} · {subtitle}"
        legend = _legend(ranked, codes)
        rows = [{"entry_id": e["entry_id"], "flags": e["flags"], "reproducibility": e["reproducibility"],
                 "link": _web_link(e), "examples": e.get("examples"), "notes": e["notes"],
                 "codes": [codes[f] for f in e["flags"]],
                 "bracket": (e.get("certified_accuracy"), e["robust_accuracy"]),  # certified <= true robust <= robust
                 "cells": _cells(rank, e, codes, ranked=tier != "partial")}
                for rank, e in enumerate(ranked, start=1)]
        out.append({
            "id": f"board-{key}", "table_id": f"table-{key}", "dataset": dataset, "norm": norm, "eps": eps, "tier": tier,
            "title": title, "heading": f"{heading} · {tier}", "subtitle": subtitle,
            "command": shlex.join(["karp-robust", "leaderboard", "build", "--dataset", dataset, "--norm", norm,
                                   "--eps", label]),
            "rows": rows, "legend": legend, "separation": _separation(ranked) if tier != "partial" else
            "Partial evaluations are not ranked: run `karp-robust evaluate --protocol standard` on them.",
            "notes": [f"{e['entry_id']}: {note}" for e in ranked for note in e["notes"]],
        })
    return out
