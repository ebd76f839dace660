"""Build a zoo entry's backbone and turn a RobustBench download into exactly that backbone's state_dict.

What RobustBench's load_model tolerates, done once for every family:
  - wrappers: {"state_dict": sd}; {"last": sd, "best": sd} (Kireev2021Effectiveness_*,
    Andriushchenko2020Understanding), where it loads "last";
  - key prefixes: "module." (DataParallel) and then "model." (Chen2020Efficient; ImageNet's
    Sequential(normalize, model));
  - normalization buffers (the family's normalization_keys): checked against the entry's mean/std, dropped;
  - entries outside the network (the family's ignored_prefixes): dropped;
  - BatchNorm counters missing from checkpoints older than PyTorch 0.4.1: filled with 0 (eval never reads them).
Anything else that does not fit is a ZooError, never a silent strict=False.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from robustbench_karp.registry import UnknownName
from robustbench_karp.store.checkpoint_io import CheckpointError, state_dict_in
from robustbench_karp.zoo.base import FAMILIES, Family, ZooEntry, ZooError

WRAPPERS = ("state_dict", "last")
PREFIXES = ("module.", "model.")
TOLERANCE = 1e-6


def family_of(entry: ZooEntry) -> Family:
    try:
        return FAMILIES.get(entry.family)
    except UnknownName as e:
        raise ZooError(str(e)) from None


def build_backbone(entry: ZooEntry) -> nn.Module:
    """RobustBench's network for entry, without input normalization (put Normalize(entry.mean, entry.std) in front).

    Built on the current default device, so `with torch.device("meta"):` gives the layout without memory.
    """
    try:
        return family_of(entry).build(**entry.options)
    except (TypeError, ValueError) as e:
        raise ZooError(f"{entry.model_id}: bad options for {entry.family}: {e}") from None


def expected_shapes(entry: ZooEntry) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # the layout alone, without allocating a WRN-70-16
        return {k: tuple(v.shape) for k, v in build_backbone(entry).state_dict().items()}


def strip_prefixes(state: Mapping) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        new = key
        for prefix in PREFIXES:
            new = new.removeprefix(prefix)
        if new in out:
            raise ZooError(f"checkpoint has both {key} and another key that also becomes {new}")
        out[new] = value
    return out


def check_normalization(entry: ZooEntry, family: Family, state: dict[str, torch.Tensor]) -> None:
    """Pop the checkpoint's normalization buffers after checking them against the entry's mean/std."""
    for key, expected, name in zip(family.normalization_keys, (entry.mean, entry.std), ("mean", "std")):
        if key not in state:
            continue
        found = state.pop(key).detach().to("cpu", torch.float64).flatten()
        shown = ", ".join(f"{v:.6g}" for v in found.tolist())
        if expected is None:
            raise ZooError(f"{entry.model_id}: checkpoint has {key} = [{shown}] but RobustBench's "
                           f"{entry.model_id} takes raw [0, 1] pixels")
        want = torch.tensor(expected, dtype=torch.float64)
        if found.shape != want.shape or (found - want).abs().max() > TOLERANCE:
            raise ZooError(f"{entry.model_id}: checkpoint {key} = [{shown}] differs from the table's {name} "
                           f"[{', '.join(f'{v:.6g}' for v in expected)}]")


def convert_state_dict(entry: ZooEntry, payload: Mapping) -> dict[str, torch.Tensor]:
    """payload: what torch.load(..., weights_only=True) returns for a RobustBench download.

    Returns:
        exactly build_backbone(entry)'s keys, in its order, ready for load_state_dict(strict=True).
    Raises:
        ZooError: one line naming the first missing, unexpected or misshapen tensors, or a mean/std mismatch.
    """
    family = family_of(entry)
    try:
        state = strip_prefixes(state_dict_in(payload, entry.model_id, WRAPPERS))
    except CheckpointError as e:
        raise ZooError(str(e)) from None
    state = {k: v for k, v in state.items() if not k.startswith(family.ignored_prefixes)}
    check_normalization(entry, family, state)
    expected = expected_shapes(entry)
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0, dtype=torch.long)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ZooError(f"{entry.model_id}: checkpoint does not fit {entry.family} {entry.options}: "
                       f"{len(missing)} missing ({', '.join(missing[:3])}), "
                       f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
    for key, shape in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ZooError(f"{entry.model_id}: {key} is {got} in the checkpoint, {shape} in {entry.family}")
    return {k: state[k] for k in expected}
