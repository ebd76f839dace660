"""Import results of other tools as external leaderboard records (pure: no I/O, no clock).

    data = json.loads(Path("model_info/cifar10/Linf/Carmon2019Unlabeled.json").read_text())
    record = import_robustbench(data, source="model_info/cifar10/Linf/Carmon2019Unlabeled.json")

RobustBench publishes accuracies as percent strings ("89.69") and eps as a fraction string
("8/255"); records hold fractions in [0, 1] and eps as a float in pixel units. eps is parsed with
fractions.Fraction, never eval. An external record has no masks and no checkpoint: it is shown
on the leaderboard as external, never as reproducible with karp-robust.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import PurePosixPath
from typing import Any

from robustbench_karp.store import config_hash

THREAT_MODELS = {"linf": "linf", "l2": "l2"}
DEFAULT_N_EXAMPLES = 10000  # RobustBench evaluates AutoAttack on the full CIFAR-10/100 test set


def _field_error(field: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"robustbench model_info: field '{field}' must be {expected}, got {value!r}")


def _percent(data: dict[str, Any], field: str) -> float:
    """A percent string like '87.30' (or a number) -> the fraction 0.873."""
    value = data.get(field)
    expected = "a percent string like '87.30'"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _field_error(field, expected, value)
    try:
        percent = Fraction(value.strip()) if isinstance(value, str) else Fraction(value)
    except (ValueError, ZeroDivisionError, OverflowError):  # 'abc', '1/0', nan, inf
        raise _field_error(field, expected, value) from None
    if not 0 <= percent <= 100:
        raise _field_error(field, "a percent between 0 and 100", value)
    return float(percent / 100)  # exact decimal / 100, rounded once: '89.69' -> 0.8969


def _eps(data: dict[str, Any]) -> float:
    value = data.get("eps")
    expected = "a positive number or fraction like '8/255'"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _field_error("eps", expected, value)
    try:
        eps = Fraction(value.strip()) if isinstance(value, str) else Fraction(value)
    except (ValueError, ZeroDivisionError, OverflowError):
        raise _field_error("eps", expected, value) from None
    if eps <= 0:
        raise _field_error("eps", expected, value)
    return float(eps)


def _threat_model(data: dict[str, Any], source: str) -> str:
    """'Linf'/'L2' from the file, else from RobustBench's layout model_info/<dataset>/<threat model>/<id>.json."""
    value = data.get("threat_model")
    if value is None:
        value = next((part for part in PurePosixPath(source).parts[:-1] if part.lower() in THREAT_MODELS), None)
    if not isinstance(value, str) or value.lower() not in THREAT_MODELS:
        raise _field_error("threat_model", "'Linf' or 'L2'", value)
    return THREAT_MODELS[value.lower()]


def _text(data: dict[str, Any], field: str, default: str | None = None) -> str:
    value = data.get(field, default)
    if not isinstance(value, str) or not value.strip():
        raise _field_error(field, "a non-empty string", value)
    return value.strip()


def import_robustbench(data: dict[str, Any], source: str) -> dict[str, Any]:
    """An external record from a RobustBench model_info dict.

    Args:
        data: the parsed model_info JSON (name, dataset, eps, clean_acc, autoattack_acc, ...).
        source: where it came from (a path or URL); kept as provenance, and its directory names the
            threat model when the file itself does not.

    Raises:
        ValueError: naming the malformed or missing field.
    """
    if not isinstance(data, dict):
        raise ValueError(f"robustbench model_info: expected a JSON object, got {type(data).__name__}")
    clean, robust = _percent(data, "clean_acc"), _percent(data, "autoattack_acc")
    if robust > clean:
        raise _field_error("autoattack_acc", f"at most clean_acc ({data['clean_acc']})", data["autoattack_acc"])
    n = data.get("n_examples", DEFAULT_N_EXAMPLES)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise _field_error("n_examples", "a positive integer", n)
    model_id = PurePosixPath(source).stem
    name = _text(data, "name", model_id)
    record = {
        "source": "external", "tool": "robustbench", "model_id": model_id,
        "model": _text(data, "architecture", name), "defense": name, "dataset": _text(data, "dataset").lower(),
        "norm": _threat_model(data, source), "eps": _eps(data), "n_examples": n,
        "clean_accuracy": clean, "robust_accuracy": robust, "per_attack": {"autoattack": robust},
        "attack_order": ["autoattack"], "attacks": [{"name": "autoattack", "version": "standard"}],
        "checkpoint": None, "checkpoint_sha256": None, "seed": None, "versions": {},
        # RobustBench marks evaluations it no longer trusts; that is a flag, like our own sanity checks.
        "warnings": ["robustbench marks this evaluation unreliable"] if data.get("unreliable") is True else [],
        "created_utc": str(data.get("created_utc") or "unknown"), "model_info": data,
    }
    # The id hashes the content, not where it was read from: importing the same file twice gives one id.
    record["id"] = config_hash(record)
    record["imported_from"] = source
    return record
