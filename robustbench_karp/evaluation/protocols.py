"""Evaluation protocols: named, versioned attack sets with fixed options.

    karp-robust evaluate --model smallcnn --dataset mnist --defense pgd-at --protocol standard     # the newest: standard/3
    karp-robust evaluate --model smallcnn --dataset mnist --defense pgd-at --protocol autoattack   # exactly standard/2

A protocol fixes every option of its attacks, so "ran standard/1" means the same thing on every
record. `standard/1` is AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square; 100
iterations, 5000 queries) plus, for a defense with preprocessing or randomness, the adaptive
attacks the defense declares (transfer-PGD, BPDA-PGD with EOT): an honest evaluation of a purifier
needs them. They run first (harness.plan_evaluation), so AutoAttack runs only on the points they
left: a purifier's forward is costly. Another order would be another random draw of the evaluation
(attacks draw their random starts for the points they are given, so single points can differ),
which is why a record keeps its attack order and `reproduce` follows it.

`standard/2` runs the same attacks, so its records cover standard/1 too, and adds two things:
- a purifier's run also measures plain PGD on every clean-correct point, beside the cascade (a
  probe): the non-adaptive accuracy the obfuscated-gradients check compares with the adaptive one;
- where the model allows it (deterministic, and every layer bounded: evaluation/certified.py),
  CROWN-IBP certification runs first, and certified points skip every attack: a point proven
  robust cannot be broken, so the robust accuracy means what standard/1's means.

`standard/3` replaces AutoAttack with `strong` (attacks/strong.py: APGD-CE, targeted APGD over
MALT-ranked targets, Square on every point still standing, and escalation when the evidence asks for
it), and keeps the rest of standard/2: certification first where the model allows it, the defense's
adaptive attacks, a purifier's plain-PGD probe. The adaptive attacks still run before `strong`, as
they run before AutoAttack in standard/1-2: on a purifier they are the cheap attacks that break it
(BPDA, transfer), and `strong` on the gradients a purifier obfuscates would escalate to its costliest
budget on every point they would have broken; on any other defense there are none, so the order is
certification, `strong`. The verdict is the per-point worst case whatever the order.

`autoattack` names standard/2 for good (ALIASES): `--protocol autoattack` runs exactly AutoAttack
standard, for RobustBench submissions and side-by-side comparison, and its record is the record
`--protocol standard/2` makes (same EvalConfig, same id). It takes no added attack (check_additions).

A board ranks only entries whose records cover a protocol on the same test points; the others are
partial evaluations, upper bounds on robust accuracy. What a protocol required of a record is frozen
into the record when it runs (`protocol_requirements`), and builds read it from there. Changing a
protocol's attacks, or a defense's adaptive attacks, means a new version; old records keep theirs
(tests/test_catalog.py pins every version's requirements).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from robustbench_karp.registry import Registry

if TYPE_CHECKING:
    from robustbench_karp.attacks import Attack

Options = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Protocol:
    name: str  # e.g. "standard"
    version: int
    attacks: tuple[tuple[str, Options], ...]  # (registered name, fixed options), in run order
    description: str
    probes: tuple[tuple[str, Options], ...] = ()  # measured beside the cascade on a purifier (one with adaptive attacks)
    certify: str | None = None  # certification run first where the model allows it

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"

    def build_attacks(self) -> list[Attack]:
        from robustbench_karp.attacks import build_attack  # here: the leaderboard reads labels without torch

        return [build_attack(name, dict(options)) for name, options in self.attacks]

    def adaptive_attacks(self, defense: dict[str, Any] | None) -> list[Attack]:
        from robustbench_karp.defenses import build_defense

        if not defense or not isinstance(defense, dict) or not defense.get("name"):
            return []
        return build_defense(defense["name"], {k: v for k, v in defense.items() if k != "name"}).adaptive_attacks()

    def build_probes(self, defense: dict[str, Any] | None) -> list[Attack]:
        """The probes a record of this defense measures: none unless the defense needs adaptive attacks."""
        from robustbench_karp.attacks import build_attack

        if not self.probes or not self.adaptive_attacks(defense):
            return []
        return [build_attack(name, dict(options)) for name, options in self.probes]

    def required_configs(self, defense: dict[str, Any] | None) -> list[dict[str, Any]]:
        """Every attack config a record must hold to satisfy this protocol: its attacks, the defense's adaptive
        ones, and its probes (as {"probe": config}, matched against the record's config.probes)."""
        attacks = self.build_attacks() + self.adaptive_attacks(defense)
        return [a.config() for a in attacks] + [{"probe": p.config()} for p in self.build_probes(defense)]


PROTOCOLS: Registry[Protocol] = Registry("protocol")
_AUTOATTACK = (("autoattack", (("square_queries", 5000), ("steps", 100))),)
PROTOCOLS.register("standard/1")(Protocol(
    "standard", 1, _AUTOATTACK,
    "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square), plus the defense's adaptive attacks (BPDA, EOT, transfer)"))
PROTOCOLS.register("standard/2")(Protocol(
    "standard", 2, _AUTOATTACK,
    "standard/1's attacks; a purifier's plain-PGD accuracy measured beside them; CROWN-IBP certification first "
    "where the model allows it (certified points skip the attacks)",
    probes=(("pgd", ()),), certify="crown-ibp"))
PROTOCOLS.register("standard/3")(Protocol(
    "standard", 3, (("strong", ()),),
    "CROWN-IBP certification first where the model allows it; `strong` (APGD-CE, MALT-ranked targeted APGD, Square, "
    "escalation) instead of AutoAttack; the defense's adaptive attacks; a purifier's plain-PGD accuracy beside them",
    probes=(("pgd", ()),), certify="crown-ibp"))
DEFAULT_PROTOCOL = "standard"
# Names that stand for one version for good, and take no added attack: "autoattack" is AutoAttack standard, as
# RobustBench ranks by it, whatever the newest standard version runs.
ALIASES = {"autoattack": "standard/2"}


def check_additions(name: str | None, attacks_added: bool) -> None:
    """A one-line error for attacks added to a protocol that must run exactly as it is (an alias)."""
    if name in ALIASES and attacks_added:
        raise ValueError(f"--protocol {name} runs exactly {ALIASES[name]} (AutoAttack standard) and takes no --attack: "
                         f"drop --attack, or use --protocol standard/2 --attack ...")


def get_protocol(name: str) -> Protocol:
    """'standard' (its newest version), 'standard/1' (an exact version) or an alias ('autoattack': standard/2)."""
    name = ALIASES.get(name, name)
    if "/" in name:
        return PROTOCOLS.get(name)
    versions = [PROTOCOLS.get(label) for label in PROTOCOLS.names() if label.split("/")[0] == name]
    if not versions:
        PROTOCOLS.get(name)  # UnknownName, listing the labels
    return max(versions, key=lambda p: p.version)


def record_configs(config: dict[str, Any]) -> list[dict[str, Any]]:
    """What a record's EvalConfig offers a protocol: its attacks, and its probes as {"probe": config}."""
    return [*(config.get("attacks") or []), *({"probe": p} for p in config.get("probes") or [])]


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
    """Labels of the protocols whose every required attack (with its exact options) is among attack_configs.

    A protocol that requires nothing (None: it does not apply; [] only from an edited record) is never satisfied.
    """
    have = {canonical(c) for c in attack_configs}
    return [label for label, configs in sorted(required.items())
            if configs and all(canonical(c) in have for c in configs)]


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
