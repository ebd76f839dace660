"""Export a leaderboard entry as a RobustBench model_info file, to submit a model (pure: no I/O).

    entry = json.loads(Path("leaderboard/entries/<entry id>.json").read_text())
    info, where = export_robustbench(entry)  # where: 'model_info/cifar10/Linf/<model name>.json'

RobustBench reads these files with json.load and float() of the percent strings, and ranks a board
by `external` where a file has it, else by `autoattack_acc` (robustbench/leaderboard/template.py and
utils.ACC_FIELDS); the dataset and threat model are the file's directories. So the export writes:
- clean_acc and autoattack_acc as percent strings with two decimals ('89.70');
- external, the best known robust accuracy, where our worst case over every attack is below
  AutoAttack's figure alone (an adaptive attack broke more points): RobustBench then ranks by it;
- unreliable when our sanity checks flagged the entry, and a footnote naming the entry and its n.
An imported RobustBench entry exports its own model_info back, with our numbers in it.
"""

from __future__ import annotations

from typing import Any

from robustbench_karp import catalog
from robustbench_karp.boards.format import eps_label

DATASETS = ("cifar10", "cifar100", "imagenet")  # RobustBench's BenchmarkDataset
THREAT_DIRS = {"linf": "Linf", "l2": "L2"}  # RobustBench's ThreatModel, as its directory names
FULL_TEST_SET = {"cifar10": 10000, "cifar100": 10000, "imagenet": 5000}


def _percent(fraction: float) -> str:
    """0.897 -> '89.70'. Exact for k/n with n dividing 10,000 (our n of 1,000, 5,000 or 10,000)."""
    return f"{100 * fraction:.2f}"


def autoattack_accuracy(entry: dict[str, Any]) -> float | None:
    """Accuracy under AutoAttack alone: its cascade's last cumulative figure, with no other attack in it.

    None when the entry ran no AutoAttack. Where AutoAttack only ran after another attack in one
    cascade, that cascade's figure is the closest we have (never above AutoAttack's own).
    """
    def autoattack(part: str) -> bool:
        return part == "autoattack" or part.startswith("autoattack/")

    per_attack = entry.get("per_attack") or {}
    alone = [acc for label, acc in per_attack.items() if all(autoattack(p) for p in label.split("+"))]
    within = [acc for label, acc in per_attack.items() if any(autoattack(p) for p in label.split("+"))]
    return min(alone) if alone else (min(within) if within else None)


def _forward_passes(entry: dict[str, Any]) -> int | None:
    """1 for a model trained here by a defense that changes only the weights; None (unknown) otherwise."""
    if entry.get("forward_passes"):
        return entry["forward_passes"]
    known = catalog.facts()
    if entry["defense"] not in known["defenses"]:
        return None
    return None if entry["defense"] in known["purifiers"] else 1  # a purifier runs more


def _own_fields(entry: dict[str, Any]) -> dict[str, Any]:
    """What RobustBench asks about a model, for an entry evaluated here."""
    from_elsewhere = any(r["config"].get("source") for r in entry.get("records") or [])
    name = f"{entry['model']} / {entry['defense']}" + (f" ({entry['training']})" if entry.get("training") else "")
    attacks = ", ".join(entry.get("attacks") or [])
    return {"link": "", "name": name, "authors": "", "venue": "", "architecture": entry["model"], "reported": None,
            # Our defenses train on the dataset's own training split; a zoo or file model may not have.
            "additional_data": None if from_elsewhere else False,
            "footnote": f"Evaluated with karp-robust (entry {entry['entry_id']}): worst case over {attacks} on "
                        f"{entry['n']} test points."}


FIELD_ORDER = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
               "architecture", "eps", "clean_acc", "reported", "autoattack_acc", "external", "footnote", "unreliable")


def export_robustbench(entry: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(model_info dict, its path in RobustBench's repository) for a leaderboard entry.

    Raises:
        ValueError: the entry is on no RobustBench board (another dataset or norm, eps 0), or it
            ran no AutoAttack, the figure RobustBench ranks by.
    """
    dataset, norm = entry["dataset"], entry["norm"]
    if dataset not in DATASETS or norm not in THREAT_DIRS or not entry["eps"] > 0:
        raise ValueError(f"entry {entry['entry_id']} ({dataset}, {norm}, eps {eps_label(entry['eps'])}) is on no "
                         f"RobustBench board: RobustBench ranks {', '.join(DATASETS)} under Linf or L2")
    autoattack = autoattack_accuracy(entry)
    if autoattack is None:
        raise ValueError(f"entry {entry['entry_id']} ran no AutoAttack (attacks: {', '.join(entry['attacks'])}); "
                         "RobustBench ranks by it: run `karp-robust evaluate --protocol autoattack` first")
    record = next((r for r in entry.get("records") or [] if r["id"] in entry["record_ids"]), {})
    if entry.get("tool") == "robustbench" and record.get("model_info"):  # an import goes back as it came
        info = {k: v for k, v in record["model_info"].items() if k != "external"}
        info["eps"] = record.get("eps_written") or eps_label(entry["eps"])  # '0.031' stays '0.031'
    else:
        info = _own_fields(entry)
        info["eps"] = eps_label(entry["eps"])
        info["unreliable"] = bool(entry.get("flags"))  # our sanity checks flagged it
        if entry["n"] < FULL_TEST_SET[dataset]:
            info["footnote"] += f" RobustBench evaluates on {FULL_TEST_SET[dataset]}."
    if isinstance(entry.get("additional_data"), bool):
        info["additional_data"] = entry["additional_data"]
    info.update({"dataset": dataset, "number_forward_passes": _forward_passes(entry),
                 "clean_acc": _percent(entry["clean_accuracy"]), "autoattack_acc": _percent(autoattack)})
    if entry["robust_accuracy"] < autoattack:
        info["external"] = _percent(entry["robust_accuracy"])
    ordered = {k: info[k] for k in FIELD_ORDER if k in info}
    model_name = entry.get("model_id") or "<YourModelName>"
    return {**ordered, **info}, f"model_info/{dataset}/{THREAT_DIRS[norm]}/{model_name}.json"
