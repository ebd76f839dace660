"""The library's calls: robust accuracy of any nn.Module, and trained models, in one line each.

    from robustbench_karp import evaluate, load_model
    model = load_model("resnet18", dataset="digits", defense="standard")   # trained once, then cached
    result = evaluate(model, x, y, attacks=["pgd", "autoattack"], norm="linf", eps=8 / 255)
    result = evaluate(model, dataset="cifar10", attacks=["pgd"], store=True, model_name="my-wrn")  # + a record

`evaluate` runs the engine's cascade (evaluation.engine.attack_batches) batch by batch, each batch with
its own random stream, exactly as the CLI's records do. With store= the model runs on the dataset's
fixed test points (the first n of its test split) through the harness, like the CLI, and becomes a
record: its weights are saved into the store (KARP_HOME/checkpoints/python/), and the record's
identity is the canonical hash of those weights. With `source` ("file.py:factory") the record is a
model-file record that `reproduce` rebuilds from the file (its sha256 checked); without it, the
record says that nothing can rebuild the model.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_karp.attacks import as_attack
from robustbench_karp.certification import certify as certify_points
from robustbench_karp.certification import exact_float32
from robustbench_karp.data import DATASETS
from robustbench_karp.devices import resolve_device
from robustbench_karp.evaluation.batch import eval_mode
from robustbench_karp.evaluation.certified import certification_method
from robustbench_karp.evaluation.checks import check_all
from robustbench_karp.evaluation.engine import EvalResult, attack_batches, combine, expand
from robustbench_karp.evaluation.examples import AdversarialCollector
from robustbench_karp.evaluation.sharded import batch_seed, reseed_randomized
from robustbench_karp.models import Classifier
from robustbench_karp.sources import (
    build_from_file,
    load_external,
    load_weights,
    make_normalize,
    mismatch,
    new_model,
    parse_model,
)
from robustbench_karp.store import ResultsStore, atomic_write_bytes, file_sha256, karp_home, keep_copy, portable_path
from robustbench_karp.store.identity import weights_sha256
from robustbench_karp.threat import RunContext, ThreatModel, check_eps
from robustbench_karp.training.checkpoints import obtain_checkpoint
from robustbench_karp.training.config import make_train_config


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
    certify: str | None = None,
    check_certified: bool = False,
    return_adversarial: bool = False,
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
        certify: "ibp" or "crown-ibp": prove points robust first (certified_accuracy); they skip the attacks.
        check_certified: attack certified points too; a break raises CertificationConflict (a bug somewhere).
        return_adversarial: result.adversarial holds every point's worst-case x_adv (the first attack's success,
            else the last attempt, else the clean image), result.broken which points an attack broke.
    Returns:
        EvalResult with clean_accuracy, robust_accuracy (per-example worst case), per_attack,
        certified_accuracy (with certify), and the stored record when store is set.
    """
    if store:
        if x is not None or y is not None:
            raise ValueError("a stored evaluation runs on a dataset's fixed test points: pass dataset= instead of x, y")
        if dataset is None:
            raise ValueError("a stored evaluation needs dataset= (its fixed test points make the record reproducible)")
        if check_certified or return_adversarial:
            raise ValueError("check_certified and return_adversarial apply to an evaluation that is not stored "
                             "(the CLI's --save-adversarial stores every x_adv beside a record)")
        was_training, where = model.training, next((p.device for p in model.parameters()), None)
        try:
            record = evaluate_and_store(model, dataset=dataset, model_name=model_name, attacks=attacks, norm=norm,
                                        eps=eps, n_examples=n_examples, seed=seed, batch_size=batch_size, device=device,
                                        store=None if store is True else store, source=source, certify=certify,
                                        data_dir=data_dir)
        finally:  # the caller's model as it came: its mode and its device
            model.train(was_training)
            if where is not None:
                model.to(where)
        return EvalResult(record["config"]["n_examples"], record["clean_accuracy"], record["robust_accuracy"],
                          record["per_attack"], [c == "1" for c in record["clean_mask"]],
                          [r == "1" for r in record["robust_mask"]], record["elapsed_seconds"],
                          list(record["warnings"]), record, cost=record["cost"], probes=record.get("probes") or {},
                          certified=[c == "1" for c in record["certified_mask"]] if "certified_mask" in record else None,
                          indicators=dict(record.get("indicators") or {}),
                          escalations=list(record.get("escalations") or []))
    if dataset is not None:
        from robustbench_karp.data import load_split, subset_indices

        spec = DATASETS.get(dataset)
        if x is not None or y is not None:
            raise ValueError("pass either x, y or dataset=, not both")
        test = load_split(spec, train=False, data_dir=data_dir)
        x, y = test.batch(subset_indices(len(test), n_examples or min(len(test), spec.default_n_examples)))
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
    check_eps(threat.norm, threat.eps, tuple(x.shape[1:]))
    model = model.to(device)
    context = RunContext(dataset=dataset or "", model=model_name or type(model).__name__, data_dir=data_dir,
                         device=device, seed=seed, checkpoint_sha256=weights_sha256(model), threat=threat)
    built = [as_attack(a).bind(context) for a in attacks]  # AdvGAN trains on the dataset's training split
    with eval_mode(model):  # batch norm and dropout as the evaluation sees them, restored after
        for attack in built:
            attack.prepare(model, device)  # networks an attack trains for itself, before anything is timed
        method = certification_method(certify, None, model, None, x[:1].to(device))
    start, outcomes = time.perf_counter(), []

    def generator(b: int) -> torch.Generator:  # batch b's own stream, as the CLI's records use (evaluation/sharded.py)
        reseed_randomized(model, batch_seed(seed, b))
        return torch.Generator(device=device).manual_seed(batch_seed(seed, b))

    batches = ((b, xb, yb) for b, (xb, yb) in enumerate(zip(x.split(batch_size), y.split(batch_size))))
    certifier = None if method is None else (lambda m, xb, yb: certify_points(m, xb, yb, norm=threat.norm.value,
                                                                              eps=threat.eps, method=method))
    collector = AdversarialCollector() if return_adversarial else None
    with exact_float32() if certifier is not None else nullcontext():  # certificates assume no TF32
        warnings = attack_batches(model, batches, built, threat, generator, device, lambda b, o: outcomes.append(o),
                                  collector, certifier=certifier, method=method, check_certified=check_certified)
    order = [name for name, _ in expand(built)]
    result = combine(outcomes, order, time.perf_counter() - start, device, warnings)
    if collector is not None:
        result.adversarial, result.broken = collector.tensors(x, batch_size)
    sample = min(len(x), 200)  # the same sanity checks the CLI's records run, on the first points
    reseed_randomized(model, batch_seed(seed, -1))  # with the same randomness (evaluation/recording.py)
    found, result.indicators = check_all(model, x[:sample].to(device), y[:sample].to(device), result, built, order,
                                         threat, device, [])  # and the attack-failure indicators
    result.warnings += [w for w in found if w not in result.warnings]
    return result


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
    keep_copy(parsed.path, "models")  # reproduce imports the store's copy, found by its sha256
    return {"kind": "file", "file": parsed.path.name, "factory": parsed.target, "sha256": file_sha256(parsed.path),
            "normalization": None}


