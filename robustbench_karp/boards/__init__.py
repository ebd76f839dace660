"""The leaderboard's code: evaluation records -> ranked entries -> the published site (the root's leaderboard/).

    entries = build_entries(records, checkpoint_exists=lambda p: Path(p).is_file())   # entries.py
    render_site(entries, Path("leaderboard"))                                         # site.py

    entries.py              records -> entries: grouping, worst case, protocols, status, flags, ranking
    counts.py               the per-example worst case over an entry's records (ANDed masks), intervals, cost
    published.py            a published site read back, checked, migrated, merged
    tables.py               the boards' tables, shared by README.md and index.html
    html.py                 index.html: self-contained; sort, filter, detail rows, #<entry id>, bracket bars
    page_assets.py          index.html's inline CSS and JS
    curves.py               robustness curves as PNG (the only module that imports matplotlib)
    site.py                 writes entries/*.json, README.md, results.csv, index.html, curves/*.png
    format.py               how numbers and names are written
    robustbench_import.py   RobustBench model_info files -> external records
    robustbench_export.py   an entry -> a RobustBench model_info file
    paper_import.py         a figure from a paper (any dataset we know) -> an external record

Pure: the same records give byte-identical files (no clock, no randomness, no environment).
Layer: imports the store, the catalog and evaluation's torch-free protocols and cost; never torch,
and matplotlib only in curves.py.
"""
