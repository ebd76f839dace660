"""One record schema, and every older one migrated on read: here, and nowhere else.

    record = migrate(json.loads(text))      # any schema in, this version's out; its id never changes
    record["config"]["eps"]                 # what decided the numbers is read from the config, only there

An evaluation record (schema 3) holds:
    id, schema                      the EvalConfig's hash (config_hash(config)), and RECORD_SCHEMA
    config                          the EvalConfig, whole (evaluation/evalconfig.py): model, dataset, defense
                                    (name and options), weights, defense_weights, norm, eps, n_examples, seed,
                                    batch_size, attacks, protocol, source, rng
    results                         clean_accuracy, robust_accuracy, per_attack, attack_order, clean_mask,
                                    robust_mask, indices, non_adaptive_accuracy, protocols, protocol_requirements,
                                    indicators (name -> fired, value, threshold, points[, why]: the attack-failure
                                    indicators, evaluation/indicators.py; absent from records made before them,
                                    which read as they are: a result, never part of the id), escalations
                                    (the components a cascade ran only on evidence, attacks/strong.py: batch,
                                    component, rule, fired, value, threshold, points; absent from older
                                    records, which read as they are; never part of the id)
    provenance                      checkpoint, checkpoint_sha256, model_file, train_config, train_conditions,
                                    train_amp, train_outcome, attack_provenance, cost, device, conditions,
                                    versions, created_utc, elapsed_seconds, warnings
An imported record ("source": "external") has a config with the same board fields (model, dataset,
defense, norm, eps, n_examples, attacks) and says what it is beside them (tool, model_id, link, ...).

Schema 2 and older copied config fields to the top level (model, dataset, defense, defense_config,
norm, eps, n_examples, seed, batch_size, attacks, protocol, weights_sha256, defense_weights_sha256,
model_source); migrate() drops the copies and keeps the config. Records from before the EvalConfig
(config schema 1: grouped by the checkpoint file's sha256) get a config of today's shape with
weights "file:<checkpoint sha256>" and "schema": 1: their ids hashed other fields, so they cannot be
re-derived from it. A config's defense is a dict (name and options), or a bare name in records that
never kept the options. Pure: no I/O, no torch.
"""

from __future__ import annotations

import copy
from pathlib import PurePath
from typing import Any

RECORD_SCHEMA = 3
CONFIG_COPIES = ("model", "dataset", "defense", "defense_config", "norm", "eps", "n_examples", "seed", "batch_size",
                 "attacks", "protocol", "weights_sha256", "defense_weights_sha256", "model_source")
BOARD_FIELDS = ("model", "dataset", "defense", "norm", "eps", "n_examples", "attacks")  # what every config has


def migrate(record: dict[str, Any]) -> dict[str, Any]:
    """The record in this version's schema (a new dict; the argument is left as it was)."""
    if not isinstance(record, dict) or "id" not in record:
        raise ValueError("not an evaluation record (no id)")
    if record.get("schema") == RECORD_SCHEMA:
        return _with_indices(_no_absolute_paths(copy.deepcopy(record)))
    out = _no_absolute_paths(copy.deepcopy(record))
    config = out.get("config") if isinstance(out.get("config"), dict) else None
    if record.get("source") == "external":
        config = _external_config(out)
    elif config is None:  # a record built by hand, or from before records kept their config
        config = _config_from_top_level(out)
    elif "schema" not in config:  # config schema 1: before the EvalConfig
        config = _config_v1(config, out)
    for key in CONFIG_COPIES:
        out.pop(key, None)
    out["config"], out["schema"] = config, RECORD_SCHEMA
    return _with_indices(out)


def _with_indices(record: dict[str, Any]) -> dict[str, Any]:
    """A published record leaves out its indices when they are the first n test points (boards/entries.py):
    they are restored here, so every reader sees them."""
    if "indices" in record or not record.get("robust_mask"):
        return record
    return {**record, "indices": list(range(len(record["robust_mask"])))}


def _no_absolute_paths(record: dict[str, Any]) -> dict[str, Any]:
    """Records from before portable paths named files by absolute path (a home directory, published): only the
    file name is kept. A path is provenance, never identity, and nothing follows one from a record."""
    def name_only(value: Any) -> Any:
        return PurePath(value).name if isinstance(value, str) and (value.startswith("/") or value[1:3] == ":\\") \
            else value

    record.pop("model_file", None)  # the module file's absolute path: its name and sha256 are in config.source
    if isinstance(record.get("imported_from"), str):
        record["imported_from"] = portable_source(record["imported_from"])
    if "checkpoint" in record:
        record["checkpoint"] = name_only(record["checkpoint"])
    for facts in (record.get("attack_provenance") or {}).values():
        for key in [k for k in facts if k.endswith("_path")]:
            facts[key] = name_only(facts[key])
    return record


def portable_source(source: str) -> str:
    """Where an import came from, without the importer's directories: a URL as it is, a path from its
    `model_info/` folder on (RobustBench's layout: dataset and threat model), else an absolute path's file name."""
    if "://" in source:
        return source
    path = PurePath(source.replace("\\", "/"))
    if "model_info" in path.parts:
        return "/".join(path.parts[path.parts.index("model_info"):])
    return path.name if source.startswith("/") or source[1:3] in (":\\", ":/") else source


def _defense_of(record: dict[str, Any]) -> dict[str, Any] | str | None:
    """The defense with its options; its bare name where a record never kept them (its entry id hashed None)."""
    defense = record.get("defense_config")
    return defense if isinstance(defense, dict) else record.get("defense")


def _external_config(record: dict[str, Any]) -> dict[str, Any]:
    """An import's board fields. Its defense is RobustBench's model name, with no options (defense_config None)."""
    config = {k: copy.deepcopy(record.get(k)) for k in ("model", "dataset", "norm", "eps", "n_examples", "attacks")}
    config["eps"] = float(config["eps"])
    return {**config, "defense": {"name": record.get("defense")}, "weights": None, "tool": record.get("tool"),
            "model_id": record.get("model_id")}


def _config_from_top_level(record: dict[str, Any]) -> dict[str, Any]:
    weights = record.get("weights_sha256") or (f"file:{record['checkpoint_sha256']}"
                                                if record.get("checkpoint_sha256") else None)
    config = {"model": record.get("model"), "dataset": record.get("dataset"), "defense": _defense_of(record),
              "weights": weights, "defense_weights": record.get("defense_weights_sha256"), "norm": record.get("norm"),
              "eps": float(record["eps"]) if record.get("eps") is not None else None,
              "n_examples": record.get("n_examples"), "seed": record.get("seed"),
              "batch_size": record.get("batch_size"), "attacks": record.get("attacks") or [],
              "protocol": record.get("protocol"), "schema": 0}
    if record.get("model_source"):
        config["source"] = record["model_source"]
    return config


def _config_v1(config: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    sha = config.get("checkpoint_sha256") or record.get("checkpoint_sha256")
    defense = config.get("defense_config") if isinstance(config.get("defense_config"), dict) else _defense_of(record)
    return {"model": config["model"], "dataset": config["dataset"], "defense": defense,
            "weights": f"file:{sha}" if sha else None, "defense_weights": None, "norm": config["norm"],
            "eps": float(config["eps"]), "n_examples": config["n_examples"], "seed": config["seed"],
            "batch_size": config["batch_size"], "attacks": config["attacks"], "protocol": None, "schema": 1}


def is_external(record: dict[str, Any]) -> bool:
    return record.get("source") == "external"


def defense_name(record: dict[str, Any]) -> str | None:
    defense = record["config"].get("defense")
    return defense.get("name") if isinstance(defense, dict) else defense
