"""The checkpoint store: a registered model's weights by training recipe, trained on demand, then reused.

    path = obtain_checkpoint(make_train_config("smallcnn", "mnist", "pgd-at"), device=torch.device("cpu"))
    model = load_model("smallcnn", dataset="mnist", defense="pgd-at")   # trains once, then reuses

KARP_HOME/checkpoints/<model>-<dataset>-<defense>-s<seed>-<precision>-<hash>.pt holds exactly one
recipe (options, seed and the precision it trained in): another recipe's file is never substituted.
Concurrent runs train a missing checkpoint once (a file lock), and an interrupted training resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_karp.data import DATASETS
from robustbench_karp.engine import resolve_device
from robustbench_karp.models import Classifier, create_model
from robustbench_karp.sources import load_external, load_strict, parse_model, unwrap_state
from robustbench_karp.store import karp_home, load_checkpoint
from robustbench_karp.train import fit, interrupted_epoch
from robustbench_karp.train_config import TrainConfig, make_train_config

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


def load_weights(model: Classifier, path: Path) -> dict[str, Any]:
    """Strictly load a karp-robust checkpoint (or a plain state_dict) into model; errors name the file and keys."""
    payload = load_checkpoint(path)
    state = unwrap_state(payload, path)
    # A plain state_dict of the backbone alone (no "backbone." prefix) is accepted as well.
    load_strict(model if any(k.startswith("backbone.") for k in state) else model.backbone, state, path)
    return payload


def new_model(name: str, dataset: str) -> Classifier:
    spec = DATASETS.get(dataset)
    return create_model(name, in_channels=spec.in_channels, num_classes=spec.num_classes,
                        input_size=spec.input_size, mean=spec.mean, std=spec.std)


def obtain_checkpoint(config: TrainConfig, *, data_dir: Path | None = None, device: torch.device | None = None,
                      download: bool = True, callbacks: list | None = None,
                      limit_seconds: float | None = None) -> Path:
    """The stored checkpoint for config, training it with the loop when none exists.

    limit_seconds: estimate the training first (train_estimate.py), say what is trained, why and for
    about how long, and refuse (TrainingTooLong) past the limit; None trains without estimating.
    """
    device = device or torch.device("cpu")
    found = find_checkpoint(config, device)
    if found is not None:
        return found
    out = checkpoint_path(config, device)
    from robustbench_karp.locks import file_lock

    with file_lock(out):  # concurrent runs train it once: the others wait here, then find it
        found = find_checkpoint(config, device)
        if found is not None:
            return found
        what = (f"{config.recipe['epochs']} epochs of {config.defense['name']} on {config.dataset} "
                f"({out.stem})")
        if limit_seconds is not None:
            from robustbench_karp.train_estimate import describe_seconds, estimate_seconds

            seconds = estimate_seconds(config, device, data_dir, download)
            if seconds > limit_seconds:
                raise TrainingTooLong(f"no checkpoint for {config.model}: training it ({what}) would take about "
                                      f"{describe_seconds(seconds)} on {device}; pass --train to start it, or give "
                                      "--checkpoint")
            log.info("no checkpoint for %s: training it now, %s; about %s on %s", config.model, what,
                     describe_seconds(seconds), device)
        else:
            log.info("no checkpoint for %s: training it now, %s", config.model, what)
        resume = interrupted_epoch(out) is not None  # an interrupted training of this recipe continues
        fit(config, out, data_dir=data_dir, device=device, download=download, callbacks=callbacks, resume=resume)
    return out


class TrainingTooLong(ValueError):
    """Training on demand would take longer than the caller allows (the CLI's --train lifts the limit)."""


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
