"""Exact re-runs of stored evaluations: find the record, rebuild its EvalConfig, re-run it apart, compare.

    records = find_records("89da5c01404cb287", site=Path("leaderboard"))   # the store, then the published site
    new = rerun(record, device="cpu")                                       # in a scratch store
    differences(record, new)                                                # [] when every number and mask matches

A re-run never touches the user's store unless asked (`append=True`), and then only when it
matched: a mismatch can never replace a published number. It runs with the recorded thread count.
Exact reproduction is the first check. A checkpoint with other weights (retrained on another processor)
is evaluated anyway, and `agreement(record, new)` then says whether clean and robust accuracy agree
within their 95% intervals: a two-proportion z-test that treats the two runs as independent samples.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from robustbench_karp.attacks.base import attack_from_config
from robustbench_karp.store import CheckpointError, ResultsStore, portable_path, read_records, resolve_path, stored_copy
from robustbench_karp.store.identity import cpu_differences
from robustbench_karp.store.records import migrate

log = logging.getLogger(__name__)
GPU_TOLERANCE = 0.005  # accuracies re-run on a GPU may differ by this much (nondeterministic kernels)
NUMBERS = ("clean_accuracy", "robust_accuracy")
Z95 = 1.959964  # the two-sided 95% quantile of the normal distribution
MASKS = ("clean_mask", "robust_mask")


def find_records(some_id: str, site: Path | None) -> list[dict[str, Any]]:
    """The records of a record id (local store first, then the site's entries) or of a published entry id."""
    found = [r for r in read_records() if r["id"] == some_id]
    if found:
        return found[-1:]  # the newest run of the id
    for path in sorted((site / "entries").glob("*.json")) if site and (site / "entries").is_dir() else []:
        entry = json.loads(path.read_text())
        records = {r["id"]: migrate(r) for r in entry.get("records") or []}
        if entry.get("entry_id") == some_id:
            return [records[i] for i in entry.get("record_ids") or [] if i in records]
        if some_id in records:
            return [records[some_id]]
    return []


def locate_checkpoint(record: dict[str, Any], train_missing: bool, device: torch.device,
                      data_dir: Path | None = None, download: bool = True, callbacks: list | None = None) -> Path:
    """The record's checkpoint in this store: at its recorded path, else wherever its recorded recipe trains into
    now (names have changed: the precision joined them); rebuilt with train_missing, else an error saying how."""
    from robustbench_karp.training.checkpoints import checkpoint_path, find_checkpoint, obtain_checkpoint, train_command
    from robustbench_karp.training.config import TrainConfig

    path = resolve_path(record["checkpoint"]) if record.get("checkpoint") else None
    if path is not None and path.is_file():
        return path
    train = record.get("train_config")
    if not train:
        raise CheckpointError(f"checkpoint {record.get('checkpoint')} of record {record['id']} is missing and the "
                              "record holds no training config to rebuild it")
    config = TrainConfig(**train)
    found = find_checkpoint(config, device)
    if found is not None:
        return found
    if not train_missing:
        raise CheckpointError(f"checkpoint {record.get('checkpoint')} of record {record['id']} is missing; rebuild "
                              f"it with `{train_command(train, data_dir)}` (it writes "
                              f"{portable_path(checkpoint_path(config, device))}), or pass --train-missing")
    # estimated first (and said), with no limit: --train-missing asked for it; callbacks correct it as it runs
    return obtain_checkpoint(config, device=device, data_dir=data_dir, download=download, callbacks=callbacks,
                             limit_seconds=math.inf)


def check_weights(record: dict[str, Any], checkpoint: Path, rebuilt_on: torch.device | None = None) -> None:
    """Refuse a checkpoint whose weights are not the recorded ones (CheckpointError saying how the hardware differs)."""
    hardware = other_weights(record, checkpoint, rebuilt_on)
    if hardware is not None:
        raise CheckpointError(f"checkpoint {checkpoint} does not hold the weights of record {record['id']} "
                              f"(weights_sha256 differs): not reproducible{hardware}")


def other_weights(record: dict[str, Any], checkpoint: Path, rebuilt_on: torch.device | None = None) -> str | None:
    """None when the checkpoint holds the record's weights; else ', rebuilt on ...' naming how the hardware of
    rebuilt_on (the device `--train-missing` just retrained it on) differs from the recorded one ('' if unknown)."""
    from robustbench_karp.sources import load_weights, new_model
    from robustbench_karp.store.identity import weights_sha256

    model = new_model(record["config"]["model"], record["config"]["dataset"])
    load_weights(model, checkpoint)
    return None if weights_sha256(model) == recorded_weights(record) else _rebuild_hardware(record, rebuilt_on)


def recorded_weights(record: dict[str, Any]) -> str | None:
    """The canonical weights hash the record's config names; None for a record from before weights hashing."""
    weights = record["config"].get("weights")
    return None if not weights or weights.startswith("file:") else weights


def _rebuild_hardware(record: dict[str, Any], rebuilt_on: torch.device | None) -> str:
    """', rebuilt on other hardware (...)' when a retraining here ran on other hardware than the recorded one."""
    trained = record.get("train_conditions") or {}
    if rebuilt_on is None or not trained:
        return ""
    was = str(trained.get("device", "cpu")).split(":")[0]
    if was != rebuilt_on.type:
        return f", rebuilt on {rebuilt_on.type} where it was trained on {was}"
    where = "; ".join(cpu_differences(trained)) if was == "cpu" else ""
    return f", rebuilt on other hardware ({where})" if where else ""


@contextlib.contextmanager
def recorded_threads(record: dict[str, Any], device: torch.device) -> Iterator[list[str]]:
    """Run with the record's thread count on CPU; yields notes on what differs from the recorded conditions."""
    conditions = record.get("conditions") or {}
    notes, before = [], torch.get_num_threads()
    threads = conditions.get("threads")
    if device.type == "cpu" and threads:
        torch.set_num_threads(int(threads))
        notes.append(f"running with {threads} thread(s), as recorded")
    if device.type == "cpu" and record.get("device") == "cpu":
        notes += [f"{note} (CPU numbers are bit-exact only on the same processor)" for note in cpu_differences(conditions)]
    try:
        yield notes
    finally:
        torch.set_num_threads(before)


def external_checkpoint(record: dict[str, Any]) -> Path | None:
    """The weights file of a zoo, file or torchvision model's record (None: the factory made the weights)."""
    if not record.get("checkpoint"):
        return None
    path = resolve_path(record["checkpoint"])
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} of record {record['id']} is missing: put the model's weights there")
    return path


