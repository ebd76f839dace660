"""The rendered index.html in headless Chromium: every entry's row is there, a header click sorts, plots load.

The page is the golden site of tests/test_leaderboard.py, opened from file:// (no server, no network).
Outside CI the test skips when Chromium, chromedriver or selenium is missing; with KARP_REQUIRE_BROWSER=1
(CI sets it) a missing browser is a failure instead. Selenium never downloads a driver: the system
chromedriver is passed to Service and SE_OFFLINE=true.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from robustbench_karp.boards.entries import build_entries, import_robustbench
from robustbench_karp.boards.site import render_site

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
GOLDEN = Path(__file__).parent / "golden"
KANG = Path(__file__).parent / "data" / "robustbench_model_info" / "cifar10" / "Linf" / "Kang2021Stable.json"
AUTOATTACK = {"name": "autoattack", "steps": 100, "square_queries": 5000}
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic"]


def golden_entries() -> list[dict]:
    fixture = json.loads((GOLDEN / "records.json").read_text())
    external = [import_robustbench(fixture["robustbench_model_info"], fixture["robustbench_source"]),
                import_robustbench(json.loads(KANG.read_text()), "model_info/cifar10/Linf/Kang2021Stable.json")]
    existing = set(fixture["existing_checkpoints"])
    return build_entries(fixture["records"] + external, checkpoint_exists=existing.__contains__)


def with_a_protocol_entry(entries: list[dict]) -> list[dict]:
    """The golden entries plus one on mnist linf 0.3 that ran AutoAttack: that board splits into two tables."""
    fixture = json.loads((GOLDEN / "records.json").read_text())
    base = next(r for r in fixture["records"] if r["defense"] == "standard" and r["eps"] == 0.3)
    record = {**base, "id": "d" * 16, "model": "protocol-model", "attacks": [AUTOATTACK], "attack_order": ["autoattack"],
              "per_attack": {"autoattack": base["robust_accuracy"]}, "warnings": []}
    return build_entries([record], checkpoint_exists=lambda p: True) + entries


def browser_missing() -> str | None:
    """What is missing for the browser test, named exactly; None when everything is there."""
    packages = {CHROMIUM: "chromium", CHROMEDRIVER: "chromium-driver"}
    absent = [path for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if absent:
        return (f"{' and '.join(str(p) for p in absent)} not found "
                f"(apt-get install {' '.join(packages[p] for p in absent)})")
    if importlib.util.find_spec("selenium") is None:
        return "selenium not installed (pip install selenium)"
    return None


@pytest.fixture
def browser(tmp_path, monkeypatch):
    missing = browser_missing()
    if missing and os.environ.get("KARP_REQUIRE_BROWSER") == "1":
        pytest.fail(f"KARP_REQUIRE_BROWSER=1 but {missing}")
    if missing:
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in CHROMIUM_ARGS + [f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def column_order(table, column_class: str) -> tuple[list[str], list[float]]:
    """(entry ids of the rows, the column's numeric data-value) in the order the page shows them."""
    from selenium.webdriver.common.by import By

    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr.entry")
    values = [float(r.find_element(By.CSS_SELECTOR, f"td.{column_class}").get_attribute("data-value")) for r in rows]
    return [r.get_attribute("data-entry-id") for r in rows], values


def detail_follows_each_row(browser, table) -> bool:
    """Whether every row's detail row is right under it (sorting moves them together)."""
    return browser.execute_script(
        "return Array.from(arguments[0].querySelectorAll('tr.entry')).every(function (r) {"
        "  var d = r.nextElementSibling; return d && d.dataset.detailOf === r.dataset.entryId; });", table)


def test_page_rows_sorting_and_plots(browser, tmp_path):
    from selenium.webdriver.common.by import By

    entries = with_a_protocol_entry(golden_entries())
    render_site(entries, tmp_path / "site")
    browser.get((tmp_path / "site" / "index.html").as_uri())

    rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-entry-id]")
    assert len(rows) == len(entries)
    assert sorted(r.get_attribute("data-entry-id") for r in rows) == sorted(e["entry_id"] for e in entries)
    flagged = browser.find_elements(By.CSS_SELECTOR, "tr.flagged")
    assert sorted(r.get_attribute("data-entry-id") for r in flagged) == sorted(e["entry_id"] for e in entries if e["flags"])

    # mnist linf 0.3 is split: the entry that ran the protocol, ranked, then the partial evaluations,
    # unranked ('–'), in order of their upper bounds: pgd_at (n=100), trades (n=20), standard (n=20).
    protocol = browser.find_element(By.ID, "table-mnist-linf-0-3")
    table = browser.find_element(By.ID, "table-mnist-linf-0-3-partial")
    assert [td.text for td in protocol.find_elements(By.CSS_SELECTOR, "td.rank")] == ["1"]
    assert protocol.find_element(By.CSS_SELECTOR, "td.model").text == "protocol-model"
    assert browser.execute_script("return arguments[0].compareDocumentPosition(arguments[1]) & 4;", protocol, table)
    assert {td.text for td in table.find_elements(By.CSS_SELECTOR, "td.rank")} == {"–"}
    ranked = [e["entry_id"] for e in entries if e["dataset"] == "mnist" and e["eps"] == 0.3 and e["status"] == "partial"]
    assert column_order(table, "n") == (ranked, [100, 20, 20])
    header = table.find_element(By.XPATH, ".//th[normalize-space()='n']")
    header.click()  # numeric, ascending: 20 < 100 (as text "100" would come first); ties keep rank order
    assert column_order(table, "n") == ([ranked[1], ranked[2], ranked[0]], [20, 20, 100])
    assert header.get_attribute("aria-sort") == "ascending" and detail_follows_each_row(browser, table)
    header.click()  # the exact reverse
    assert column_order(table, "n") == ([ranked[0], ranked[2], ranked[1]], [100, 20, 20])
    assert header.get_attribute("aria-sort") == "descending" and detail_follows_each_row(browser, table)

    clean = table.find_element(By.XPATH, ".//th[starts-with(normalize-space(), 'clean')]")
    clean.click()
    assert column_order(table, "clean-95-ci")[1] == [0.85, 0.9, 0.95]
    clean.click()
    assert column_order(table, "clean-95-ci")[1] == [0.95, 0.9, 0.85]

    certified = table.find_element(By.XPATH, ".//th[starts-with(normalize-space(), 'certified')]")
    certified.click()  # every value unknown ('-'): sorting keeps the rows, and throws nothing
    assert column_order(table, "n")[1] == [100, 20, 20]
    date = table.find_element(By.XPATH, ".//th[normalize-space()='date']")
    date.click()  # text: ISO dates sort as time does
    dates = [td.text for td in table.find_elements(By.CSS_SELECTOR, "td.date")]
    assert dates == sorted(dates) and all(len(d) == 10 and d[4] == "-" for d in dates)

    images = browser.execute_script(
        "return Array.from(document.images).map(function (i) { return [i.complete, i.naturalWidth, i.alt]; });")
    assert len(images) == 1  # cifar10's entries have one eps each: only mnist draws curves
    assert all(complete and width > 0 and alt for complete, width, alt in images)
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []


