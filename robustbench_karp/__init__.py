"""karp-robust: adversarial-robustness benchmarking for PyTorch.

    from robustbench_karp import evaluate, load_dataset, load_model
    model = load_model("resnet18", dataset="digits", defense="standard")   # trained once, then cached
    x, y = load_dataset("digits", split="test", n=200)                     # in [0, 1], the CLI's fixed points
    result = evaluate(model, x, y, attacks=["pgd"], norm="linf", eps=0.1, seed=0)
    result.clean_accuracy, result.robust_accuracy, result.per_attack

The names below are imported on first use (PEP 562 module __getattr__): importing the package, and so
`karp-robust --help` or `--version`, does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {"EvalResult": "robustbench_karp.evaluation.engine", "evaluate": "robustbench_karp.api",
         "certify": "robustbench_karp.certification",
         "load_model": "robustbench_karp.api", "load_dataset": "robustbench_karp.data"}  # name -> its module

__all__ = ["EvalResult", "certify", "evaluate", "load_dataset", "load_model"]

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports them
    from robustbench_karp.api import evaluate
    from robustbench_karp.certification import certify, load_model
    from robustbench_karp.data import load_dataset
    from robustbench_karp.evaluation.engine import EvalResult


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'robustbench_karp' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