def model_of(record: dict[str, Any], model_file: Path | None = None) -> tuple[str, dict[str, Any]]:
    """(--model, extra EvalRequest fields) that rebuild the record's model from its recorded source.

    A model file is Python code: it is imported only from the store's own copy (named by its sha256) or
    from model_file, the path the user gave on the command line, and only when its sha256 is the recorded
    one. A path written in a record or a published entry is never followed.
    """
    config = record["config"]
    source = config.get("source") or {}
    kind = source.get("kind")
    normalization = source.get("normalization")
    normalize = "none" if normalization is None else ",".join(str(v) for v in normalization["mean"] + normalization["std"])
    if kind == "file":
        path = Path(model_file) if model_file else stored_copy("models", source["sha256"], source["file"])
        if path is None:
            raise ValueError(f"record {record['id']} evaluated the model file {source['file']} (sha256 "
                             f"{source['sha256'][:16]}...), which this store does not keep: pass --model-file PATH")
        return f"{path}:{source['factory']}", {"normalize": normalize, "model_sha256": source["sha256"],
                                                "model_name": config["model"],
                                                "weights_in_factory": not record.get("checkpoint")}
    if kind == "torchvision":
        return f"torchvision:{source['name']}", {"normalize": normalize, "model_name": config["model"],
                                                  "random_weights": not record.get("checkpoint")}
    if kind == "python":
        raise ValueError(f"record {record['id']} evaluated an in-memory Python model ({source.get('name')}): "
                         "nothing here can rebuild it (store it with source='file.py:factory' to make it reproducible)")
    from robustbench_karp.sources import parse_model

    name = str(config["model"])  # from a record or a published entry: only a registered or zoo name is taken
    if kind not in (None, "robustbench") or parse_model(name).kind not in ("registered", "robustbench"):
        raise ValueError(f"record {record['id']} names the model {name!r} (source {kind or 'none'}): not a "
                         "registered or RobustBench model, and a path from a record is never followed")
    return name, {}


