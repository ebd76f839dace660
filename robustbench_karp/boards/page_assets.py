"""The inline CSS and JS of index.html (html.py writes them into the page: no external asset, no network).

The layout, for a 390 px phone and a 1,280 px screen alike: each board's table scrolls sideways inside
its own box, with the model column sticky on the left; cells never break inside a word (numbers and
ids never wrap; names wrap only between words). The script sorts by any column, filters rows by
text, opens a row's detail row, and highlights the row named by the URL's #<entry id>.
"""

from __future__ import annotations

CSS = """
* { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 1em auto; max-width: 1400px; padding: 0 1em; color: #222;
  line-height: 1.4; }
h1 { font-size: 1.6em; margin: 0.3em 0; }
h2 { font-size: 1.2em; margin: 1.6em 0 0.2em; }
p.subtitle { margin: 0 0 0.4em; color: #555; }
code { background: #f3f3f3; padding: 0 0.2em; overflow-wrap: anywhere; }
div.how { background: #f6f8fa; border: 1px solid #ddd; border-radius: 6px; padding: 0.5em 1em; font-size: 0.9em; }
div.how ul { margin: 0.2em 0; padding-left: 1.2em; }
div.controls { margin: 0.8em 0; display: flex; flex-wrap: wrap; gap: 0.5em 1em; align-items: center; }
div.controls input { font: inherit; padding: 0.3em 0.5em; width: 22em; max-width: 100%; }
nav.boards { font-size: 0.9em; }
nav.boards a { white-space: nowrap; margin-right: 0.9em; display: inline-block; }
div.scroll { overflow-x: auto; max-width: 100%; border: 1px solid #ddd; }
table.leaderboard { border-collapse: separate; border-spacing: 0; font-size: 0.88em; width: max-content;
  min-width: 100%; }
table.leaderboard th, table.leaderboard td { padding: 0.3em 0.4em; text-align: left; vertical-align: top;
  border-bottom: 1px solid #e3e3e3; white-space: nowrap; overflow-wrap: normal; word-break: normal; hyphens: none; }
table.leaderboard th { background: #f0f0f0; }
table.leaderboard th button { font: inherit; font-weight: bold; background: none; border: 0; cursor: pointer;
  padding: 0; white-space: nowrap; color: inherit; }
table.leaderboard th[aria-sort=ascending] button::after { content: " \\25B2"; }
table.leaderboard th[aria-sort=descending] button::after { content: " \\25BC"; }
table.leaderboard td.model, table.leaderboard td.defense, table.leaderboard td.protocol { white-space: normal;
  min-width: 5em; max-width: 11em; }
table.leaderboard td.model { min-width: 7em; max-width: 12em; }
table.leaderboard span.w { white-space: nowrap; }
table.leaderboard .model { position: sticky; left: 0; z-index: 1; background: inherit;
  box-shadow: 1px 0 0 #ddd; }
table.leaderboard td.number { text-align: right; font-variant-numeric: tabular-nums; }
table.leaderboard .ci { display: block; font-size: 0.8em; color: #666; }
table.leaderboard tr { background: #fff; }
table.leaderboard tr.flagged { background: #fff3cd; }
table.leaderboard tr.flagged td:first-child { box-shadow: inset 4px 0 0 #d9822b; }
table.leaderboard tr.target, table.leaderboard tr.target + tr.detail { background: #dbeafe; }
table.leaderboard tr.target td:first-child { box-shadow: inset 4px 0 0 #1d4ed8; }
span.flag { font-size: 0.85em; color: #8a4b00; white-space: nowrap; }
td.entry-id a { font-family: monospace; font-size: 0.95em; }
button.more { font: inherit; border: 1px solid #bbb; border-radius: 3px; background: #fff; cursor: pointer;
  padding: 0 0.35em; margin-left: 0.3em; }
button.more[aria-expanded=true] { background: #e8e8e8; }
tr.detail > td { white-space: normal; }
tr.detail div.inner { position: sticky; left: 0.5em; max-width: min(60em, calc(100vw - 3em)); }
tr.detail dl { margin: 0.2em 0; display: grid; grid-template-columns: max-content 1fr; gap: 0.1em 1em; }
tr.detail dt { font-weight: bold; white-space: nowrap; }
tr.detail dd { margin: 0; overflow-wrap: anywhere; }
svg.bracket { display: block; }
td.certified-robust .gap { font-size: 0.8em; color: #666; }
ul.legend, ul.notes, p.separation, p.command { font-size: 0.85em; overflow-wrap: anywhere; }
section.about li { overflow-wrap: anywhere; }
ul.legend .code { font-weight: bold; }
img.curve { max-width: 100%; height: auto; }
figure { margin: 1em 0; }
section.about { font-size: 0.9em; color: #333; }
"""

