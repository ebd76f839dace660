"""The harness: evaluations of models from any source (training/checkpoints.py: the trained-model store), and their records.

    run_evaluation(EvalRequest(model="smallcnn", dataset="mnist", attacks=[...]))  # -> record, stored
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_karp.attacks import Attack
from robustbench_karp.certification import certify, exact_float32
from robustbench_karp.data import DATASETS, load_split, subset_indices
from robustbench_karp.defenses import build_defense
from robustbench_karp.devices import resolve_device
from robustbench_karp.evaluation.batch import unique_names
from robustbench_karp.evaluation.certified import certification_method
from robustbench_karp.evaluation.engine import EvalResult, expand, run_attacks
from robustbench_karp.evaluation.evalconfig import EvalConfig
from robustbench_karp.evaluation.protocols import check_additions, get_protocol
from robustbench_karp.evaluation.recording import make_record, run_conditions
from robustbench_karp.evaluation.sharded import RNG, PartialResults, evaluate_batches
from robustbench_karp.sources import load_external, load_weights, new_model, parse_model
from robustbench_karp.store import ResultsStore, file_sha256, keep_copy, portable_path
from robustbench_karp.store.identity import weights_sha256
from robustbench_karp.threat import ThreatModel, check_eps
from robustbench_karp.threat.context import RunContext
from robustbench_karp.training import checkpoints
from robustbench_karp.training.config import make_train_config

log = logging.getLogger(__name__)


@dataclass
class EvalRequest:
    """One evaluation as the CLI or a script describes it; resolved into an EvalConfig by plan_evaluation."""

    model: str = "resnet18"
    dataset: str = "digits"
    defense: str = "standard"
    defense_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"steps": 100} for defense-gan
    attacks: list[Attack] = field(default_factory=list)
    norm: str = "linf"
    eps: float | None = None  # None: the dataset's default for the norm
    n_examples: int | None = None  # None: min(1000, test split)
    seed: int = 0
    batch_size: int = 500
    device: str = "auto"
    checkpoint: str | None = None
    data_dir: Path | None = None
    download: bool = True
    protocol: str | None = None  # a named attack set ("standard"); `attacks` then adds to it
    normalize: str | None = None  # a model file's or torchvision model's input normalization: "none" or "MEAN,STD"
    robustbench_dir: Path | None = None  # RobustBench's checkpoint layout (default $KARP_HOME/robustbench)
    model_sha256: str | None = None  # a model file's expected sha256 (reproduce refuses a changed file)
    model_name: str | None = None  # the record's name for a file model (default <file>.py:<factory>)
    train_limit_seconds: float | None = None  # estimate training on demand and refuse past this (the CLI: 600 s)
    rng: str | None = RNG  # per-batch randomness (sharding, resuming); None: one generator in order (old records)
    probes: list[Attack] | None = None  # None: the protocol's (reproduce passes a record's own)
    restart: bool = False  # discard partial results of this config instead of resuming them
    certify: str | None = None  # "ibp" or "crown-ibp": certified points skip the attacks (standard/2 asks for it)
    train_eps: float | None = None  # the checkpoint trained at this eps (None: the dataset's default eps)
    check_certified: bool = False  # attack certified points too: any break is a CertificationConflict
    random_weights: bool = False  # a torchvision model without --checkpoint: its random initial weights, knowingly
    weights_in_factory: bool = False  # a model file without --checkpoint: its factory loads the trained weights


def prepare(req: EvalRequest, train_callbacks: list | None = None) -> tuple[nn.Module, dict[str, Any], torch.device]:
    """Resolve the request: (model to attack, in eval mode on device; provenance; device).

    A registered model comes from --checkpoint or the store (exactly the defense's classifier recipe,
    trained when missing); a zoo, file or torchvision model from its own weights (robustbench_karp.sources). The
    defense then wraps it (a purifier defense puts its purifier in front).
    Every call builds a fresh model, with fresh random state for a randomized defense: call it once
    per evaluation, so no cell of a sweep or a compare depends on what ran before it.
    """
    spec = DATASETS.get(req.dataset)
    device = resolve_device(req.device)
    defense = build_defense(req.defense, req.defense_options)
    source = parse_model(req.model)
    if source.external:
        classifier, path, payload, model_info = _external_classifier(req, source, spec, defense)
    else:
        if req.normalize is not None:
            raise ValueError(f"--normalize applies to model files and torchvision models; {req.model} normalizes "
                             f"with {spec.name}'s statistics")
        if req.checkpoint:
            path = Path(req.checkpoint)
        else:
            # --defense-arg selects the checkpoint of exactly those options (a wrapper's options are its own)
            own = req.defense_options if defense.classifier_defense() is defense else None
            train_config = make_train_config(req.model, req.dataset, defense.classifier_defense().name,
                                             defense_options=own, seed=req.seed, eps=req.train_eps)
            if int(os.environ.get("WORLD_SIZE", "1")) > 1 and checkpoints.find_checkpoint(train_config, device) is None:
                command = checkpoints.train_command(asdict(train_config), req.data_dir)  # seed, eps, options too
                raise ValueError(f"no checkpoint for {train_config.stem()}: train it first ({command}), then evaluate "
                                 "under torchrun")
            path = checkpoints.obtain_checkpoint(train_config, data_dir=req.data_dir, device=device, download=req.download,
                                     callbacks=train_callbacks, limit_seconds=req.train_limit_seconds)
        classifier = new_model(req.model, req.dataset)
        payload, model_info = load_weights(classifier, path), {"name": req.model}
        if req.checkpoint:
            path = keep_copy(path, "weights")  # loaded fine: the record names the store's copy, never the user's path
    stored = payload.get("config") if isinstance(payload.get("config"), dict) else None
    weights = weights_sha256(classifier)
    context = RunContext(dataset=spec.name, model=model_info["name"], data_dir=req.data_dir, download=req.download,
                         device=device, seed=req.seed, checkpoint_sha256=weights)
    model = defense.wrap(classifier.to(device).eval(), context)
    trained_by = stored["defense"] if stored and defense.classifier_defense() is defense else None
    provenance = {"model": model_info["name"], "dataset": spec.name, "defense": req.defense,
                  "defense_config": trained_by or defense.config(),
                  "model_source": model_info.get("source"),
                  "checkpoint": portable_path(path) if path else None,
                  "checkpoint_sha256": file_sha256(path) if path else None,
                  "weights_sha256": weights,
                  "defense_weights_sha256": None if model is classifier else weights_sha256(model),
                  "train_config": stored, "train_conditions": payload.get("conditions"),
                  "train_amp": payload.get("amp"),  # the precision it really trained in (bf16 needs bf16 units)
                  "train_outcome": train_outcome(payload)}
    return model.to(device).eval(), provenance, device


def train_outcome(payload: dict) -> dict | None:
    """How the checkpoint's training ended: epochs run, the epoch whose weights were kept, a catastrophic-overfitting stop."""
    if "epochs_completed" not in payload:
        return None  # a checkpoint from elsewhere
    return {"epochs_completed": payload["epochs_completed"], "selected_epoch": payload.get("selected_epoch"),
            "stopped_early": bool(payload.get("stopped_early"))}


