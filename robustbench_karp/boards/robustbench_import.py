"""Import RobustBench's model_info files as external leaderboard records (pure: no I/O, no clock).

    data = json.loads(Path("model_info/cifar10/Linf/Carmon2019Unlabeled.json").read_text())
    record = import_robustbench(data, source="model_info/cifar10/Linf/Carmon2019Unlabeled.json")

RobustBench publishes accuracies as percent strings ("89.69") and eps as a fraction string
("8/255"); records hold fractions in [0, 1] and eps as a float in pixel units. eps is parsed with
fractions.Fraction, never eval. An external record has no masks and no checkpoint: it is shown
on the leaderboard as external, never as reproducible with karp-robust.

Faithful to RobustBench's own reading of these files (robustbench/leaderboard/template.py):
- the model id is the file stem, and it is part of the record's identity: two models with the
  same architecture and paper never share an entry;
- dataset and threat model come from the path model_info/<dataset>/<Linf|L2>/<id>.json (or are
  given explicitly); a file whose own `dataset` field disagrees is flagged;
- robust accuracy is min(autoattack_acc, external): `external` is the best known (lower) figure
  and RobustBench ranks by it; the record says which of the two it is;
- n is the size of RobustBench's test set: 10,000 (CIFAR) or 5,000 (ImageNet).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import PurePath
from typing import Any

from robustbench_karp.store import config_hash
from robustbench_karp.store.records import RECORD_SCHEMA, portable_source

THREAT_MODELS = {"linf": "linf", "l2": "l2"}
DATASETS = ("cifar10", "cifar100", "imagenet")  # RobustBench's boards, each a registered dataset here
CORRUPTIONS = {"corruptions", "corruptions_3d"}
DEFAULT_N_EXAMPLES = 10000  # RobustBench evaluates AutoAttack on the full CIFAR-10/100 test set
N_EXAMPLES = {"imagenet": 5000}  # ... and on its fixed 5,000-image ILSVRC-2012 validation subset
# A Linf eps written as a rounded k/255 ('0.031' for 8/255) joins the k/255 board, for these k only:
# 0.125 also rounds 32/255, but is more likely meant as itself.
PIXEL_STEPS = (1, 2, 4, 8, 16)
BEST_KNOWN = "best-known"  # the pseudo-attack that stands for RobustBench's `external` figure


def _field_error(field: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"robustbench model_info: field '{field}' must be {expected}, got {value!r}")


def _fraction(data: dict[str, Any], field: str, expected: str) -> Fraction:
    value = data.get(field)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _field_error(field, expected, value)
    try:
        return Fraction(value.strip()) if isinstance(value, str) else Fraction(value)
    except (ValueError, ZeroDivisionError, OverflowError):  # 'abc', '1/0', nan, inf
        raise _field_error(field, expected, value) from None


def _percent(data: dict[str, Any], field: str) -> float:
    """A percent string like '87.30' (or a number) -> the fraction 0.873."""
    percent = _fraction(data, field, "a percent string like '87.30'")
    if not 0 <= percent <= 100:
        raise _field_error(field, "a percent between 0 and 100", data[field])
    return float(percent / 100)  # exact decimal / 100, rounded once: '89.69' -> 0.8969


def _eps(data: dict[str, Any], norm: str) -> tuple[float, str | None]:
    """(eps in pixel units, a note when a rounded k/255 was taken as k/255)."""
    eps = _fraction(data, "eps", "a positive number or fraction like '8/255'")
    if eps <= 0:
        raise _field_error("eps", "a positive number or fraction like '8/255'", data["eps"])
    written = str(data["eps"]).strip()
    decimals = len(written.partition(".")[2]) if "." in written and "/" not in written else 0
    steps = round(eps * 255)
    if norm == "linf" and decimals >= 3 and steps in PIXEL_STEPS and round(steps / 255, decimals) == float(eps):
        return steps / 255, (f"evaluated at eps = {written} ({float(eps) * 255:.1f}/255), not exactly {steps}/255; "
                             f"shown on the {steps}/255 board")
    return float(eps), None


def _layout(source: str) -> tuple[str | None, str | None]:
    """(dataset, threat directory) from RobustBench's layout model_info/<dataset>/<threat>/<id>.json, else Nones."""
    path = PurePath(source)
    threat = path.parent.name
    if threat.lower() in THREAT_MODELS or threat in CORRUPTIONS:
        return path.parent.parent.name or None, threat
    return None, None


def _text(data: dict[str, Any], field: str, default: str | None = None) -> str:
    value = data.get(field, default)
    if not isinstance(value, str) or not value.strip():
        raise _field_error(field, "a non-empty string", value)
    return value.strip()


