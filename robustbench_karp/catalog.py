"""What the registries hold, for commands that need no model, without importing torch.

    from robustbench_karp import catalog
    catalog.facts()["attacks"]                       # ['advgan', 'autoattack', ...]
    catalog.protocol_requirements({"name": "pgd-at", "steps": 5})   # {'standard/1': [attack config, ...]}

`karp-robust list` and `leaderboard build` must answer in well under 2 s, and importing torch
alone takes about 2 s on a busy 2-core machine. The facts they need (registered names, each
dataset's default eps, each defense's option defaults, which attack configs a protocol requires of
a defense) are computed once by the real registries, which import torch, and kept in
KARP_HOME/cache/catalog.json. The cache is keyed by a fingerprint of every source file of the
package (name, size, mtime) and of the installed torch and torchattacks versions; a stale,
unreadable or missing cache is recomputed. There is no second list to keep in step: adding an
attack is still one file plus one import line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any

from robustbench_karp.store import atomic_write_text, karp_home

log = logging.getLogger(__name__)
SCHEMA = 3  # 3: purifiers listed; requirements computed by evaluation.protocols
_PACKAGES = ("robustbench_karp", "robustbench_karp.attacks", "robustbench_karp.defenses")


def cache_path() -> Path:
    return karp_home() / "cache" / "catalog.json"


def source_fingerprint() -> str:
    """sha256 over the package's source files (path, size, mtime) and the torch/torchattacks versions."""
    h = hashlib.sha256(f"catalog/{SCHEMA}".encode())
    for package in _PACKAGES:
        spec = importlib.util.find_spec(package)  # locates the package; imports only its parent
        for folder in sorted(spec.submodule_search_locations or []):
            for path in sorted(Path(folder).rglob("*.py")):
                stat = path.stat()
                h.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    for dist in ("torch", "torchattacks"):
        try:
            h.update(f"{dist}={metadata.version(dist)}\n".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{dist}=none\n".encode())
    return h.hexdigest()


def _plain(value: Any) -> Any:
    """A value as the cache (JSON) holds it, so that cached and fresh answers compare equal."""
    return json.loads(json.dumps(value, default=str))


def compute_facts() -> dict[str, Any]:
    """The facts, from the registries themselves (imports torch)."""
    import dataclasses

    from robustbench_karp.attacks import ATTACKS
    from robustbench_karp.attacks.torchattacks_adapter import NORMS, torchattacks_names
    from robustbench_karp.data import DATASETS
    from robustbench_karp.defenses import DEFENSES, Defense
    from robustbench_karp.models import MODELS

    attacks = ATTACKS.names()
    return _plain({
        "models": MODELS.names(),
        "datasets": {name: dict(DATASETS.get(name).default_eps) for name in DATASETS.names()},
        "attacks": attacks,
        "single_step": [a for a in attacks if getattr(ATTACKS.get(a), "single_step", False)],
        "black_box": [a for a in attacks if getattr(ATTACKS.get(a), "black_box", False)],
        "torchattacks": torchattacks_names(),
        "torchattacks_norms": {n: list(NORMS[n]) if n in NORMS else None for n in torchattacks_names()},
        "defenses": {name: {f.name: f.default for f in dataclasses.fields(DEFENSES.get(name))
                            if f.default is not dataclasses.MISSING}
                     for name in DEFENSES.names()},
        "purifiers": [name for name in DEFENSES.names() if DEFENSES.get(name).wrap is not Defense.wrap],
    })


class _Cache:
    """KARP_HOME/cache/catalog.json, read once per process; rewritten (atomically) when it learns something."""

    def __init__(self):
        self.fingerprint: str | None = None
        self.data: dict[str, Any] | None = None

    def load(self) -> dict[str, Any]:
        current = source_fingerprint()
        if self.data is not None and self.fingerprint == current:
            return self.data
        try:
            data = json.loads(cache_path().read_text())
            if data.get("fingerprint") != current or not isinstance(data.get("facts"), dict):
                raise ValueError("stale")
        except (OSError, ValueError, AttributeError):
            data = {"fingerprint": current, "facts": None, "requirements": {}}
        data.setdefault("requirements", {})
        self.fingerprint, self.data = current, data
        return data

    def save(self) -> None:
        try:
            atomic_write_text(cache_path(), json.dumps(self.data, sort_keys=True))
        except OSError as e:  # a read-only KARP_HOME: answers are computed each time, nothing breaks
            log.debug("catalog cache not written: %s", e)


_cache = _Cache()


def facts() -> dict[str, Any]:
    """Registered models, datasets (with their default eps), attacks (single-step, black-box), torchattacks
    classes (with the norm each attacks and whether it is bounded), and defenses with their option defaults."""
    data = _cache.load()
    if data["facts"] is None:
        data["facts"] = compute_facts()
        _cache.save()
    return data["facts"]


def warm() -> None:
    """Fill a stale cache when the registries are already imported (after evaluate, train, ...), so that a
    following `list` needs no torch import. A no-op otherwise: never imports torch. (`leaderboard build`
    also needs each entry's protocol requirements, cached per defense config the first time it meets one.)"""
    import sys

    needed = ("robustbench_karp.attacks", "robustbench_karp.defenses", "robustbench_karp.models",
              "robustbench_karp.data", "robustbench_karp.evaluation.protocols")
    if all(name in sys.modules for name in needed):
        try:
            facts()
        except Exception as e:  # a finished command never fails for its cache: the next `list` computes it
            log.debug("catalog cache not warmed: %s", e)


def protocol_requirements(defense: dict[str, Any] | None) -> dict[str, list[dict[str, Any]] | None]:
    """protocol label -> the attack configs a record of this defense config must hold (cached per config)."""
    data = _cache.load()
    key = json.dumps(defense, sort_keys=True, default=str)
    if key not in data["requirements"]:
        from robustbench_karp.evaluation.protocols import requirements

        data["requirements"][key] = _plain(requirements(defense))
        _cache.save()
    return data["requirements"][key]