def _external_classifier(req: EvalRequest, source, spec, defense):
    """(classifier, checkpoint path or None, {}, model info) for a zoo, file or torchvision model."""
    if defense.classifier_defense().name != "standard":
        raise ValueError(f"--defense {req.defense} names how karp-robust trains a model; {req.model} comes with its "
                         "own weights (use --defense standard, or a defense that wraps a classifier)")
    loaded = load_external(source, spec, norm=req.norm, normalize=req.normalize,
                           checkpoint=Path(req.checkpoint) if req.checkpoint else None,
                           robustbench_dir=req.robustbench_dir, file_sha=req.model_sha256)
    if req.checkpoint is None and source.kind == "torchvision" and not req.random_weights:
        raise ValueError(f"{req.model} without --checkpoint would be evaluated with random initial weights: pass "
                         "--checkpoint FILE, or --random-weights if that is what you mean")
    if req.checkpoint is None and source.kind == "file" and not req.weights_in_factory:
        raise ValueError(f"{req.model} without --checkpoint: pass --checkpoint FILE, or --weights-in-factory if "
                         f"{source.target}() loads the trained weights itself")
    checkpoint = loaded.checkpoint
    if source.kind in ("file", "torchvision") and checkpoint is not None:
        checkpoint = keep_copy(checkpoint, "weights")  # content-addressed: moving the original breaks nothing
    if source.kind == "file":
        keep_copy(source.path, "models")  # reproduce imports this copy, found by its sha256 (reproduce.model_of)
    name = req.model_name or (f"{source.path.name}:{source.target}" if source.kind == "file" else req.model)  # no paths
    return loaded.classifier, checkpoint, {}, {"name": name, "source": loaded.source}


