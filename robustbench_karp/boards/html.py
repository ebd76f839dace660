"""index.html: the leaderboard as a page people read, on a phone or a wide screen.

index.html is self-contained: inline CSS and JS (page_assets.py), figures as data: URIs, no external URL,
no fetch, so it works from file:// with no server and no network. Each row shows rank, model, defense,
clean, robust and certified accuracy, a bracket bar (certified to robust on 0-100: the gap is what a
stronger attack could still find), protocol, n, date and entry id; the other columns open in the row's
detail row. A short "how to read" block comes first; the long notes come after the tables. Headers sort,
a box filters by text, and #<entry id> in the URL highlights that row. Pure: a function of its input.
"""

from __future__ import annotations

import base64
import html
import re
import struct
from typing import Any

from robustbench_karp.boards.format import slug
from robustbench_karp.boards.page_assets import CSS, JS
from robustbench_karp.boards.tables import BRACKET

HOW_TO_READ = [
    "One board per dataset, norm and ε. **Ranked** rows ran an evaluation protocol (or AutoAttack, for published "
    "figures); **partial** rows ran less: their robust % is an upper bound.",
    "**robust %**: the worst case over every attack run. **certified %**: proven. The bar draws both on 0-100: "
    "green is proven, amber the gap a stronger attack could still find (pale: nothing certified).",
    "Small brackets are 95% intervals; ⚠ marks a flag, spelled out under its table. Sort by a header, filter "
    "with the box, open a row with its entry id's button. More: [about these numbers](#about).",
]
# What the page's headers say; the full column name is the header's tooltip (README.md uses the full names).
SHORT = {"clean % [95% CI]": "clean %", "robust % worst case [95% CI]": "robust %",
         "certified % [95% CI] · gap": "certified %", BRACKET: "bracket"}
CI = re.compile(r"^(-?[\d.]+) (\[[^\]]*\])(.*)$")  # '99.3 [99.1, 99.4] †' -> value, interval, the rest


def _inline(text: str) -> str:
    """Escaped text with `code` spans, **bold**, [text](#anchor) and bare http(s) links (the prose's Markdown)."""
    out = re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    out = re.sub(r"(?<![\"=])(https?://[^\s<]*[^\s<.,;:)])", r'<a href="\1" rel="noopener noreferrer">\1</a>', out)
    return re.sub(r"\[([^\]]+)\]\((#[a-z0-9-]+)\)", r'<a href="\2">\1</a>', out)


def bracket_svg(certified: float | None, robust: float) -> str:
    """certified to robust on 0-100 as a small inline SVG: green up to certified, amber from there to robust (pale
    amber from 0 where nothing was certified), a tick at robust."""
    x = lambda fraction: f"{2 + 116 * fraction:.1f}"  # noqa: E731  (0..1 -> 2..118 px)
    proven = certified or 0.0
    label = (f"certified {100 * certified:.1f}% \u2264 true robust \u2264 {100 * robust:.1f}% (attacked): gap "
             f"{100 * (robust - certified):.1f} points" if certified is not None else
             f"robust {100 * robust:.1f}% (attacked, an upper bound); not certified")
    parts = ['<rect x="2" y="5" width="116" height="6" fill="#e5e5e5"/>',
             f'<rect x="2" y="4" width="{float(x(proven)) - 2:.1f}" height="8" fill="#2e7d32"/>' if proven else "",
             f'<rect x="{x(proven)}" y="4" width="{float(x(robust)) - float(x(proven)):.1f}" height="8" '
             f'fill="{"#f0a202" if certified is not None else "#f6d58e"}"/>' if robust > proven else "",  # pale: no proof
             f'<line x1="{x(robust)}" x2="{x(robust)}" y1="1" y2="15" stroke="#222" stroke-width="1.5"/>']
    return (f'<svg class="bracket" width="120" height="16" viewBox="0 0 120 16" role="img" '
            f'aria-label="{html.escape(label)}"><title>{html.escape(label)}</title>{"".join(parts)}</svg>')


