"""The library entry point: robust accuracy of any nn.Module, in one call (`from robustbench_karp import evaluate`).

    result = evaluate(model, x, y, attacks=["pgd", "autoattack"], norm="linf", eps=8 / 255)
    result = evaluate(model, dataset="cifar10", attacks=["pgd"], store=True, model_name="my-wrn")  # + a record

It runs the engine's cascade (engine.attack_batches) batch by batch, each batch with its own random
stream, exactly as the CLI's records do; with store= it goes through recorded.py and writes a record.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustbench_karp.engine import (
    EvalResult,
    as_attack,
    attack_batches,
    batch_seed,
    combine,
    expand,
    reseed_randomized,
    resolve_device,
)
from robustbench_karp.threat import ThreatModel


def evaluate(
    model: nn.Module,
    x: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    attacks: Sequence = ("pgd",),
    norm: str = "linf",
    eps: float | None = None,
    seed: int = 0,
    batch_size: int = 500,
    device: str | torch.device = "auto",
    *,
    dataset: str | None = None,
    n_examples: int | None = None,
    store: bool | Any = False,
    model_name: str | None = None,
    source: str | None = None,
    data_dir: Any = None,
) -> EvalResult:
    """Library entry point: robust accuracy of any nn.Module mapping [0, 1] images to logits.

    Args:
        model: classifier taking (B, C, H, W) in [0, 1] and returning logits (it must normalize itself).
        x, y: images in [0, 1] and integer labels; or None with dataset= (its fixed first n test points).
        attacks: registered names ("pgd"), "torchattacks:<Class>", (name, options) pairs or Attack objects.
        norm, eps: threat model, eps in pixel units (None: the dataset's default, else 8/255).
        dataset, n_examples: evaluate on the dataset's test split instead of x, y.
        store: True (the default store) or a ResultsStore: write a record, as the CLI does; needs dataset=
            and model_name= (or source=), so that the record names its test points and its model.
        source: "file.py:factory" that rebuilds the architecture, so `reproduce` can re-run the record.
    Returns:
        EvalResult with clean_accuracy, robust_accuracy (per-example worst case), per_attack, and the
        stored record when store is set.
    """
    if store:
        if x is not None or y is not None:
            raise ValueError("a stored evaluation runs on a dataset's fixed test points: pass dataset= instead of x, y")
        if dataset is None:
            raise ValueError("a stored evaluation needs dataset= (its fixed test points make the record reproducible)")
        from robustbench_karp.recorded import evaluate_and_store

        record = evaluate_and_store(model, dataset=dataset, model_name=model_name, attacks=attacks, norm=norm, eps=eps,
                                    n_examples=n_examples, seed=seed, batch_size=batch_size, device=device,
                                    store=None if store is True else store, source=source, data_dir=data_dir)
        return EvalResult(record["n_examples"], record["clean_accuracy"], record["robust_accuracy"],
                          record["per_attack"], [c == "1" for c in record["clean_mask"]],
                          [r == "1" for r in record["robust_mask"]], record["elapsed_seconds"],
                          list(record["warnings"]), record)
    if dataset is not None:
        from robustbench_karp.data import DATASETS, load_split, subset_indices

        spec = DATASETS.get(dataset)
        if x is not None or y is not None:
            raise ValueError("pass either x, y or dataset=, not both")
        test = load_split(spec, train=False, data_dir=data_dir)
        x, y = test.batch(subset_indices(len(test), n_examples or min(len(test), 1000)))
        eps = spec.default_eps[norm] if eps is None else eps
    if x is None or y is None:
        raise ValueError("evaluate needs images x and labels y, or dataset=")
    eps = 8 / 255 if eps is None else eps
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} images but y has {len(y)} labels")
    if x.min() < 0 or x.max() > 1:
        raise ValueError("images must lie in [0, 1]: the model normalizes inside itself")
    device = resolve_device(device)
    threat = ThreatModel(norm, eps)
    built = [as_attack(a) for a in attacks]
    model = model.to(device)
    start, outcomes = time.perf_counter(), []

    def generator(b: int) -> torch.Generator:  # batch b's own stream, as the CLI's records use (sharded.py)
        reseed_randomized(model, batch_seed(seed, b))
        return torch.Generator(device=device).manual_seed(batch_seed(seed, b))

    batches = ((b, xb, yb) for b, (xb, yb) in enumerate(zip(x.split(batch_size), y.split(batch_size))))
    warnings = attack_batches(model, batches, built, threat, generator, device, lambda b, o: outcomes.append(o))
    return combine(outcomes, [name for name, _ in expand(built)], time.perf_counter() - start, device, warnings)
