"""The per-example worst case over an entry's records: which records combine, their ANDed masks, intervals.

Records on identical test points combine: a point is robust only if every record's robust mask keeps
it (and it is classified correctly). A record on a subset or a superset of those points still counts where
they meet; records on more or other points are also measured by themselves (partial_measurements).
Used by entries.build_entries; pure functions of the records. Also what an entry's records cost together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from robustbench_karp.evaluation.cost import attack_cost

Z95 = 1.959964


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the proportion k/n (95% for the default z), as fractions.

    Unlike the normal approximation it stays inside [0, 1] and does not collapse at k = 0 or k = n.
    n = 0 carries no evidence, so the interval is the whole range.
    """
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # The exact bounds at k = 0 and k = n are 0 and 1; rounding would leave +-1e-17 there.
    return (0.0 if k == 0 else max(0.0, center - half)), (1.0 if k == n else min(1.0, center + half))


def _combinable_sets(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Records that can be ANDed per example (masks on identical test points); the others stand alone."""
    by_indices: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    alone = []
    for r in records:
        if r.get("robust_mask") and r.get("clean_mask") and r.get("indices") is not None:
            by_indices.setdefault(tuple(r["indices"]), []).append(r)
        else:
            alone.append([r])
    return list(by_indices.values()) + alone


def _set_size(records: list[dict[str, Any]]) -> int:
    first = records[0]
    return len(first["indices"]) if first.get("robust_mask") else int(first["config"].get("n_examples") or 0)


def choose_set(records: list[dict[str, Any]], prefer: Callable[[list[dict[str, Any]]], bool] = lambda s: False
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(records the entry is computed from, records that overlap its points, records left out).

    The chosen set is one that prefer() accepts (an evaluation protocol ran on it), if any; then the one
    with the most points, the most records, the lowest robust accuracy (a tie never goes to the
    favourable side). A record on a subset or a superset of those points still counts where they meet:
    a point it broke is not robust (per-example worst case). Only records on other points are left out.
    """
    sets = _combinable_sets(records)
    chosen = max(sets, key=lambda s: (prefer(s), _set_size(s), len(s), -min(r["robust_accuracy"] for r in s),
                                      [r["id"] for r in s]))
    points = set(chosen[0].get("indices") or []) if chosen[0].get("robust_mask") else set()
    overlapping, left_out = [], []
    for s_ in sets:
        if s_ is chosen:
            continue
        own = set(s_[0]["indices"]) if s_[0].get("robust_mask") else set()
        inside = points and own and (own <= points or points <= own)
        (overlapping if inside else left_out).extend(s_)
    return chosen, overlapping, left_out


def _subset_mask(record: dict[str, Any], field: str, positions: dict[int, int], n: int) -> int:
    """An overlapping record's mask on the chosen points: its own bits where it ran, 1 (no evidence) elsewhere."""
    mask = (1 << n) - 1
    for index, bit in zip(record["indices"], record[field]):
        if bit == "0" and index in positions:  # a superset's points outside the chosen ones say nothing here
            mask &= ~(1 << (n - 1 - positions[index]))
    return mask


def _and_masks(records: list[dict[str, Any]], field: str, n: int) -> int:
    """The AND of the records' '0'/'1' masks, as an int whose bits are the test points."""
    combined = (1 << n) - 1
    for r in records:
        mask = r[field]
        if len(mask) != n or set(mask) - {"0", "1"}:
            raise ValueError(f"record {r['id']}: {field} must be {n} characters of '0'/'1' (one per index)")
        combined &= int(mask, 2)
    return combined


def worst_case_counts(chosen: list[dict[str, Any]], subset: list[dict[str, Any]] = ()) -> tuple[int, int, int, list[str]]:
    """(correct clean, robust in the worst case, n, notes) of the chosen records and those overlapping their points."""
    first = chosen[0]
    n = _set_size(chosen)
    if not first.get("robust_mask"):  # an external or mask-less record: only its reported fractions
        return round(first["clean_accuracy"] * n), round(first["robust_accuracy"] * n), n, []
    if n == 0:
        return 0, 0, 0, []
    clean, robust = _worst_case_masks(chosen, subset, n)
    notes = []
    if len({r["clean_mask"] for r in chosen}) > 1:
        notes.append("clean predictions differ between records (a randomized model?): clean accuracy is their AND")
    inner = [r["id"] for r in subset if len(r["indices"]) < n]
    outer = [r["id"] for r in subset if len(r["indices"]) >= n]
    if inner:
        notes.append(f"record(s) {', '.join(inner)} ran on a subset of the {n} test points; "
                     "the points they broke count as broken")
    if outer:
        notes.append(f"record(s) {', '.join(outer)} ran on more points than the {n} ranked here; the points among "
                     "these they broke count as broken")
    return clean.bit_count(), robust.bit_count(), n, notes


def _worst_case_masks(chosen: list[dict[str, Any]], subset: list[dict[str, Any]], n: int) -> tuple[int, int]:
    """(clean, robust) masks as ints over the chosen points: the AND of every record's, overlapping ones included."""
    clean = _and_masks(chosen, "clean_mask", n)
    robust = _and_masks(chosen, "robust_mask", n) & clean
    positions = {index: i for i, index in enumerate(chosen[0]["indices"])}
    for r in subset:
        robust &= _subset_mask(r, "robust_mask", positions, n)
    return clean, robust


def certified_counts(chosen: list[dict[str, Any]], subset: list[dict[str, Any]] = ()
                     ) -> tuple[int, list[str], int] | None:
    """(points proven robust, the methods that proved them, conflicts) over the entry's points, or None when no
    record certified.

    A certificate is a proof whoever made it, so a point certified by any record is certified (an OR), unless
    another record's attack broke it: such a conflict means a certifier or an attack is wrong. It is counted
    apart, and the point is not counted certified (certified never exceeds robust)."""
    certifying = [r for r in [*chosen, *subset] if r.get("certified_mask")]
    if not certifying or not chosen[0].get("robust_mask"):
        return None
    n = _set_size(chosen)
    positions = {index: i for i, index in enumerate(chosen[0]["indices"])}
    proven = 0
    for r in certifying:
        for index, bit in zip(r["indices"], r["certified_mask"]):
            if bit == "1" and index in positions:
                proven |= 1 << (n - 1 - positions[index])
    methods = sorted({str((r.get("certification") or {}).get("method") or r["config"].get("certify")) for r in certifying})
    robust = _worst_case_masks(chosen, subset, n)[1]
    return (proven & robust).bit_count(), methods, (proven & ~robust).bit_count()


def partial_measurements(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records beside an entry's own points (more, or other ones), each set of identical points measured by itself.

    These are the same model's other evaluations: shown beside the entry, never ranking or demoting it.
    Largest set first.
    """
    out = []
    for s in _combinable_sets(records):
        k_clean, k_robust, n, _ = worst_case_counts(s)
        if n:
            out.append({"record_ids": [r["id"] for r in s], "n": n, "attacks": attack_names(s),
                        "clean_accuracy": k_clean / n, "robust_accuracy": k_robust / n})
    return sorted(out, key=lambda m: (-m["n"], m["record_ids"]))


def accuracy_per_attack(records: list[dict[str, Any]]) -> dict[str, float]:
    """Accuracy after each attack; a cascade [a, b] gives 'a' and the cumulative 'a+b'. Repeats keep the worst."""
    out: dict[str, float] = {}
    for r in records:
        per_attack = r.get("per_attack") or {}
        order = list(r.get("attack_order") or per_attack)
        for i, name in enumerate(order):
            if name in per_attack:
                label = "+".join(order[: i + 1])
                out[label] = min(float(per_attack[name]), out.get(label, math.inf))
    return dict(sorted(out.items()))


def attack_names(records: list[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}  # insertion-ordered set: first appearance, oldest record first
    for r in records:
        names.update(dict.fromkeys(r.get("attack_order") or r.get("per_attack") or []))
    return list(names)


def entry_cost(records: list[dict[str, Any]], n: int) -> dict[str, Any] | None:
    """What a leaderboard entry's records cost together: wall time, and passes per test point of the entry.

    Wall time is the sum of the records' evaluations (elapsed_seconds), each on its own device. The
    passes are None unless every record was counted (records from before the counts have none);
    attacks of the same name in several records add up. None for records with no timing (imports).
    """
    walls = [r.get("elapsed_seconds") for r in records]
    if not records or not n or any(w is None for w in walls):
        return None
    costs = [r.get("cost") for r in records]
    out = {"wall_seconds": float(sum(walls)), "devices": sorted({str(r.get("device") or "?") for r in records}),
           "backward_per_point": None, "forward_per_point": None, "per_attack": {}}
    if not all(costs):
        return out
    per_attack: dict[str, dict[str, float]] = {}
    for cost in costs:
        for name, spent in cost.get("per_attack", {}).items():
            total = per_attack.setdefault(name, {"attacked_points": 0, "forward_passes": 0, "backward_passes": 0,
                                                 "wall_seconds": 0.0})
            for key in total:
                total[key] += spent[key]
    out.update(backward_per_point=sum(c["backward_passes"] for c in costs) / n,
               forward_per_point=sum(c["forward_passes"] for c in costs) / n,
               per_attack={name: attack_cost(int(t["attacked_points"]), int(t["forward_passes"]),
                                             int(t["backward_passes"]), t["wall_seconds"])
                           for name, t in sorted(per_attack.items())})
    return out
