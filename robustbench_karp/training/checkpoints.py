"""The trained-model store: a registered model's checkpoint by training recipe, trained on demand, then reused.

    path = obtain_checkpoint(make_train_config("smallcnn", "mnist", "pgd-at"), device=torch.device("cpu"))
    model = robustbench_karp.load_model("smallcnn", dataset="mnist", defense="pgd-at")   # (api.py) the same, loaded

KARP_HOME/checkpoints/<model>-<dataset>-<defense>-s<seed>-<precision>-<hash>.pt holds exactly one
recipe (options, seed and the precision it trained in): another recipe's file is never substituted.
Concurrent runs train a missing checkpoint once (a file lock), and an interrupted training resumes.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

import torch

from robustbench_karp.store import karp_home, load_checkpoint
from robustbench_karp.store.locks import file_lock
from robustbench_karp.training.config import TrainConfig, make_train_config
from robustbench_karp.training.estimate import describe_seconds, measure_training
from robustbench_karp.training.loop import fit, interrupted_epoch

log = logging.getLogger(__name__)


def checkpoint_dir() -> Path:
    return karp_home() / "checkpoints"


def checkpoint_path(config: TrainConfig, device: torch.device) -> Path:
    """Where the checkpoint of config lives once trained on device: its name says the precision it trains in."""
    return checkpoint_dir() / f"{config.stem(config.precision(device))}.pt"


def find_checkpoint(config: TrainConfig, device: torch.device) -> Path | None:
    """The checkpoint of exactly this configuration (recipe, options, seed and precision on device), or None.

    Never another recipe's checkpoint: a different one is used only when named with --checkpoint.
    A checkpoint named before names carried the precision (same config hash) counts when its
    recorded precision is the one this device trains in.
    """
    exact = checkpoint_path(config, device)
    if exact.is_file():
        return exact
    legacy = checkpoint_dir() / f"{config.stem()}.pt"
    if legacy.is_file():
        amp = load_checkpoint(legacy).get("amp", "none")
        if ("bf16" if amp == "bf16" else "fp32") == config.precision(device):
            return legacy
    return None


def obtain_checkpoint(config: TrainConfig, *, data_dir: Path | None = None, device: torch.device | None = None,
                      download: bool = True, callbacks: list | None = None,
                      limit_seconds: float | None = None) -> Path:
    """The stored checkpoint for config, training it with the loop when none exists.

    limit_seconds: estimate the training first (estimate.py), say what is trained, why and for
    about how long, and refuse (TrainingTooLong) past the limit (math.inf: never); None trains without
    estimating. A callback with .expect(estimate, first epoch) (estimate.TrainingClock) is handed the estimate.
    """
    device = device or torch.device("cpu")
    found = find_checkpoint(config, device)
    if found is not None:
        return found
    out = checkpoint_path(config, device)
    with file_lock(out):  # concurrent runs train it once: the others wait here, then find it
        found = find_checkpoint(config, device)
        if found is not None:
            return found
        what = (f"{config.recipe['epochs']} epochs of {config.defense['name']} on {config.dataset} "
                f"({out.stem})")
        resume = interrupted_epoch(out)  # an interrupted training of this recipe continues
        if limit_seconds is not None:
            estimate = measure_training(config, device, data_dir, download)
            seconds = estimate.seconds(resume or 0)
            if seconds > limit_seconds:
                raise TrainingTooLong(f"no checkpoint for {config.model}: training it ({what}) would take about "
                                      f"{describe_seconds(seconds)} on {device}; pass --train to start it, or give "
                                      "--checkpoint")
            log.info("no checkpoint for %s: training it now, %s; about %s on %s (measured on %d batches)",
                     config.model, what, describe_seconds(seconds), device, estimate.batches)
            for cb in callbacks or []:  # a clock corrects the estimate as the training runs
                if hasattr(cb, "expect"):
                    cb.expect(estimate, resume or 0)
        else:
            log.info("no checkpoint for %s: training it now, %s", config.model, what)
        fit(config, out, data_dir=data_dir, device=device, download=download, callbacks=callbacks,
            resume=resume is not None)
    return out


class TrainingTooLong(ValueError):
    """Training on demand would take longer than the caller allows (the CLI's --train lifts the limit)."""


def train_command(train_config: dict[str, Any], data_dir: Path | None = None) -> str:
    """The `karp-robust train` command that rebuilds a checkpoint by its recorded recipe, shell-quoted, complete:
    with the data directory (offline, torchvision's datasets are read from there) where the dataset needs one."""
    from robustbench_karp.data import default_data_dir
    from robustbench_karp.defenses.base import HASH_OPTIONAL

    defense = dict(train_config["defense"])
    name = defense.pop("name")
    parts = ["karp-robust", "train", "--model", train_config["model"], "--dataset", train_config["dataset"],
             "--defense", name, "--norm", train_config["norm"], "--eps", repr(train_config["eps"]),
             "--seed", str(train_config["seed"])]
    if train_config["dataset"] != "digits":  # digits ships with scikit-learn; the others are files on disk
        parts += ["--data-dir", str(data_dir or default_data_dir())]
    default = make_train_config(train_config["model"], train_config["dataset"], name, norm=train_config["norm"],
                                eps=train_config["eps"], seed=train_config["seed"])
    parts += [p for k, v in sorted(defense.items()) if default.defense.get(k) != v for p in ("--defense-arg", f"{k}={v}")]
    flags = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "optimizer": "--optimizer",
             "schedule": "--schedule", "momentum": "--momentum", "weight_decay": "--weight-decay",
             "eps_ramp_epochs": "--eps-ramp-epochs", "ema_decay": "--ema-decay", "select": "--select", "amp": "--amp"}
    recorded = {**HASH_OPTIONAL, **train_config["recipe"]}  # a record older than an optional field ran without it
    for key, value in sorted(recorded.items()):
        if default.recipe.get(key) != value and key in flags:
            parts += [flags[key], str(value)]
        elif key in ("channels_last", "fused") and default.recipe.get(key, False) != value:
            flag = "--" + key.replace("_", "-")
            parts.append(flag if value else flag.replace("--", "--no-", 1))
    if train_config.get("train_size"):
        parts += ["--train-size", str(train_config["train_size"])]
    return shlex.join(parts)
