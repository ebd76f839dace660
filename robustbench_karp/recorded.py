"""Evaluations of in-memory Python models that become records, like the CLI's.

    from robustbench_karp import evaluate
    result = evaluate(my_model, dataset="cifar10", attacks=["pgd"], store=True, model_name="my-wrn",
                      source="nets/my_wrn.py:build")      # optional: what rebuilds the architecture
    result.record["id"]                                   # publish with `leaderboard build`, re-run with `reproduce`

The model runs on the dataset's fixed test points (the first n of its test split), so the record
names them. Its weights are saved into the store (KARP_HOME/checkpoints/python/), and the record's
identity is the canonical hash of those weights. With `source`, the record is a model-file record:
`reproduce` rebuilds the architecture from the file (its sha256 checked) and loads the saved weights;
without it, the record says that nothing can rebuild the model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_karp.data import DATASETS
from robustbench_karp.engine import as_attack, resolve_device
from robustbench_karp.identity import weights_sha256
from robustbench_karp.models import Classifier
from robustbench_karp.sources import build_from_file, make_normalize, mismatch, parse_model
from robustbench_karp.store import ResultsStore, atomic_write_bytes, file_sha256, karp_home, portable_path


def save_weights(classifier: Classifier, name: str) -> Path:
    """The classifier's state_dict under KARP_HOME/checkpoints/python/, named by its canonical hash."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:60]
    path = karp_home() / "checkpoints" / "python" / f"{safe}-{weights_sha256(classifier)[:16]}.pt"
    if not path.is_file():
        state = {k: v.detach().cpu() for k, v in classifier.state_dict().items()}
        atomic_write_bytes(path, lambda f: torch.save(state, f))
    return path


def source_of(model: nn.Module, source: str | None, channels: int) -> dict[str, Any] | None:
    """The record's source for a model-file rebuild recipe, after checking it builds this architecture."""
    if source is None:
        return None
    parsed = parse_model(source)
    if parsed.kind != "file":
        raise ValueError(f"source={source!r}: give the module file and factory that build this model, 'file.py:build'")
    rebuilt = build_from_file(parsed)
    problem = mismatch(rebuilt, model.state_dict())
    if problem:
        raise ValueError(f"source={source!r} does not build this model's architecture ({problem})")
    return {"kind": "file", "file": parsed.path.name, "factory": parsed.target, "sha256": file_sha256(parsed.path),
            "normalization": None, "path": str(parsed.path.resolve())}


def evaluate_and_store(model: nn.Module, *, dataset: str, model_name: str | None, attacks: Sequence = ("pgd",),
                       norm: str = "linf", eps: float | None = None, n_examples: int | None = None, seed: int = 0,
                       batch_size: int = 500, device: str | torch.device = "auto", store: ResultsStore | None = None,
                       source: str | None = None, data_dir: Path | None = None, download: bool = True) -> dict[str, Any]:
    """Evaluate model (taking [0, 1] images, normalizing itself) on dataset's fixed test points; store the record."""
    from robustbench_karp.harness import EvalRequest, run_evaluation

    spec = DATASETS.get(dataset)
    info = source_of(model, source, spec.in_channels)
    if not model_name:
        if info is None:
            raise ValueError("a stored evaluation needs model_name= (or source='file.py:factory')")
        model_name = f"{info['file']}:{info['factory']}"
    dev = resolve_device(device)
    classifier = Classifier(make_normalize(None, spec.in_channels), model).to(dev).eval()  # the CLI's file-model shape
    checkpoint = save_weights(classifier, model_name)
    model_file = info.pop("path") if info else None
    record_source = info or {"kind": "python", "name": model_name, "normalization": None}
    provenance = {"model": model_name, "dataset": spec.name, "defense": "standard", "defense_config": {"name": "standard"},
                  "model_source": record_source, "model_file": model_file,
                  "checkpoint": portable_path(checkpoint), "checkpoint_sha256": file_sha256(checkpoint),
                  "weights_sha256": weights_sha256(classifier), "defense_weights_sha256": None,
                  "train_config": None, "train_conditions": None, "train_amp": None,
                  "train_outcome": None}
    req = EvalRequest(model=model_name, dataset=spec.name, attacks=[as_attack(a) for a in attacks], norm=norm, eps=eps,
                      n_examples=n_examples, seed=seed, batch_size=batch_size, device=str(dev), data_dir=data_dir,
                      download=download)
    return run_evaluation(req, store=store or ResultsStore(), prepared=(classifier, provenance, dev))
