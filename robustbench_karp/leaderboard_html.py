"""The rendered views of the leaderboard: its tables, the robustness-curve PNGs and the static page.

index.html is self-contained: inline CSS and JS, figures as data: URIs, no external URL, no fetch,
so it works from file:// with no server and no network. Clicking a column header sorts the table
(numbers numerically; a second click reverses). Everything here is a pure function of its input:
PNGs come from matplotlib's Agg canvas with the default style and no Software metadata.
"""

from __future__ import annotations

import base64
import html
import io
import re
import struct
from typing import Any

import matplotlib.style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

COLUMNS = [("rank", "number"), ("model", "text"), ("defense", "text"), ("training", "text"), ("clean % [95% CI]", "number"),
           ("robust % worst case [95% CI]", "number"), ("protocol", "text"), ("attacks run", "text"), ("n", "number"),
           ("extra data", "text"), ("forward passes", "number"), ("grad evals / point", "number"),
           ("wall time", "number"), ("seed", "text"), ("flags", "text"),
           ("reproducible", "text"), ("entry id", "text")]
BEST_KNOWN_MARK = "\u2020"  # after a robust accuracy that is RobustBench's `external` figure
BEST_KNOWN_LEGEND = ("best known robust accuracy (RobustBench's `external` field: attacks beyond AutoAttack), "
                     "below the entry's AutoAttack figure")
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
MARKERS = "osD^v<>ph*"
FIGSIZE, DPI = (9.6, 4.0), 100  # 960 x 400 pixels at most 14 lines; taller with more
AXES_RECT = (0.07, 0.12, 0.55, 0.78)  # left, bottom, width, height: the right part holds the legend


