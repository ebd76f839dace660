"""RobustBench's model zoo as data: table.json read into ZooEntry objects, with one-line lookup errors.

table.json is {dataset: {threat: {model_id: entry}}} where an entry is {"family", "options", "mean", "std",
"source"[, "preprocessing"]} or {"unsupported": reason}. benchmarks/robustbench_zoo_table.py regenerates
it from a RobustBench checkout; "_generated_from" records the commit.
"""

from __future__ import annotations

import copy
import difflib
import json
from functools import cache
from pathlib import Path

from robustbench_karp.zoo.base import ZooEntry, ZooError

TABLE_PATH = Path(__file__).with_name("table.json")
DATASETS = ("cifar10", "cifar100", "imagenet")
THREATS = {"linf": "Linf", "l2": "L2", "corruptions": "corruptions"}  # our --norm -> RobustBench's folder name


@cache
def load_table() -> dict:
    return json.loads(TABLE_PATH.read_text())


def make_entry(model_id: str, dataset: str, threat: str, raw: dict) -> ZooEntry:
    return ZooEntry(model_id=model_id, dataset=dataset, threat=threat, family=raw["family"],
                    options=copy.deepcopy(raw["options"]),  # callers may mutate theirs; the cached table stays intact
                    mean=tuple(raw["mean"]) if raw["mean"] is not None else None,
                    std=tuple(raw["std"]) if raw["std"] is not None else None,
                    preprocessing=raw.get("preprocessing"), source=raw.get("source"))


def entries() -> list[ZooEntry]:
    """Every supported entry, in RobustBench's order (dataset, threat, then its listing)."""
    table = load_table()
    return [make_entry(model_id, dataset, threat, raw)
            for dataset in DATASETS for threat, models in table[dataset].items()
            for model_id, raw in models.items() if "unsupported" not in raw]


def lookup(model_id: str, dataset: str, norm: str) -> ZooEntry:
    """The entry for a RobustBench model ID; norm is "linf", "l2" (or "corruptions"), dataset as RobustBench spells it.

    Raises:
        ZooError: one line, for an unknown dataset, norm or ID (with close matches), an ID that RobustBench
            lists under another dataset or threat (with the flags that reach it), or an unsupported entry.
    """
    if dataset not in DATASETS:
        raise ZooError(f"unknown RobustBench dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    threat = THREATS.get(norm.lower())
    if threat is None:
        raise ZooError(f"unknown RobustBench threat model {norm!r}; valid: {', '.join(THREATS)}")
    table = load_table()
    models = table[dataset].get(threat, {})
    raw = models.get(model_id)
    if raw is None:
        elsewhere = [(d, t) for d in DATASETS for t, ms in table[d].items() if model_id in ms]
        if elsewhere:
            raise ZooError(elsewhere_message(model_id, dataset, threat, elsewhere))
        close = difflib.get_close_matches(model_id, list(models), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else f"robustbench_karp/zoo/table.json lists its {len(models)} IDs"
        raise ZooError(f"unknown RobustBench model {model_id!r} for {dataset} {threat}; {hint}")
    if "unsupported" in raw:
        raise ZooError(f"{model_id} {raw['unsupported']}, not supported")
    return make_entry(model_id, dataset, threat, raw)


def elsewhere_message(model_id: str, dataset: str, threat: str, places: list[tuple[str, str]]) -> str:
    def flags(d: str, t: str) -> str:
        norm = next(k for k, v in THREATS.items() if v == t)
        return " ".join(([f"--dataset {d}"] if d != dataset else []) + ([f"--norm {norm}"] if t != threat else []))

    if len(places) == 1:
        (d, t), = places
        wanted = " ".join(([dataset] if d != dataset else []) + ([threat] if t != threat else []))
        return f"{model_id} is a {d} {t} model, not {wanted}; use {flags(d, t)}"
    listed = ", ".join(f"{d} {t} ({flags(d, t)})" for d, t in places)
    return f"{model_id} is not a {dataset} {threat} model; RobustBench lists it as {listed}"


def checkpoint_location(root: Path, entry: ZooEntry) -> Path:
    """RobustBench's own download layout: <root>/<dataset>/<Linf|L2|corruptions>/<ModelID>.pt."""
    return Path(root) / entry.dataset / entry.threat / f"{entry.model_id}.pt"