def test_skip_reason_names_the_missing_binary(monkeypatch, tmp_path):
    (tmp_path / "present-chromium").write_bytes(b"")  # whether or not this machine has chromium
    monkeypatch.setitem(globals(), "CHROMIUM", tmp_path / "present-chromium")
    monkeypatch.setitem(globals(), "CHROMEDRIVER", tmp_path / "chromedriver")
    assert browser_missing() == f"{tmp_path / 'chromedriver'} not found (apt-get install chromium-driver)"
    monkeypatch.setitem(globals(), "CHROMIUM", tmp_path / "chromium")
    assert browser_missing() == (f"{tmp_path / 'chromium'} and {tmp_path / 'chromedriver'} not found "
                                 "(apt-get install chromium chromium-driver)")


def test_flag_codes_legend_and_paper_links(browser, tmp_path):
    """Long flags show as short codes beside the model, spelled out in the legend, the tooltip and the detail row."""
    from selenium.webdriver.common.by import By

    render_site(golden_entries(), tmp_path / "site")
    browser.get((tmp_path / "site" / "index.html").as_uri())
    section = browser.find_element(By.ID, "board-cifar10-linf-8-255")
    kang = section.find_element(By.CSS_SELECTOR, "tbody tr.entry")  # ranked first by its best-known 64.20%
    assert kang.find_element(By.CSS_SELECTOR, "td.model").text == \
        "Kang2021Stable (WideResNet-70-16, Neural ODE block) \u26a0 F1"
    flag = kang.find_element(By.CSS_SELECTOR, "td.model span.flag")
    assert (flag.text, flag.get_attribute("title")) == ("\u26a0 F1", "robustbench marks this evaluation unreliable")
    assert kang.find_element(By.CSS_SELECTOR, "td.robust-worst-case-95-ci").text.startswith("64.2 \u2020")
    link = kang.find_element(By.CSS_SELECTOR, "td.defense a")
    assert link.get_attribute("href") == "https://arxiv.org/abs/2110.12976" and "NeurIPS 2021" in link.text
    legend = [li.text for li in section.find_elements(By.CSS_SELECTOR, "ul.legend li")]
    assert legend[0] == "F1: robustbench marks this evaluation unreliable" and legend[1].startswith("\u2020: best known")
    assert all(li.is_displayed() for li in section.find_elements(By.CSS_SELECTOR, "ul.legend li"))
    masking = browser.find_element(By.ID, "board-mnist-linf-0-3-partial")
    assert [li.text for li in masking.find_elements(By.CSS_SELECTOR, "ul.legend li")] == [
        "F2: gradient masking suspected: black-box square beats white-box pgd on 2 points"]