def _words(text: str) -> str:
    """Text that may wrap between its words only (never at a hyphen or a slash inside one)."""
    return " ".join(f'<span class="w">{html.escape(word)}</span>' for word in text.split(" "))


def _shown(name: str, text: str, row: dict[str, Any]) -> str:
    """A default column's cell content."""
    if name == "model" and row["codes"]:  # the flags' codes beside the name; the full text as a tooltip
        flags = f' <span class="flag" title="{html.escape(chr(10).join(row["flags"]))}">\u26a0 {", ".join(row["codes"])}</span>'
        return _words(text) + flags
    if name == "defense" and row["link"]:
        return f'<a href="{html.escape(row["link"])}" rel="noopener noreferrer">{_words(text)}</a>'
    if name in ("model", "defense", "protocol"):
        return _words(text)
    if name == "entry id":  # a link to the row itself, and the button that opens its detail row
        eid = html.escape(row["entry_id"])
        return (f'<a href="#{eid}" title="link to this row">{eid}</a><button type="button" class="more" '
                f'aria-expanded="false" aria-controls="detail-{eid}" aria-label="details of {eid}">details</button>')
    match = CI.match(text)
    if match:  # the number, its interval under it in small type
        value, interval, rest = match.groups()
        gap = rest.strip().removeprefix("·").strip() if name.startswith("certified") else ""
        rest = "" if gap else rest
        return f'{value}{html.escape(rest)}<span class="ci">{html.escape(interval)}</span>'
    return html.escape(text)


def _detail(row: dict[str, Any], folded: list[tuple[int, str]], span: int) -> str:
    """The row's other columns, its flags and notes in full, and its examples grid, in a row under it (closed)."""
    items = [(name, html.escape(row["cells"][i][0])) for i, name in folded if name != "flags"]
    items += [("flags", "<br>".join(f"{c}: {html.escape(f)}" for c, f in zip(row["codes"], row["flags"])))] \
        if row["flags"] else []
    items += [("notes", "<br>".join(_inline(n) for n in row["notes"]))] if row["notes"] else []
    items += [("examples", f'<a class="examples" href="{html.escape(row["examples"])}">grid</a>')] \
        if row.get("examples") else []
    dl = "".join(f"<dt>{html.escape(name)}</dt><dd>{value}</dd>" for name, value in items)
    eid = html.escape(row["entry_id"])
    return (f'<tr class="detail" id="detail-{eid}" data-detail-of="{eid}" hidden><td colspan="{span}">'
            f'<div class="inner"><dl>{dl}</dl></div></td></tr>')


def _row(row: dict[str, Any], columns: list[tuple[int, str, str]], folded: list[tuple[int, str]]) -> list[str]:
    status = row["reproducibility"]
    classes = " ".join(c for c, on in [("entry", True), ("flagged", row["flags"]), ("external", status == "external"),
                                       ("not-reproducible", status.startswith("no"))] if on)
    cells = []
    for i, name, kind in columns:
        if name == BRACKET:
            certified, robust = row["bracket"]
            gap = "" if certified is None else robust - certified
            note = "" if certified is None else f'<span class="gap">gap {100 * gap:.1f}</span>'
            cells.append(f'<td class="number {slug(name)}" data-value="{gap}">{bracket_svg(certified, robust)}{note}</td>')
            continue
        text, value = row["cells"][i]
        cells.append(f'<td class="{kind} {slug(name)}" data-value="{html.escape(str(value))}">{_shown(name, text, row)}</td>')
    eid = html.escape(row["entry_id"])
    return [f'<tr id="{eid}" data-entry-id="{eid}" class="{classes}">{"".join(cells)}</tr>',
            _detail(row, folded, len(columns))]


