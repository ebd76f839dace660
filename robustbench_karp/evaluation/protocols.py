"""Evaluation protocols: named, versioned attack sets with fixed options.

    karp-robust evaluate --model smallcnn --dataset mnist --defense pgd-at --protocol standard

A protocol fixes every option of its attacks, so "ran standard/1" means the same thing on every
record. `standard/1` is AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square; 100
iterations, 5000 queries) plus, for a defense with preprocessing or randomness, the adaptive
attacks the defense declares (transfer-PGD, BPDA-PGD with EOT): an honest evaluation of a purifier
needs them. They run first (harness.plan_evaluation), so AutoAttack runs only on the points they
left: a purifier's forward is costly. Another order would be another random draw of the evaluation
(attacks draw their random starts for the points they are given, so single points can differ),
which is why a record keeps its attack order and `reproduce` follows it. A leaderboard board ranks
only entries whose records cover its protocol on the same test points; the others are partial
evaluations, upper bounds on robust accuracy.
Changing a protocol's attacks means a new version (`standard/2`); old records keep their version.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from robustbench_karp.registry import Registry

if TYPE_CHECKING:
    from robustbench_karp.attacks import Attack


@dataclass(frozen=True)
class Protocol:
    name: str  # e.g. "standard"
    version: int
    attacks: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]  # (registered name, fixed options)
    description: str

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"

    def build_attacks(self) -> list[Attack]:
        from robustbench_karp.attacks import build_attack  # here: the leaderboard reads labels without torch

        return [build_attack(name, dict(options)) for name, options in self.attacks]

    def required_configs(self, defense: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Every attack config a record must hold to satisfy this protocol (the defense's adaptive ones included)."""
        from robustbench_karp.defenses import build_defense

        attacks = self.build_attacks()
        if defense and defense.get("name"):
            options = {k: v for k, v in defense.items() if k != "name"}
            attacks += build_defense(defense["name"], options).adaptive_attacks()
        return [a.config() for a in attacks]


PROTOCOLS: Registry[Protocol] = Registry("protocol")
PROTOCOLS.register("standard")(Protocol(
    "standard", 1, (("autoattack", (("square_queries", 5000), ("steps", 100))),),
    "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square), plus the defense's adaptive attacks (BPDA, EOT, transfer)"))
DEFAULT_PROTOCOL = "standard"


def get_protocol(name: str) -> Protocol:
    """'standard' (the newest version) or 'standard/1' (an exact version)."""
    base, _, version = name.partition("/")
    protocol = PROTOCOLS.get(base)
    if version and version != str(protocol.version):
        raise ValueError(f"protocol {name!r}: this version of karp-robust knows {protocol.label} only")
    return protocol


def requirements(defense: dict[str, Any] | None) -> dict[str, list[dict[str, Any]] | None]:
    """protocol label -> the attack configs a record of this defense config must hold (imports torch).

    None for a protocol that cannot judge the defense (a defense or option this version does not know).
    """
    out: dict[str, list[dict[str, Any]] | None] = {}
    for name in PROTOCOLS.names():
        protocol = PROTOCOLS.get(name)
        try:
            out[protocol.label] = [_plain(c) for c in protocol.required_configs(defense)]
        except (KeyError, ValueError):
            out[protocol.label] = None
    return out


def satisfied(attack_configs: Iterable[dict[str, Any]], required: dict[str, list[dict[str, Any]] | None]) -> list[str]:
    """Labels of the protocols whose every required attack (with its exact options) is among attack_configs."""
    have = {canonical(c) for c in attack_configs}
    return [label for label, configs in sorted(required.items())
            if configs is not None and all(canonical(c) in have for c in configs)]


def _plain(value: Any) -> Any:
    """A value as JSON holds it (tuples as lists), so stored and fresh configs compare equal."""
    return json.loads(json.dumps(value, default=str))


def canonical(config: dict[str, Any]) -> str:
    """One attack config as a comparable string: keys sorted, tuples as lists, 100.0 as 100."""
    def number(value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, list):
            return [number(v) for v in value]
        if isinstance(value, dict):
            return {k: number(v) for k, v in value.items()}
        return value

    return json.dumps(number(_plain(config)), sort_keys=True)