# Every word of the rows and headers on one line: a word whose glyphs sit on two lines was broken inside.
BROKEN_WORDS = """
var out = [];
document.querySelectorAll("table.leaderboard thead th, table.leaderboard tr.entry td").forEach(function (cell) {
  var walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT), m;
  while (walker.nextNode()) {
    var node = walker.currentNode, words = /\\S+/g;
    while ((m = words.exec(node.data))) {
      var range = document.createRange();
      range.setStart(node, m.index); range.setEnd(node, m.index + m[0].length);
      var tops = new Set(Array.from(range.getClientRects()).filter(function (r) { return r.width > 0; })
                         .map(function (r) { return Math.round(r.top); }));
      if (tops.size > 1) { out.push(m[0]); }
    }
  }
});
return out;
"""


def test_at_1280_pixels_the_default_columns_fit_unbroken_and_a_row_opens_its_details(browser, tmp_path):
    from selenium.webdriver.common.by import By

    render_site(with_a_protocol_entry(golden_entries()), tmp_path / "site")
    browser.set_window_size(1280, 900)
    browser.get((tmp_path / "site" / "index.html").as_uri())
    width = browser.execute_script("return document.documentElement.clientWidth;")
    assert browser.execute_script("return document.documentElement.scrollWidth;") <= width  # no page scroll
    for box in browser.find_elements(By.CSS_SELECTOR, "div.scroll"):  # and every table fits its box
        assert browser.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth;", box)
    assert browser.execute_script(BROKEN_WORDS) == []
    heads = [th.get_attribute("title") for th in browser.find_elements(By.CSS_SELECTOR, "#table-mnist-linf-0-1-partial th")]
    assert heads == ["rank", "model", "defense", "clean % [95% CI]", "robust % worst case [95% CI]",
                     "certified % [95% CI] · gap", "certified \u2192 robust", "protocol", "n", "date", "entry id"]
    row = browser.find_element(By.CSS_SELECTOR, "#table-mnist-linf-0-1-partial tbody tr.entry")
    assert row.find_element(By.CSS_SELECTOR, "td.certified-95-ci-gap").text == "35.0\n[18.1, 56.7]"
    bar = row.find_element(By.CSS_SELECTOR, "td.certified-robust svg.bracket")  # certified 35.0 to robust 75.0
    assert "certified 35.0% \u2264 true robust \u2264 75.0% (attacked): gap 40.0 points" in bar.get_attribute("aria-label")
    proven, gap = bar.find_elements(By.CSS_SELECTOR, "rect")[1:]
    assert [round(float(r.get_attribute("width")) / 1.16, 1) for r in (proven, gap)] == [35.0, 40.0]  # on 0-100
    detail = browser.find_element(By.ID, f"detail-{row.get_attribute('data-entry-id')}")
    assert not detail.is_displayed()
    row.find_element(By.CSS_SELECTOR, "button.more").click()
    assert detail.is_displayed() and "attacks run" in detail.text and "pgd" in detail.text and "training" in detail.text
    assert row.find_element(By.CSS_SELECTOR, "button.more").get_attribute("aria-expanded") == "true"
    code = browser.find_elements(By.CSS_SELECTOR, "p.separation code")  # Markdown code renders as code
    assert any(c.text == "karp-robust evaluate --protocol standard" for c in code)
    about = browser.find_element(By.ID, "about")  # the long prose comes after every table
    tables = browser.find_elements(By.CSS_SELECTOR, "table.leaderboard")
    assert browser.execute_script("return arguments[0].compareDocumentPosition(arguments[1]) & 4;", tables[-1], about)