def evaluate_and_store(model: nn.Module, *, dataset: str, model_name: str | None, attacks: Sequence = ("pgd",),
                       norm: str = "linf", eps: float | None = None, n_examples: int | None = None, seed: int = 0,
                       batch_size: int = 500, device: str | torch.device = "auto", store: ResultsStore | None = None,
                       source: str | None = None, data_dir: Path | None = None, download: bool = True,
                       certify: str | None = None) -> dict[str, Any]:
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
    record_source = info or {"kind": "python", "name": model_name, "normalization": None}
    provenance = {"model": model_name, "dataset": spec.name, "defense": "standard", "defense_config": {"name": "standard"},
                  "model_source": record_source,
                  "checkpoint": portable_path(checkpoint), "checkpoint_sha256": file_sha256(checkpoint),
                  "weights_sha256": weights_sha256(classifier), "defense_weights_sha256": None,
                  "train_config": None, "train_conditions": None, "train_amp": None,
                  "train_outcome": None}
    req = EvalRequest(model=model_name, dataset=spec.name, attacks=[as_attack(a) for a in attacks], norm=norm, eps=eps,
                      n_examples=n_examples, seed=seed, batch_size=batch_size, device=str(dev), data_dir=data_dir,
                      download=download, certify=certify)
    return run_evaluation(req, store=store or ResultsStore(), prepared=(classifier, provenance, dev))


def load_model(name: str, dataset: str = "digits", defense: str = "standard", *, seed: int = 0,
               checkpoint: str | Path | None = None, data_dir: Path | None = None, device: str = "auto",
               download: bool = True, callbacks: list | None = None, norm: str = "linf",
               normalize: str | None = None, robustbench_dir: Path | None = None) -> nn.Module:
    """The trained model (in eval mode, taking [0, 1] images), from any source --model takes.

    A registered name comes from `checkpoint` or the store (trained if needed); "robustbench:<ID>"
    (with dataset and norm naming its threat model), "file.py:factory" and "torchvision:<name>"
    from their own weights, e.g. load_model("robustbench:Carmon2019Unlabeled", dataset="cifar10",
    norm="linf", checkpoint=path).
    """
    dev = resolve_device(device)
    source = parse_model(name)
    if source.external:
        loaded = load_external(source, DATASETS.get(dataset), norm=norm, normalize=normalize,
                               checkpoint=Path(checkpoint) if checkpoint else None, robustbench_dir=robustbench_dir)
        return loaded.classifier.to(dev).eval()
    path = Path(checkpoint) if checkpoint else obtain_checkpoint(
        make_train_config(name, dataset, defense, seed=seed), data_dir=data_dir, device=dev, download=download,
        callbacks=callbacks)
    model = new_model(name, dataset)
    load_weights(model, path)
    return model.to(dev).eval()
