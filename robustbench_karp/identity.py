"""Identities that do not change when nothing that matters changed, and the conditions CPU numbers depend on.

    weights_sha256(model)     # a model is its weights: sorted keys, then name, dtype, shape and bytes
    cpu_conditions()          # threads, CPU capability, deterministic algorithms: recorded, never hashed

A checkpoint file also holds training wall-clock seconds, logs and history, so its file sha256
changes between two otherwise identical trainings; the canonical state_dict hash does not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch
from torch import nn


def weights_sha256(weights: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 over the canonical state_dict: keys sorted, then each key's name, dtype, shape and raw bytes.

    Non-tensor entries (e.g. a `_metadata` attribute) are ignored; a key prefix such as DDP's
    `module.` is part of the name, so strip it before hashing if the layout should not count.
    """
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    h = hashlib.sha256()
    for key in sorted(k for k, v in state.items() if isinstance(v, torch.Tensor)):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cpu_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:  # torch < 2.1
        return "unknown"


def cpu_conditions() -> dict[str, object]:
    """What decides a CPU number beyond the configuration: thread count, vector ISA, determinism."""
    return {"threads": torch.get_num_threads(), "cpu_capability": cpu_capability(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