def _table(board: dict[str, Any], all_columns: list[tuple[str, str]], shown: tuple[str, ...]) -> list[str]:
    index = {name: (i, kind) for i, (name, kind) in enumerate(all_columns)}
    columns = [(*index.get(name, (-1, "number")), name) for name in shown]
    columns = [(i, name, kind) for i, kind, name in columns]
    folded = [(i, name) for i, (name, _) in enumerate(all_columns) if name not in shown]
    heads = "".join(f'<th scope="col" class="{slug(name)}" data-type="{kind}" title="{html.escape(name)}">'
                    f'<button type="button">{html.escape(SHORT.get(name, name))}</button></th>'
                    for _, name, kind in columns)
    out = ['<div class="scroll">', f'<table class="leaderboard" id="{board["table_id"]}">',
           f"<thead><tr>{heads}</tr></thead>", "<tbody>"]
    for row in board["rows"]:
        out += _row(row, columns, folded)
    return out + ["</tbody>", "</table>", "</div>"]


def render_html(intro: list[str], tables: list[dict[str, Any]], columns: list[tuple[str, str]],
                figures: list[tuple[str, str, bytes]], shown: tuple[str, ...] | None = None) -> str:
    """The whole page. intro: the long notes (after the tables); figures: (path, alt text, PNG bytes) as data: URIs."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>karp-robust leaderboard</title>", f"<style>{CSS}</style>", "</head>", "<body>",
           "<header>", "<h1>karp-robust leaderboard</h1>", '<div class="how"><strong>How to read</strong><ul>']
    out += [f"<li>{_inline(line)}</li>" for line in HOW_TO_READ]
    out += ["</ul></div>", '<div class="controls"><label for="filter">Filter rows</label>',
            '<input id="filter" type="search" placeholder="model, defense, eps, entry id, date, ..." autocomplete="off">',
            '<span id="filter-count" aria-live="polite"></span></div>', '<nav class="boards">']
    out += [f'<a href="#{b["id"]}">{html.escape(b["heading"])}</a>' for b in tables]
    out += ['<a href="#curves">robustness curves</a>', '<a href="#about">about these numbers</a>', "</nav>", "</header>"]
    for b in tables:
        out += [f'<section class="board" id="{b["id"]}" data-dataset="{html.escape(b["dataset"])}" '
                f'data-norm="{html.escape(b["norm"])}" data-eps="{b["eps"]!r}">',
                f"<h2>{html.escape(b['heading'])}</h2>", f'<p class="subtitle">{html.escape(b["subtitle"])}</p>']
        out += _table(b, columns, shown or tuple(name for name, _ in columns))
        if b["legend"]:
            out += ['<ul class="legend">'] + [f'<li><span class="code">{html.escape(code)}</span>: {_inline(text)}</li>'
                                              for code, text in b["legend"]] + ["</ul>"]
        out.append(f'<p class="separation">{_inline(b["separation"])}</p>')
        if b["notes"]:
            out += ['<ul class="notes">'] + [f"<li>{_inline(n)}</li>" for n in b["notes"]] + ["</ul>"]
        out += [f'<p class="command">Rebuild: <code>{html.escape(b["command"])}</code></p>', "</section>"]
    out += ['<section id="curves">', "<h2>Robustness curves</h2>"]
    for path, alt, png in figures:
        data = base64.b64encode(png).decode("ascii")
        width, height = png_size(png)
        out += [f'<figure><img class="curve" src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
                f'width="{width}" height="{height}"><figcaption>{html.escape(path)}</figcaption></figure>']
    out += ["</section>", '<section class="about" id="about">', "<h2>About these numbers</h2>", "<ul>"]
    out += [f"<li>{_inline(line)}</li>" for line in intro]
    out += ["</ul>", "</section>", f"<script>{JS}</script>", "</body>", "</html>"]
    return "\n".join(out) + "\n"


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's IHDR chunk."""
    return struct.unpack(">II", png[16:24])
