"""Networks an attack or defense trains for itself (AdvGAN's generator, Defense-GAN's GAN): their store cache.

    KARP_HOME/generators/<kind>-<hash>.pt     the weights, written atomically, loaded with weights_only=True
    KARP_HOME/generators/<kind>-<hash>.json   {"sha256": of the .pt file, "config": what was hashed}

The hash is `config_hash` of everything that determines the weights (the target's checkpoint
sha256, the dataset, the options, the seed), so a different target or option is a different file.
Before a cached file is used its sha256 must match the one recorded when it was written: a
truncated or modified file is reported with a logging warning and trained again.
Training happens under a file lock on the path (`locks.file_lock`): of concurrent processes that
need the same network one trains it, the others wait and then load its file.

Within a process, networks are memoized by (path, recorded sha256, device), so an attack called
batch after batch reads the file once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_karp.store import (
    CheckpointError,
    atomic_write_text,
    config_hash,
    file_sha256,
    karp_home,
    load_checkpoint,
    save_checkpoint,
)
from robustbench_karp.store.locks import file_lock

log = logging.getLogger(__name__)
_MEMO: dict[tuple[str, str, str], nn.Module] = {}


def network_path(kind: str, config: dict[str, Any]) -> Path:
    return karp_home() / "generators" / f"{kind}-{config_hash(config)}.pt"


def recorded_sha256(path: Path) -> str | None:
    """The sha256 written next to path when it was stored, or None (no index, or an unreadable one)."""
    index = Path(path).with_suffix(".json")
    try:
        return str(json.loads(index.read_text())["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear_memo() -> None:
    """Forget the networks loaded in this process (the next use reads, and verifies, the file again)."""
    _MEMO.clear()


def _load_verified(path: Path, build: Callable[[], nn.Module], warn: bool = True) -> tuple[nn.Module, str] | None:
    """The cached network if its file matches the recorded sha256; None (with a warning if warn) otherwise."""
    if not path.is_file():
        return None
    recorded = recorded_sha256(path)
    actual = file_sha256(path)
    if recorded is None or actual != recorded:
        if not warn:  # outside the lock a writer may sit between the .pt and its .json: look again under it
            return None
        log.warning("cached network %s is corrupted or unverifiable (sha256 %s, recorded %s); training it again",
                    path, actual[:16], (recorded or "none")[:16])
        return None
    try:
        payload = load_checkpoint(path)
        net = build()
        net.load_state_dict(payload["state_dict"], strict=True)
    except (CheckpointError, KeyError, RuntimeError) as e:
        if not warn:
            return None
        log.warning("cached network %s cannot be loaded (%s); training it again", path, str(e).splitlines()[0][:200])
        return None
    return net, actual


def obtain(path: Path, config: dict[str, Any], build: Callable[[], nn.Module], train: Callable[[nn.Module], None],
           device: torch.device) -> tuple[nn.Module, str]:
    """(network on device, sha256 of its file): memoized, else loaded and verified, else built, trained and stored.

    build() returns a freshly initialized network (on any device); train(net) trains it in place.
    The returned network must be treated as read-only: it is shared by every later caller.
    """
    path = Path(path)
    recorded = recorded_sha256(path)
    key = (str(path), recorded or "", str(device))
    if recorded is not None and key in _MEMO:
        return _MEMO[key], recorded
    found = _load_verified(path, build, warn=False)
    if found is None:
        with file_lock(path):  # one process trains; the others wait here, then load its file
            found = _load_verified(path, build)
            if found is None:
                found = _train_and_store(path, config, build, train, device)
    net, sha = found
    net = net.to(device).requires_grad_(False).eval()  # our own network: no BN/dropout surprises at use
    _MEMO[(str(path), sha, str(device))] = net
    return net, sha


def _train_and_store(path: Path, config: dict[str, Any], build: Callable[[], nn.Module],
                     train: Callable[[nn.Module], None], device: torch.device) -> tuple[nn.Module, str]:
    log.info("training %s", path.name)
    net = build().to(device)
    train(net)
    save_checkpoint(path, {"config": config, "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}})
    sha = file_sha256(path)
    atomic_write_text(path.with_suffix(".json"), json.dumps({"sha256": sha, "config": config}, sort_keys=True,
                                                            default=str, indent=1))
    return net, sha
