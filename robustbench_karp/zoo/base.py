"""The zoo's core types: ZooEntry (one RobustBench model), ZooError, and the registry of network families.

A family is one network definition with RobustBench's exact state_dict layout, built from the options a
table.json entry gives it. It also declares the checkpoint quirks of that layout (where RobustBench's
subclasses keep their mean/std, entries RobustBench's loader silently drops), so that converting a
checkpoint needs no branch on model names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from robustbench_karp.registry import Registry


class ZooError(ValueError):
    """A zoo lookup or checkpoint problem; the message is one line (the CLI prints it as is)."""


@dataclass(frozen=True)
class ZooEntry:
    model_id: str
    dataset: str  # "cifar10" | "cifar100" | "imagenet"
    threat: str  # "Linf" | "L2" | "corruptions", spelled as in RobustBench's model folders
    family: str  # a name in FAMILIES
    options: dict  # keyword arguments of the family's build function
    mean: tuple[float, ...] | None  # None: the network takes raw [0, 1] pixels
    std: tuple[float, ...] | None
    preprocessing: str | None = None  # RobustBench's ImageNet preprocessing name, e.g. "Res256Crop224"
    source: str | None = None  # where RobustBench gets the weights: "gdrive:<id>" or "torchvision:<weights>"

    def __hash__(self) -> int:  # options is a dict; equal entries share these three fields anyway
        return hash((self.model_id, self.dataset, self.threat))


@dataclass(frozen=True)
class Family:
    build: Callable[..., nn.Module]  # build(**options) -> backbone without input normalization
    # Checkpoint entries that hold the input normalization RobustBench applies in the network itself.
    # convert_state_dict checks them against the entry's mean/std and drops them.
    normalization_keys: tuple[str, str] = ("mu", "sigma")
    # Checkpoint entries outside the network that RobustBench's loader ignores (strict=False).
    ignored_prefixes: tuple[str, ...] = ()


FAMILIES: Registry[Family] = Registry("zoo family")