def slug(text: str) -> str:
    """A file- and id-safe form of text: 'CIFAR-10' -> 'cifar-10', '8/255' -> '8-255', '0.3' -> '0-3'."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def eps_label(eps: float) -> str:
    """eps as people write it: '0.3', or '8/255' when it is a whole number of 8-bit pixel steps."""
    short = f"{eps:g}"
    if float(short) == eps:
        return short
    steps = round(eps * 255)
    return f"{steps}/255" if steps / 255 == eps else f"{eps:.6g}"


# --- tables: one board per (dataset, norm, eps), shared by README.md and index.html ------------------

def _percent_ci(accuracy: float, ci: list[float]) -> str:
    return f"{100 * accuracy:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


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
    protocols = ", ".join(e.get("protocols") or []) or "-"
    model = f"{e['model_id']} ({e['model']})" if e.get("model_id") else e["model"]
    defense = f"{e['defense']} · {e['venue']}" if e.get("venue") else e["defense"]
    robust = _percent_ci(e["robust_accuracy"], e["robust_ci"])
    robust += f" {BEST_KNOWN_MARK}" if e.get("robust_source") == "external" else ""
    extra = {True: "yes", False: "no"}.get(e.get("additional_data"), "-")
    passes = e.get("forward_passes")
    return [rank_cell, (model, model), (defense, defense), (training, training),
            (_percent_ci(e["clean_accuracy"], e["clean_ci"]), e["clean_accuracy"]), (robust, e["robust_accuracy"]),
            (protocols, protocols), (", ".join(e["attacks"]), ", ".join(e["attacks"])), (str(e["n"]), e["n"]),
            (extra, extra), (str(passes), passes) if passes else ("-", ""), *_cost_cells(e.get("cost")), (seeds, seeds),
            (", ".join(codes[f] for f in e["flags"]), "; ".join(e["flags"])),
            (e["reproducibility"], e["reproducibility"]), (e["entry_id"], e["entry_id"])]


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
        title = f"{dataset} · {norm} · ε = {label}" + {
            "clean": " (clean accuracy only)", "ranked": " · ranked (evaluation protocol run)",
            "partial": " · partial evaluations (no protocol run: robust accuracy is an upper bound, not ranked)"}[tier]
        legend = _legend(ranked, codes)
        rows = [{"entry_id": e["entry_id"], "flags": e["flags"], "reproducibility": e["reproducibility"],
                 "link": _web_link(e), "examples": e.get("examples"),
                 "cells": _cells(rank, e, codes, ranked=tier != "partial")}
                for rank, e in enumerate(ranked, start=1)]
        out.append({
            "id": f"board-{key}", "table_id": f"table-{key}", "dataset": dataset, "norm": norm, "eps": eps, "tier": tier,
            "title": title, "command": f"karp-robust leaderboard build --dataset {dataset} --norm {norm} --eps {label}",
            "rows": rows, "legend": legend, "separation": _separation(ranked) if tier != "partial" else
            "Partial evaluations are not ranked: run `karp-robust evaluate --protocol standard` on them.",
            "notes": [f"{e['entry_id']}: {note}" for e in ranked for note in e["notes"]],
        })
    return out


# --- figures -----------------------------------------------------------------------------------------

def curve_figure(title: str, lines: dict[str, list[tuple[float, float]]]) -> Figure:
    """Robust accuracy (%) against eps, one line per label, the legend right of the axes (never over a curve).

    The figure grows taller past 14 lines so that the legend stays inside it.
    """
    fig = Figure(figsize=(FIGSIZE[0], max(FIGSIZE[1], 0.25 * len(lines) + 0.5)), dpi=DPI)
    FigureCanvasAgg(fig)  # Agg canvas attached to this figure only: pyplot's global state is never touched
    ax = fig.add_axes(AXES_RECT)
    for i, (label, points) in enumerate(lines.items()):
        xs, ys = zip(*points)
        ax.plot(xs, [100 * y for y in ys], color=COLORS[i % len(COLORS)], marker=MARKERS[i % len(MARKERS)],
                label=_short(label, 55))
    ax.set(title=title, xlabel="ε (pixel units, images in [0, 1])", ylabel="robust accuracy (%)", ylim=(0, 100))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return fig


def curve_png(title: str, lines: dict[str, list[tuple[float, float]]]) -> bytes:
    """curve_figure as PNG bytes.

    Deterministic: the default style (a user's matplotlibrc does not leak in), fixed width, dpi, colors
    and markers, and no Software metadata (which carries the matplotlib version).
    """
    with matplotlib.style.context("default"):
        buf = io.BytesIO()
        curve_figure(title, lines).savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    return struct.unpack(">II", png[16:24])


# --- the page -------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; color: #222; }
div.scroll { overflow-x: auto; }
table.leaderboard { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
table.leaderboard th, table.leaderboard td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }
table.leaderboard th button { font: inherit; font-weight: bold; background: none; border: 0; cursor: pointer; padding: 0; }
table.leaderboard th[aria-sort=ascending] button::after { content: " \\25B2"; }
table.leaderboard th[aria-sort=descending] button::after { content: " \\25BC"; }
table.leaderboard td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.flagged { background: #fff3cd; }
tr.flagged td:first-child { border-left: 4px solid #d9822b; }
tr.not-reproducible td.reproducible { color: #a40000; font-weight: bold; }
ul.legend { font-size: 0.9em; }
ul.legend .code { font-weight: bold; }
code { background: #f3f3f3; padding: 0 0.2em; }
figure { margin: 1em 0; }
"""

# Sorts a table's rows by the clicked column's data-value; ties keep the original order, and the
# comparison is negated as a whole so that a second click is the exact reverse of the first.
JS = """
"use strict";
document.querySelectorAll("table.leaderboard").forEach(function (table) {
  var body = table.tBodies[0];
  Array.prototype.forEach.call(body.rows, function (row, i) { row.dataset.order = i; });
  table.querySelectorAll("thead th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("thead th").forEach(function (other) { other.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var numeric = th.dataset.type === "number";
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value, c;
        if (numeric) {  // an empty value (unknown) sorts below every number
          x = x === "" ? -Infinity : parseFloat(x); y = y === "" ? -Infinity : parseFloat(y);
        }
        c = x < y ? -1 : (x > y ? 1 : 0);
        if (c === 0) { c = a.dataset.order - b.dataset.order; }
        return ascending ? c : -c;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _inline(text: str) -> str:
    """Escaped text with `code` spans (the Markdown of the intro lines) as <code>."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def _table(board: dict[str, Any], columns: list[tuple[str, str]]) -> list[str]:
    heads = "".join(f'<th scope="col" data-type="{kind}"><button type="button">{html.escape(name)}</button></th>'
                    for name, kind in columns)
    out = ['<div class="scroll">', f'<table class="leaderboard" id="{board["table_id"]}">',
           f"<thead><tr>{heads}</tr></thead>", "<tbody>"]
    for row in board["rows"]:
        status = row["reproducibility"]
        classes = " ".join(c for c, on in [("entry", True), ("flagged", row["flags"]), ("external", status == "external"),
                                           ("not-reproducible", status.startswith("no"))] if on)
        cells = []
        for (text, value), (name, kind) in zip(row["cells"], columns):
            attrs = f' class="{kind} {slug(name)}" data-value="{html.escape(str(value))}"'
            shown = html.escape(text)
            if name == "flags" and row["flags"]:  # the codes; the full text as a tooltip and in the legend
                attrs += f' title="{html.escape(chr(10).join(row["flags"]))}"'
                shown = f"\u26a0 {shown}"
            if name == "entry id" and row.get("examples"):  # the evaluate --save-examples grid of this entry
                shown += f' <a class="examples" href="{html.escape(row["examples"])}">examples</a>'
            if name == "defense" and row["link"]:
                shown = f'<a href="{html.escape(row["link"])}" rel="noopener noreferrer">{shown}</a>'
            cells.append(f"<td{attrs}>{shown}</td>")
        out.append(f'<tr data-entry-id="{html.escape(row["entry_id"])}" class="{classes}">{"".join(cells)}</tr>')
    return out + ["</tbody>", "</table>", "</div>"]


def render_html(intro: list[str], tables: list[dict[str, Any]], columns: list[tuple[str, str]],
                figures: list[tuple[str, str, bytes]]) -> str:
    """The whole page. figures: (path, alt text, PNG bytes), embedded as data: URIs."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>karp-robust leaderboard</title>", f"<style>{CSS}</style>", "</head>", "<body>",
           "<h1>karp-robust leaderboard</h1>", '<ul class="intro">']
    out += [f"<li>{_inline(line)}</li>" for line in intro]
    out += ["<li>Rows marked \u26a0 carry flags (hover for the full text); click a column header to sort.</li>",
            "</ul>", "<nav><ul>"]
    out += [f'<li><a href="#{b["id"]}">{html.escape(b["title"])}</a></li>' for b in tables]
    out += ['<li><a href="#curves">Robustness curves</a></li>', "</ul></nav>"]
    for b in tables:
        out += [f'<section class="board" id="{b["id"]}" data-dataset="{html.escape(b["dataset"])}" '
                f'data-norm="{html.escape(b["norm"])}" data-eps="{b["eps"]!r}">',
                f"<h2>{html.escape(b['title'])}</h2>", f'<p class="command"><code>{html.escape(b["command"])}</code></p>']
        out += _table(b, columns)
        if b["legend"]:
            out += ['<ul class="legend">'] + [f'<li><span class="code">{html.escape(code)}</span>: {_inline(text)}</li>'
                                              for code, text in b["legend"]] + ["</ul>"]
        out.append(f'<p class="separation">{html.escape(b["separation"])}</p>')
        if b["notes"]:
            out += ['<ul class="notes">'] + [f"<li>{html.escape(n)}</li>" for n in b["notes"]] + ["</ul>"]
        out.append("</section>")
    out += ['<section id="curves">', "<h2>Robustness curves</h2>"]
    for path, alt, png in figures:
        data = base64.b64encode(png).decode("ascii")
        width, height = png_size(png)
        out += [f'<figure><img class="curve" src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
                f'width="{width}" height="{height}"><figcaption>{html.escape(path)}</figcaption></figure>']
    out += ["</section>", f"<script>{JS}</script>", "</body>", "</html>"]
    return "\n".join(out) + "\n"