@dataclass
class Plan:
    """A resolved evaluation: its EvalConfig (the identity), and what running it needs."""

    config: EvalConfig
    attacks: list[Attack]  # bound to the run; the defense's adaptive attacks included
    threat: ThreatModel
    indices: torch.Tensor
    test: Any  # ImageSet of the test split
    probes: list[Attack] = field(default_factory=list)  # measured beside the cascade (a purifier's plain PGD)
    certifier: Callable | None = None  # (model, x, y) -> Certificate, run before the attacks
    check_certified: bool = False
    data_sha256: str | None = None  # the exact test points evaluated (data.ImageSet.identity)
    preparation: dict[str, float] = field(default_factory=dict)  # attack -> seconds spent training its networks

    @property
    def id(self) -> str:
        return self.config.id


def requested_attacks(req: EvalRequest) -> tuple[list[Attack], str | None]:
    """The protocol's attacks (if any) followed by the explicitly requested ones, without repeats; the protocol label.

    A protocol attack that is already requested keeps its requested place: `reproduce` passes a record's
    attacks in their recorded order, and they run in that order.
    """
    attacks, label = list(req.attacks), None
    check_additions(req.protocol, bool(attacks))  # "autoattack" runs exactly standard/2, under its label and id
    if req.protocol:
        protocol = get_protocol(req.protocol)
        label = protocol.label
        explicit = {_key(a) for a in attacks}
        attacks = [a for a in protocol.build_attacks() if _key(a) not in explicit] + attacks
    out, seen = [], set()
    for attack in attacks:
        if _key(attack) not in seen:
            seen.add(_key(attack))
            out.append(attack)
    return out, label


def _key(attack: Attack) -> str:
    return json.dumps(attack.config(), sort_keys=True, default=str)


def plan_evaluation(req: EvalRequest, prepared: tuple) -> Plan:
    """The EvalConfig of a prepared model, and what running it needs. Networks attacks train for themselves
    (AdvGAN's generator) are trained here, before any cost is counted, since their identity is part of the id."""
    spec = DATASETS.get(req.dataset)
    threat = ThreatModel(req.norm, spec.default_eps[req.norm] if req.eps is None else req.eps)
    check_eps(threat.norm, threat.eps, (spec.in_channels, spec.input_size, spec.input_size))
    model, provenance, device = prepared
    test = load_split(spec, train=False, data_dir=req.data_dir, download=req.download)
    n = req.n_examples if req.n_examples is not None else min(spec.default_n_examples, len(test))
    indices = subset_indices(len(test), n)
    context = RunContext(dataset=spec.name, model=provenance["model"], data_dir=req.data_dir, download=req.download,
                         device=device, seed=req.seed, checkpoint_sha256=provenance["weights_sha256"], threat=threat)
    requested, protocol = requested_attacks(req)
    names = {a.name for a in requested}
    adaptive = [a for a in build_defense(req.defense, req.defense_options).adaptive_attacks() if a.name not in names]
    # Under a protocol the defense's adaptive attacks run first: they are what breaks a purifier, and cheaply,
    # so AutoAttack's or strong's long budget (Square's queries per unbroken point) is spent only on their survivors.
    # Another order draws other random starts for other subsets (single points can differ), so the record keeps
    # this order and reproduce follows it; without a protocol, they run last.
    requested = adaptive + requested if protocol else requested + adaptive
    bound = [a.bind(context) for a in requested]
    probes = [p.bind(context) for p in (req.probes if req.probes is not None else
                                        get_protocol(req.protocol).build_probes(provenance["defense_config"])
                                        if req.protocol else [])]
    networks, preparation = prepare_attacks(bound, model, device)
    method = certification_method(req.certify, req.protocol, model, provenance["defense_config"],
                                  test.batch(indices[:1])[0].to(device))
    config = EvalConfig(model=provenance["model"], dataset=provenance["dataset"], defense=provenance["defense_config"],
                        weights=provenance["weights_sha256"], defense_weights=provenance["defense_weights_sha256"],
                        norm=threat.norm.value, eps=threat.eps, n_examples=n, seed=req.seed, batch_size=req.batch_size,
                        attacks=tuple(a.config() for a in bound), protocol=protocol,
                        source=provenance.get("model_source"), rng=req.rng, probes=tuple(p.config() for p in probes),
                        attack_networks=networks or None, certify=method)
    certifier = None if method is None else (
        lambda m, x, y: certify(m, x, y, norm=threat.norm.value, eps=threat.eps, method=method))
    return Plan(config, bound, threat, indices, test, probes=probes, data_sha256=test.identity(indices),
                preparation=preparation, certifier=certifier, check_certified=req.check_certified)