# Sorts a table's rows by the clicked column's data-value (each row keeps its detail row under it); ties keep the
# original order, and the comparison is negated as a whole, so that a second click is the exact reverse.
JS = """
"use strict";
(function () {
  function detailOf(row) {
    var next = row.nextElementSibling;
    return next && next.classList.contains("detail") ? next : null;
  }
  function entryRows(table) {
    return Array.prototype.filter.call(table.tBodies[0].rows, function (r) { return r.classList.contains("entry"); });
  }
  function toggle(row, open) {
    var detail = detailOf(row), button = row.querySelector("button.more");
    if (!detail) { return; }
    if (open === undefined) { open = detail.hidden; }
    detail.hidden = !open;
    if (button) { button.setAttribute("aria-expanded", open ? "true" : "false"); }
  }
  document.querySelectorAll("table.leaderboard").forEach(function (table) {
    var body = table.tBodies[0];
    entryRows(table).forEach(function (row, i) { row.dataset.order = i; });
    table.querySelectorAll("thead th").forEach(function (th, col) {
      th.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        table.querySelectorAll("thead th").forEach(function (other) { other.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var numeric = th.dataset.type === "number";
        var pairs = entryRows(table).map(function (row) { return [row, detailOf(row)]; });
        pairs.sort(function (a, b) {
          var x = a[0].cells[col].dataset.value, y = b[0].cells[col].dataset.value, c;
          if (numeric) {  // an empty value (unknown) sorts below every number
            x = x === "" ? -Infinity : parseFloat(x); y = y === "" ? -Infinity : parseFloat(y);
          }
          c = x < y ? -1 : (x > y ? 1 : 0);
          if (c === 0) { c = a[0].dataset.order - b[0].dataset.order; }
          return ascending ? c : -c;
        });
        pairs.forEach(function (pair) { body.appendChild(pair[0]); if (pair[1]) { body.appendChild(pair[1]); } });
      });
    });
  });
  document.querySelectorAll("button.more").forEach(function (button) {
    button.addEventListener("click", function () { toggle(button.closest("tr")); });
  });
  var filter = document.getElementById("filter"), count = document.getElementById("filter-count");
  function applyFilter() {  // every word typed must appear in the row, its detail row or its board's heading
    var terms = filter.value.toLowerCase().split(/\\s+/).filter(Boolean), shown = 0, total = 0;
    document.querySelectorAll("tr.entry").forEach(function (row) {
      var detail = detailOf(row), heading = row.closest("section").querySelector("h2");
      var text = [row.textContent, detail ? detail.textContent : "", heading.textContent].join(" ").toLowerCase();
      var match = terms.every(function (t) { return text.indexOf(t) >= 0; });
      row.hidden = !match;
      if (!match) { toggle(row, false); }
      total += 1; shown += match ? 1 : 0;
    });
    count.textContent = terms.length ? shown + " of " + total + " rows match" : "";
  }
  filter.addEventListener("input", applyFilter);
  function target() {  // #<entry id>: that row highlighted, its details open, scrolled into view
    var id = decodeURIComponent(location.hash.slice(1)), row = id ? document.getElementById(id) : null;
    document.querySelectorAll("tr.target").forEach(function (r) { r.classList.remove("target"); });
    if (!row || !row.classList.contains("entry")) { return; }
    if (row.hidden) { filter.value = ""; applyFilter(); }
    row.classList.add("target");
    toggle(row, true);
    row.scrollIntoView({block: "center"});
  }
  window.addEventListener("hashchange", target);
  target();
})();
"""