def _board(data: dict[str, Any], source: str, dataset: str | None, norm: str | None) -> tuple[str, str, list[str]]:
    """(dataset, norm, warnings): explicit arguments first, then the path, then the file's own fields."""
    path_dataset, path_threat = _layout(source)
    threat = norm or path_threat or data.get("threat_model")
    if (isinstance(threat, str) and threat in CORRUPTIONS) or ("corruptions_acc" in data and "autoattack_acc" not in data):
        raise ValueError("robustbench model_info: a common-corruptions result; corruptions are not supported "
                         "(only Linf and L2 model_info files import)")
    if not isinstance(threat, str) or threat.lower() not in THREAT_MODELS:
        raise _field_error("threat_model", "'Linf' or 'L2' (or put the file in model_info/<dataset>/<Linf|L2>/, "
                           "or pass --norm)", threat)
    own = data.get("dataset")
    chosen = (dataset or path_dataset or _text(data, "dataset")).strip().lower()
    if chosen not in DATASETS:  # a board, a file name and a printed command are built from it: only known names
        raise ValueError(f"robustbench model_info: dataset {chosen!r} is not one RobustBench ranks and karp-robust "
                         f"knows ({', '.join(DATASETS)}); a paper's figure on any dataset: add-external --paper NAME ...")
    warnings = []
    if isinstance(own, str) and own.strip().lower() != chosen:
        where = "as asked" if dataset else f"from its path {PurePath(source).parent.as_posix()}/"
        warnings.append(f"its model_info says dataset '{own}'; imported as {chosen} ({where})")
    return chosen, THREAT_MODELS[threat.lower()], warnings


def import_robustbench(data: dict[str, Any], source: str, *, dataset: str | None = None, norm: str | None = None,
                       imported_utc: str | None = None) -> dict[str, Any]:
    """An external record from a RobustBench model_info dict.

    Args:
        data: the parsed model_info JSON (name, dataset, eps, clean_acc, autoattack_acc, external, ...).
        source: where it came from (a path or URL); kept as provenance. Its stem is the model id, and
            in RobustBench's layout its directories name the dataset and threat model.
        dataset, norm: the board, for a file outside that layout (they win over the path).
        imported_utc: when it was imported (the CLI's clock); a re-import of the same model replaces
            the older record (same id, newer time).

    Raises:
        ValueError: naming the malformed or missing field, or saying that corruptions do not import.
    """
    if not isinstance(data, dict):
        raise ValueError(f"robustbench model_info: expected a JSON object, got {type(data).__name__}")
    dataset, norm, warnings = _board(data, source, dataset, norm)
    clean, autoattack = _percent(data, "clean_acc"), _percent(data, "autoattack_acc")
    if autoattack > clean:
        raise _field_error("autoattack_acc", f"at most clean_acc ({data['clean_acc']})", data["autoattack_acc"])
    per_attack, attacks = {"autoattack": autoattack}, [{"name": "autoattack", "version": "standard"}]
    if data.get("external") not in (None, ""):
        per_attack[BEST_KNOWN] = _percent(data, "external")
        attacks.append({"name": BEST_KNOWN, "field": "external"})
    robust = min(per_attack.values())
    n = data.get("n_examples", N_EXAMPLES.get(dataset, DEFAULT_N_EXAMPLES))
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise _field_error("n_examples", "a positive integer", n)
    eps, eps_note = _eps(data, norm)
    model_id = PurePath(source).stem
    forward_passes = data.get("number_forward_passes")
    identity = {"tool": "robustbench", "model_id": model_id, "dataset": dataset, "norm": norm, "eps": eps}
    if data.get("unreliable") is True:  # RobustBench no longer trusts this evaluation: a flag, like our own checks
        warnings.append("robustbench marks this evaluation unreliable")
    config = {"model": _text(data, "architecture", model_id), "dataset": dataset,
              "defense": {"name": _text(data, "name", model_id)}, "weights": None, "norm": norm, "eps": float(eps),
              "n_examples": n, "attacks": attacks, "tool": "robustbench", "model_id": model_id}
    return {  # store/records.py's schema, as an import: its config holds the board fields
        # The id is the model's identity on its board, not the file's content: re-importing replaces the record.
        "id": config_hash(identity), "schema": RECORD_SCHEMA, "config": config, "source": "external",
        "tool": "robustbench", "model_id": model_id, "eps_written": str(data["eps"]).strip(),
        "clean_accuracy": clean, "robust_accuracy": robust,
        "robust_source": "external" if per_attack.get(BEST_KNOWN, 1.0) < autoattack else "autoattack_acc",
        "per_attack": per_attack, "attack_order": list(per_attack),
        "link": data.get("link") or None, "venue": data.get("venue") or None,
        "additional_data": data.get("additional_data") if isinstance(data.get("additional_data"), bool) else None,
        "forward_passes": forward_passes if isinstance(forward_passes, int) and forward_passes > 0 else None,
        "checkpoint": None, "checkpoint_sha256": None, "versions": {},
        "warnings": warnings, "notes": [eps_note] if eps_note else [],
        "created_utc": imported_utc or str(data.get("created_utc") or "unknown"), "model_info": data,
        "imported_from": portable_source(source),  # no importer's directories: published
    }
