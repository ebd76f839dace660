"""The rendered views of the leaderboard: its tables, the robustness-curve PNGs and the static page.

index.html is self-contained: inline CSS and JS, figures as data: URIs, no external URL, no fetch,
so it works from file:// with no server and no network. Clicking a column header sorts the table
(numbers numerically; a second click reverses). Everything here is a pure function of its input:
PNGs come from matplotlib's Agg canvas with the default style and no Software metadata.
"""

from __future__ import annotations

import base64
import html
import re
import struct
from typing import Any

from robustbench_karp.boards.format import slug

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em; color: #222; }
div.scroll { overflow-x: auto; }
table.leaderboard { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
table.leaderboard th, table.leaderboard td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left;
  max-width: 14em; overflow-wrap: anywhere; vertical-align: top; }
table.leaderboard details summary { cursor: pointer; font-family: monospace; }
table.leaderboard details dl { margin: 0.3em 0; font-size: 0.9em; }
table.leaderboard details dt { font-weight: bold; }
table.leaderboard details dd { margin: 0 0 0.2em 0; }
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


def _details(row: dict[str, Any], folded: list[tuple[int, str]]) -> str:
    """The columns the page folds away, as a small list inside the entry id's cell."""
    items = "".join(f"<dt>{html.escape(name)}</dt><dd>{html.escape(row['cells'][i][0])}</dd>" for i, name in folded)
    examples = (f'<dt>examples</dt><dd><a class="examples" href="{html.escape(row["examples"])}">grid</a></dd>'
                if row.get("examples") else "")
    return f"<details><summary>{html.escape(row['entry_id'])}</summary><dl>{items}{examples}</dl></details>"


def _table(board: dict[str, Any], all_columns: list[tuple[str, str]], shown: tuple[str, ...]) -> list[str]:
    columns = [(i, name, kind) for i, (name, kind) in enumerate(all_columns) if name in shown]
    folded = [(i, name) for i, (name, _) in enumerate(all_columns) if name not in shown]
    heads = "".join(f'<th scope="col" data-type="{kind}"><button type="button">{html.escape(name)}</button></th>'
                    for _, name, kind in columns)
    out = ['<div class="scroll">', f'<table class="leaderboard" id="{board["table_id"]}">',
           f"<thead><tr>{heads}</tr></thead>", "<tbody>"]
    for row in board["rows"]:
        status = row["reproducibility"]
        classes = " ".join(c for c, on in [("entry", True), ("flagged", row["flags"]), ("external", status == "external"),
                                           ("not-reproducible", status.startswith("no"))] if on)
        cells = []
        for i, name, kind in columns:
            text, value = row["cells"][i]
            attrs = f' class="{kind} {slug(name)}" data-value="{html.escape(str(value))}"'
            shown = html.escape(text)
            if name == "flags" and row["flags"]:  # the codes; the full text as a tooltip and in the legend
                attrs += f' title="{html.escape(chr(10).join(row["flags"]))}"'
                shown = f"\u26a0 {shown}"
            if name == "entry id":  # with the folded columns (and the examples grid) under it
                shown = _details(row, folded)
            if name == "defense" and row["link"]:
                shown = f'<a href="{html.escape(row["link"])}" rel="noopener noreferrer">{shown}</a>'
            cells.append(f"<td{attrs}>{shown}</td>")
        out.append(f'<tr data-entry-id="{html.escape(row["entry_id"])}" class="{classes}">{"".join(cells)}</tr>')
    return out + ["</tbody>", "</table>", "</div>"]


def render_html(intro: list[str], tables: list[dict[str, Any]], columns: list[tuple[str, str]],
                figures: list[tuple[str, str, bytes]], shown: tuple[str, ...] | None = None) -> str:
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
        out += _table(b, columns, shown or tuple(name for name, _ in columns))
        if b["legend"]:
            out += ['<ul class="legend">'] + [f'<li><span class="code">{html.escape(code)}</span>: {_inline(text)}</li>'
                                              for code, text in b["legend"]] + ["</ul>"]
        out.append(f'<p class="separation">{_inline(b["separation"])}</p>')
        if b["notes"]:
            out += ['<ul class="notes">'] + [f"<li>{_inline(n)}</li>" for n in b["notes"]] + ["</ul>"]
        out.append("</section>")
    out += ['<section id="curves">', "<h2>Robustness curves</h2>"]
    for path, alt, png in figures:
        data = base64.b64encode(png).decode("ascii")
        width, height = png_size(png)
        out += [f'<figure><img class="curve" src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
                f'width="{width}" height="{height}"><figcaption>{html.escape(path)}</figcaption></figure>']
    out += ["</section>", f"<script>{JS}</script>", "</body>", "</html>"]
    return "\n".join(out) + "\n"


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    return struct.unpack(">II", png[16:24])