def prepare_attacks(attacks: list[Attack], model: nn.Module, device: torch.device
                    ) -> tuple[dict[str, Any], dict[str, float]]:
    """({attack: its networks' identity}, {attack: seconds}) after each attack prepared what it trains."""
    networks, seconds = {}, {}
    for name, attack in zip(unique_names(attacks), attacks):  # two AdvGANs: advgan, advgan#2
        start = time.perf_counter()
        identity = attack.prepare(model, device)
        if identity is not None:
            networks[name], seconds[name] = identity, time.perf_counter() - start
    return networks, seconds


def run_evaluation(req: EvalRequest, *, store: ResultsStore | None = None, train_callbacks: list | None = None,
                   on_batch: Callable[[int], None] | None = None, on_start: Callable[[int], None] | None = None,
                   prepared: tuple | None = None, plan: Plan | None = None,
                   sweep: list[dict[str, Any]] | None = None, reporter=None) -> dict[str, Any] | None:
    """Evaluate, run the sanity checks, build the record, append it to the store once complete, return it.

    Under torchrun only rank 0 gathers, writes and returns the record; the other ranks return None.

    prepared: a model from prepare() that nothing else has used yet (None: prepare one now).
    sweep: the records of smaller eps of the same sweep, for the monotonicity check.
    """
    prepared = prepared or prepare(req, train_callbacks)
    model, provenance, device = prepared
    store = store or ResultsStore()
    plan = plan or plan_evaluation(req, prepared)
    if reporter is not None and hasattr(reporter, "expect"):  # the progress display estimates the run's time left
        reporter.expect([(name, attack.forward_budget()) for name, attack in expand(plan.attacks)], req.batch_size)
    if on_start:
        on_start(len(plan.indices))
    with exact_float32() if plan.certifier is not None else nullcontext():  # certificates assume no TF32
        result = _evaluate(req, plan, model, device, store, on_batch, reporter)
    if result is None:  # another rank than 0: rank 0 writes the record
        return None
    record = make_record(plan, model, provenance, result, device, sweep or [])
    store.append(record)
    if plan.config.rng == RNG:
        PartialResults(store.path, plan.id, []).clear()  # the record has landed: its partial results are no longer needed
    return record


def _evaluate(req: EvalRequest, plan: Plan, model: nn.Module, device: torch.device, store: ResultsStore,
              on_batch, reporter) -> EvalResult | None:
    if plan.config.rng == RNG:  # logical batches: resumable, and sharded under torchrun
        return evaluate_batches(model, plan, req.seed, req.batch_size, device, store.path, on_batch=on_batch,
                                reporter=reporter, restart=req.restart, conditions=run_conditions(device))
    if plan.config.rng is None:
        gen = torch.Generator(device=device).manual_seed(req.seed)
        batches = ((x, y) for _, x, y in plan.test.batches(plan.indices, req.batch_size))
        return run_attacks(model, batches, plan.attacks, plan.threat, gen, device, on_batch=on_batch)
    raise ValueError(f"unknown randomness scheme {plan.config.rng!r} (this version knows {RNG})")
