"""Networks an attack or defense trains for itself (AdvGAN's generator, Defense-GAN's GAN): the store cache
and the few training helpers they share.

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

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_karp.data import ImageSet
from robustbench_karp.locks import file_lock
from robustbench_karp.progress import progress
from robustbench_karp.store import (
    CheckpointError,
    atomic_write_text,
    config_hash,
    file_sha256,
    karp_home,
    load_checkpoint,
    save_checkpoint,
)

log = logging.getLogger(__name__)
_MEMO: dict[tuple[str, str, str], nn.Module] = {}


def fingerprint(module: nn.Module) -> str:
    """sha256 of a module's state_dict (names, dtypes, shapes and values): identifies weights with no file."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


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


# --- training helpers --------------------------------------------------------------------------

def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """build() on the CPU with the CPU RNG seeded, then restored: reproducible initialization, global RNG untouched.

    Only the CPU generator is seeded (torch.manual_seed would also reseed every CUDA generator,
    which fork_rng(devices=[]) does not restore).
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return build()


def gradient_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, module: nn.Module) -> None:
    """A step on module's parameters only: autograd.grad, so no other network's .grad is touched."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p, g in zip(params, torch.autograd.grad(loss, params)):
        p.grad = g
    optimizer.step()


def training_batches(data: ImageSet, n: int, batch_size: int, epochs: int, seed: int,
                     desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of the first n images, reshuffled each epoch by a private generator, under a progress bar."""
    gen = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(n / batch_size)
    orders = (torch.randperm(n, generator=gen).split(batch_size) for _ in range(epochs))
    flat = (idx for order in orders for idx in order)
    for idx in progress(flat, total=epochs * per_epoch, desc=desc):
        yield data.batch(idx)
