"""EvalConfig: everything that decides an evaluation's numbers, frozen; its hash is the record id.

    config = EvalConfig(model="smallcnn", dataset="mnist", defense={"name": "pgd-at", ...},
                        weights="<canonical state_dict sha256>", norm="linf", eps=0.3, n_examples=1000,
                        seed=0, batch_size=500, attacks=({"name": "autoattack", ...},), protocol="standard/1")
    config.id          # 16 hex digits, stable across machines, stores and checkpoint re-saves

`evaluate`, `compare`, `reproduce` and the leaderboard's grouping all work from it; the record
stores it whole under "config". What does not decide a number (paths, wall time, the training
log inside a checkpoint file) is not in it. The conditions CPU numbers also depend on (threads,
CPU capability) are recorded beside it, and `reproduce` restores them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from robustbench_karp.store import config_hash

SCHEMA = 2  # 1: the id hashed the checkpoint file's sha256 (before EvalConfig)


@dataclass(frozen=True)
class EvalConfig:
    model: str  # a registered name, robustbench:<ID>, <file>.py:<factory>, torchvision:<name>, or a Python model's name
    dataset: str
    defense: dict[str, Any]  # name and every option (the classifier's training defense for a plain model)
    weights: str  # weights_sha256 of the classifier
    defense_weights: str | None  # weights_sha256 of the defended model when the defense owns networks (a GAN)
    norm: str
    eps: float
    n_examples: int
    seed: int
    batch_size: int
    attacks: tuple[dict[str, Any], ...]  # every attack's full config, in run order, the adaptive ones included
    protocol: str | None = None  # the protocol requested ("standard/1"), None for a hand-picked attack set
    schema: int = SCHEMA
    source: dict[str, Any] | None = None  # a zoo, file, torchvision or Python model: its identity and normalization
    rng: str | None = None  # "per-batch/1": batch b's randomness from (seed, b) alone; None: one generator in order
    # Measured beside the cascade, never in it: a purifier's protocol run attacks every clean-correct point with
    # plain PGD too (the obfuscated-gradients check needs that figure); the robust accuracy ignores them.
    probes: tuple[dict[str, Any], ...] = ()
    # Networks attacks train for themselves before the evaluation (AdvGAN's generator): attack name -> the
    # generator's sha256 and the recipe that trained it. Hardware-dependent, so part of the identity.
    attack_networks: dict[str, Any] | None = None
    certify: str | None = None  # "ibp" or "crown-ibp": certified points skip every attack (evaluation/certified.py)

    def __post_init__(self):
        object.__setattr__(self, "attacks", tuple(dict(a) for a in self.attacks))
        object.__setattr__(self, "probes", tuple(dict(a) for a in self.probes))
        object.__setattr__(self, "eps", float(self.eps))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["attacks"] = [dict(a) for a in self.attacks]
        out["probes"] = [dict(a) for a in self.probes]
        for key in ("source", "rng", "probes", "attack_networks", "certify"):  # unset: ids stay what they were
            if not out[key]:                                                   # before these fields existed
                del out[key]
        return out

    @property
    def id(self) -> str:
        return config_hash(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalConfig:
        """The inverse of to_dict; unknown or missing keys are errors (a record of another version)."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        unknown, missing = sorted(set(data) - names), sorted(required - set(data))
        if unknown or missing:
            raise ValueError("not an evaluation config of this version"
                             + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                             + (f"; missing: {', '.join(missing)}" if missing else ""))
        if data.get("schema", SCHEMA) != SCHEMA:
            raise ValueError(f"evaluation config schema {data.get('schema')} (this version reads {SCHEMA})")
        return cls(**data)
