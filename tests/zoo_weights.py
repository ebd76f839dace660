"""Deterministic weights from (key, shape) alone, shared by tests/test_zoo.py and benchmarks/robustbench_parity.py.

Two networks with the same state_dict layout get identical weights without exchanging a checkpoint:
RobustBench's own network (in the parity script) and ours (in the test). Scales keep a deep residual
network's logits finite: weights ~ N(0, 1/fan_in), BatchNorm scale in [0.5, 1.5], running_var in [0.5, 1.5].
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

# Input normalization buffers RobustBench keeps inside its networks; their values come from its code, not from here.
NORMALIZATION_KEYS = ("mu", "sigma", "mean", "std", "normalize.mean", "normalize.std")


def deterministic_tensor(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(f"{key}|{tuple(shape)}".encode()).digest()[:8], "little") >> 1
    gen = torch.Generator().manual_seed(seed)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.long)
    if leaf == "running_var" or (leaf == "weight" and len(shape) == 1):  # BatchNorm: positive variance and scale
        return 0.5 + torch.rand(shape, generator=gen)
    if len(shape) >= 2:  # conv or linear weight
        return torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
    return 0.1 * torch.randn(shape, generator=gen)  # biases, running_mean


@torch.no_grad()
def fill_deterministic(model: nn.Module, key_prefix: str = "") -> nn.Module:
    """Overwrite every tensor of model.state_dict() except normalization buffers.

    key_prefix is stripped before seeding, so RobustBench's ImageNet Sequential(normalize, model) ("model.")
    gets the same weights as the bare torchvision network.
    """
    for key, tensor in model.state_dict().items():
        name = key.removeprefix(key_prefix)
        if name not in NORMALIZATION_KEYS:
            tensor.copy_(deterministic_tensor(name, tuple(tensor.shape)))
    return model


def layout_hash(shapes: dict[str, tuple[int, ...]]) -> str:
    """sha256 of the sorted (key, shape) list: equal hashes mean the same state_dict layout."""
    text = "\n".join(f"{k} {list(shapes[k])}" for k in sorted(shapes))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
