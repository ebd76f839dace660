"""A figure from a paper as an external leaderboard record (pure: no I/O, no clock).

    record = import_paper({"model": "Gowal et al., 2020", "link": "https://arxiv.org/abs/2010.03593",
                           "clean": "99.26", "robust": "96.34", "attack": "AutoAttack (standard)",
                           "dataset": "mnist", "norm": "linf", "eps": "0.3",
                           "source": "https://github.com/fra31/auto-attack/blob/a392200/README.md"})

For any dataset karp-robust knows (mnist, cifar10, ...), not only the boards RobustBench ranks. The
figure is read as the paper prints it: accuracies in percent ("99.26"), eps as a number or a fraction
("8/255", parsed with fractions.Fraction, never eval). The record keeps the figure whole
(`paper_figure`), so `leaderboard verify` re-derives every number from it. It has no masks and no
checkpoint: shown as external, beside our rows, never as reproducible with karp-robust.

A figure whose attack is AutoAttack ranks beside our protocol runs, as RobustBench's imports do; one
measured with another attack (PGD, a paper's own) is an upper bound and sits with the partial rows.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from robustbench_karp import catalog
from robustbench_karp.store import config_hash
from robustbench_karp.store.records import RECORD_SCHEMA, portable_source

TOOL = "paper"
TEST_SET_SIZE = {"mnist": 10000, "fashion-mnist": 10000, "cifar10": 10000, "cifar100": 10000, "svhn": 26032}
REQUIRED = ("model", "link", "clean", "robust", "attack", "dataset", "norm", "eps")
OPTIONAL = ("n_examples", "architecture", "venue", "source")


def _error(field: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"paper figure: {field} must be {expected}, got {value!r}")


def _text(figure: dict[str, Any], field: str) -> str:
    value = figure.get(field)
    if not isinstance(value, str) or not value.strip():
        raise _error(field, "a non-empty string", value)
    return value.strip()


def _number(figure: dict[str, Any], field: str, expected: str) -> Fraction:
    value = figure.get(field)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _error(field, expected, value)
    try:
        return Fraction(value.strip()) if isinstance(value, str) else Fraction(value)
    except (ValueError, ZeroDivisionError, OverflowError):  # 'abc', '1/0', nan, inf
        raise _error(field, expected, value) from None


def _percent(figure: dict[str, Any], field: str) -> float:
    """'99.26' -> 0.9926. A value of 1 or less is refused: a fraction given where the paper prints a percent."""
    value = _number(figure, field, "a percentage as the paper prints it, like 99.26")
    if not 1 < value <= 100 and not (field == "robust" and 0 <= value <= 1):
        raise _error(field, "a percentage as the paper prints it (99.26, not 0.9926), above 1 and at most 100",
                     figure[field])
    return float(value / 100)


def _link(figure: dict[str, Any], field: str) -> str:
    link = _text(figure, field)
    if not link.startswith(("https://", "http://")):
        raise _error(field, "an http(s) URL", link)
    return link


def _board(figure: dict[str, Any]) -> tuple[str, str, float, int]:
    """(dataset, norm, eps, n): a dataset and norm karp-robust knows, eps in pixel units, the test points."""
    known = catalog.facts()["datasets"]
    dataset, norm = _text(figure, "dataset").lower(), _text(figure, "norm").lower()
    if dataset not in known:
        raise _error("dataset", f"one karp-robust knows ({', '.join(sorted(known))})", dataset)
    if norm not in known[dataset]:
        raise _error("norm", f"one of {', '.join(sorted(known[dataset]))}", norm)
    eps = _number(figure, "eps", "a positive number or fraction like 0.3 or 8/255")
    if not eps > 0 or (norm == "linf" and eps > 1):
        raise _error("eps", "positive (and at most 1 in linf: pixel units, images in [0, 1])", figure["eps"])
    n = figure.get("n_examples") or TEST_SET_SIZE.get(dataset)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise _error("n_examples", f"a positive integer (the test points the figure was measured on; {dataset} "
                     "has no default)", figure.get("n_examples"))
    return dataset, norm, float(eps), n


def ranks(attack: str) -> bool:
    """Whether a figure's attack is AutoAttack (ranked beside protocol runs); any other is an upper bound."""
    return re.sub(r"[^a-z]", "", attack.lower()).startswith("autoattack")


def import_paper(figure: dict[str, Any], *, imported_utc: str | None = None) -> dict[str, Any]:
    """An external record from a paper's figure.

    Args:
        figure: model (as the paper names it), link (the paper), clean and robust (percent), attack (what
            measured the robust figure), dataset, norm, eps; optionally n_examples (default: the dataset's
            whole test set), architecture, venue, source (where the figure was read, if not the paper).
        imported_utc: when it was added (the CLI's clock); adding the same model again replaces its row.

    Raises:
        ValueError: one line naming the malformed or missing field.
    """
    if not isinstance(figure, dict):
        raise ValueError(f"paper figure: expected a dict, got {type(figure).__name__}")
    unknown = sorted(set(figure) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise ValueError(f"paper figure: unknown field(s) {', '.join(unknown)} (known: {', '.join(REQUIRED + OPTIONAL)})")
    dataset, norm, eps, n = _board(figure)
    name, link, attack = _text(figure, "model"), _link(figure, "link"), _text(figure, "attack")
    clean, robust = _percent(figure, "clean"), _percent(figure, "robust")
    if robust > clean:
        raise _error("robust", f"at most clean ({figure['clean']})", figure["robust"])
    source = _link(figure, "source") if figure.get("source") else link
    architecture = _text(figure, "architecture") if figure.get("architecture") else None
    identity = {"tool": TOOL, "model_id": name, "architecture": architecture, "link": link, "dataset": dataset,
                "norm": norm, "eps": eps}
    # the model's name is its row's name; its defense is the paper's method, shown as a link to the paper
    config = {"model": architecture or name, "dataset": dataset, "defense": {"name": "paper"}, "weights": None,
              "norm": norm, "eps": eps, "n_examples": n, "attacks": [{"name": attack}], "tool": TOOL, "model_id": name}
    return {  # store/records.py's schema, as an import (robustbench_import.py's shape)
        "id": config_hash(identity), "schema": RECORD_SCHEMA, "config": config, "source": "external", "tool": TOOL,
        "model_id": name, "clean_accuracy": clean, "robust_accuracy": robust, "robust_source": TOOL,
        "ranks_beside_protocols": ranks(attack), "per_attack": {attack: robust}, "attack_order": [attack],
        "link": link, "venue": _text(figure, "venue") if figure.get("venue") else None, "additional_data": None,
        "forward_passes": None, "checkpoint": None, "checkpoint_sha256": None, "versions": {}, "warnings": [],
        "notes": [f"{name}: clean {figure['clean']}%, robust {figure['robust']}% under {attack} on {n} test points, "
                  f"as published in {source}"],
        "created_utc": imported_utc or "unknown", "paper_figure": dict(figure),
        "imported_from": portable_source(source),
    }