def request_of(record: dict[str, Any], checkpoint: Path | None, device: str, data_dir: Path | None, download: bool,
               model_file: Path | None = None):
    """The EvalRequest that re-runs a record's stored configuration (defense options and protocol included)."""
    from robustbench_karp.harness import EvalRequest

    config = record["config"]
    defense = config["defense"] if isinstance(config["defense"], dict) else {"name": str(config["defense"])}
    options = {k: v for k, v in defense.items() if k != "name"}
    model, extra = model_of(record, model_file)
    return EvalRequest(model=model, dataset=config["dataset"], defense=defense["name"], **extra,
                       defense_options=options, attacks=[attack_from_config(c) for c in config["attacks"]],
                       norm=config["norm"], eps=config["eps"], n_examples=config["n_examples"], seed=config["seed"],
                       batch_size=config["batch_size"], device=device,
                       checkpoint=str(checkpoint) if checkpoint else None, data_dir=data_dir,
                       download=download, protocol=config.get("protocol"),
                       probes=[attack_from_config(c) for c in config.get("probes") or []],
                       certify=config.get("certify"),  # part of the config: a certified run re-runs certified
                       rng=config.get("rng"))  # None: the one-generator scheme of records made before per-batch


def check_data(record: dict[str, Any], data_dir: Path | None, download: bool) -> None:
    """Refuse, before anything runs, test data that is not the data the record measured (DataMismatch)."""
    from robustbench_karp.data import DATASETS, load_split, subset_indices

    if not record.get("data_sha256"):
        return  # recorded before data identities
    config = record["config"]
    test = load_split(DATASETS.get(config["dataset"]), train=False, data_dir=data_dir, download=download)
    here = test.identity(subset_indices(len(test), config["n_examples"]))
    if here != record["data_sha256"]:
        raise DataMismatch(f"the {config['dataset']} test data here is not the data record {record['id']} measured "
                           f"(sha256 {here[:16]}... here, {record['data_sha256'][:16]}... recorded): its numbers "
                           "cannot match; check --data-dir")


class DataMismatch(ValueError):
    """The test data on disk differs from the data a record was measured on."""


def rerun(record: dict[str, Any], *, device: str = "auto", data_dir: Path | None = None, download: bool = True,
          train_missing: bool = False, model_file: Path | None = None, progress=None,
          train_callbacks: list | None = None) -> tuple[dict[str, Any], list[str]]:
    """(the re-run's record, notes): the stored config run again, into a scratch store that is then discarded.

    A checkpoint with other weights than the recorded ones is evaluated all the same (a note says so):
    its numbers can only agree statistically (agreement()). progress: the evaluation's reporter (its
    start, update, and the engine's reporter calls); train_callbacks: a retraining's.
    """
    from robustbench_karp.devices import resolve_device
    from robustbench_karp.harness import run_evaluation

    if record.get("source") == "external":
        raise ValueError(f"record {record['id']} was imported from {record.get('tool', 'another tool')}: nothing to re-run")
    model_of(record, model_file)  # a model file to import must be the store's copy or the user's: before anything else
    check_data(record, data_dir, download)
    dev = resolve_device(device)
    source = record["config"].get("source")
    other = ""
    if source:  # a zoo, file, torchvision or Python model: its own weights, checked by the re-run's weights_sha256
        checkpoint = external_checkpoint(record)
    else:
        recorded = resolve_path(record["checkpoint"]) if record.get("checkpoint") else None
        rebuilt = recorded is None or not recorded.is_file()
        checkpoint = locate_checkpoint(record, train_missing, dev, data_dir, download, train_callbacks)
        if recorded_weights(record):
            other = other_weights(record, checkpoint, rebuilt_on=dev if rebuilt else None) or ""
    req = request_of(record, checkpoint, device, data_dir, download, model_file)
    hooks = {"on_start": progress.start, "on_batch": progress.update, "reporter": progress} if progress else {}
    with recorded_threads(record, dev) as notes, tempfile.TemporaryDirectory(prefix="karp-reproduce-") as scratch:
        new = run_evaluation(req, store=ResultsStore(Path(scratch) / "results.sqlite"), **hooks)
    if recorded_weights(record) and new["config"]["weights"] != recorded_weights(record):
        notes.append(f"the checkpoint's weights differ from the recorded ones (weights_sha256){other}")
    return new, notes