def test_at_390_pixels_tables_scroll_sideways_with_the_model_column_sticky(browser, tmp_path):
    from selenium.webdriver.common.by import By

    render_site(with_a_protocol_entry(golden_entries()), tmp_path / "site")
    browser.set_window_size(390, 844)
    browser.get((tmp_path / "site" / "index.html").as_uri())
    width = browser.execute_script("return document.documentElement.clientWidth;")
    assert browser.execute_script("return document.documentElement.scrollWidth;") <= width  # only the tables scroll
    assert browser.execute_script(BROKEN_WORDS) == []
    widths = browser.execute_script(  # [class, width, whether its content overflows it]
        "return Array.from(document.querySelectorAll('table.leaderboard tr.entry td, table.leaderboard th'))"
        ".map(function (td) { return [td.className, td.getBoundingClientRect().width, td.scrollWidth > td.clientWidth]; });")
    assert not [kind for kind, _, squeezed in widths if squeezed]  # no cell narrower than its numbers and words
    assert min(w for kind, w, _ in widths if kind.split()[-1] in ("model", "defense", "protocol")) >= 60  # no 1-char columns
    box = browser.find_element(By.CSS_SELECTOR, "#board-mnist-linf-0-3-partial div.scroll")
    browser.execute_script("arguments[0].scrollIntoView(); arguments[0].scrollLeft = 400;", box)
    assert browser.execute_script("return arguments[0].scrollLeft;", box) == 400  # it scrolls sideways
    left = browser.execute_script("return arguments[0].getBoundingClientRect().left;", box)
    for cell in box.find_elements(By.CSS_SELECTOR, "tr.entry td.model"):  # the model stays in view, at the left
        assert abs(browser.execute_script("return arguments[0].getBoundingClientRect().left;", cell) - left) <= 2
        assert cell.text
    rank = box.find_element(By.CSS_SELECTOR, "tr.entry td.rank")  # while the rank scrolled away under it
    assert browser.execute_script("return arguments[0].getBoundingClientRect().right;", rank) < left + 5


def test_filter_by_text_and_a_row_named_in_the_url_is_highlighted(browser, tmp_path):
    from selenium.webdriver.common.by import By

    entries = with_a_protocol_entry(golden_entries())
    render_site(entries, tmp_path / "site")
    page = (tmp_path / "site" / "index.html").as_uri()
    browser.set_window_size(1280, 700)
    browser.get(page)
    box = browser.find_element(By.ID, "filter")
    box.send_keys("Kang2021")
    shown = [r.get_attribute("data-entry-id") for r in browser.find_elements(By.CSS_SELECTOR, "tr.entry")
             if r.is_displayed()]
    assert shown == [e["entry_id"] for e in entries if e.get("model_id") == "Kang2021Stable"]
    assert browser.find_element(By.ID, "filter-count").text == f"1 of {len(entries)} rows match"
    box.clear()
    box.send_keys("trades 0.1")  # every word must match: trades' rows whose text has 0.1 (its eps 0.1 board)
    shown = [r.get_attribute("data-entry-id") for r in browser.find_elements(By.CSS_SELECTOR, "tr.entry")
             if r.is_displayed()]
    assert shown and all(e["defense"] == "trades" for e in entries if e["entry_id"] in shown)
    assert len(shown) < sum(e["defense"] == "trades" for e in entries)

    last = [e for e in entries if e["dataset"] == "mnist"][-1]["entry_id"]  # far down the page
    browser.get(f"{page}#{last}")
    row = browser.find_element(By.ID, last)
    assert "target" in row.get_attribute("class").split()
    assert browser.find_element(By.ID, f"detail-{last}").is_displayed()  # its details open
    top, bottom = browser.execute_script("var r = arguments[0].getBoundingClientRect(); return [r.top, r.bottom];", row)
    assert 0 <= top and bottom <= 700  # scrolled into view
    assert browser.find_elements(By.CSS_SELECTOR, "tr.target") == [row]
    first = entries[0]["entry_id"]
    row.find_element(By.XPATH, f"//a[@href='#{first}']").click()  # an entry id is the link to its row
    assert browser.find_elements(By.CSS_SELECTOR, "tr.target") == [browser.find_element(By.ID, first)]