def agreement(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, float, float, float, bool]]:
    """(quantity, recorded, now, 95% half-width of the difference, agree) for clean, robust (and certified) accuracy.

    A two-proportion z-test at the 5% level: the two runs are treated as independent samples of their
    n points (they share their test points, so the pooled standard error is an approximation; paired
    runs that agree point by point agree here too). Agree: |difference| <= 1.96 * standard error.
    """
    rows = []
    for key in ("clean_accuracy", "robust_accuracy", "certified_accuracy"):
        if old.get(key) is None or new.get(key) is None:
            continue
        n1, n2 = _points(old), _points(new)
        k1, k2 = round(old[key] * n1), round(new[key] * n2)
        pooled = (k1 + k2) / (n1 + n2)
        half = Z95 * math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        rows.append((key.removesuffix("_accuracy"), old[key], new[key], half, abs(k1 / n1 - k2 / n2) <= half + 1e-12))
    return rows


def _points(record: dict[str, Any]) -> int:
    return len(record.get("clean_mask") or "") or int(record["config"]["n_examples"])


def why_not(old: dict[str, Any], new: dict[str, Any], notes: list[str]) -> str:
    """One line on why a re-run did not match: other weights (and how the hardware differs), other points broken."""
    if not recorded_weights(old):
        return "the record predates weights hashing, so its checkpoint cannot be checked to hold the same weights"
    weights = [n for n in notes if "weights differ" in n]
    if weights:
        return "; ".join(weights)
    points = [old["indices"][i] if old.get("indices") else i
              for i, (a, b) in enumerate(zip(old.get("robust_mask") or "", new.get("robust_mask") or "")) if a != b]
    hardware = [n for n in notes if "differs" in n]
    where = f" (the hardware differs: {'; '.join(hardware)})" if hardware else ""
    if points:
        shown = ", ".join(map(str, points[:10])) + (f" and {len(points) - 10} more" if len(points) > 10 else "")
        return f"robust on other points: test point(s) {shown}{where}"
    return f"the numbers differ{where}"


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any, bool]]:
    """(quantity, recorded, now, ok) for every compared number and mask; exact on CPU, GPU_TOLERANCE elsewhere."""
    exact = old.get("device") == "cpu" and new.get("device") == "cpu"
    tolerance = 0.0 if exact else GPU_TOLERANCE
    numbers = NUMBERS + (("certified_accuracy",) if old.get("certified_accuracy") is not None else ())
    rows = [(k, old[k], new.get(k), new.get(k) is not None and abs(new[k] - old[k]) <= tolerance) for k in numbers]
    rows += [(f"after {k}", v, new["per_attack"].get(k, float("nan")),
              abs(new["per_attack"].get(k, float("nan")) - v) <= tolerance) for k, v in old["per_attack"].items()]
    if exact:
        rows += [(k, f"{old[k].count('1')} of {len(old[k])}",
                  f"{(new.get(k) or '').count('1')} of {len(new.get(k) or '')}", old[k] == new.get(k))
                 for k in (*MASKS, "certified_mask") if old.get(k)]
    if (old["config"].get("schema") or 0) >= 2:  # ids from before EvalConfig hashed other fields: not comparable
        rows.append(("record id", old["id"], new["id"], old["id"] == new["id"]))
    return rows
