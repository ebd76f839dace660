"""How long a training would take on this device, measured before it starts.

    seconds = estimate_seconds(config, device)      # a few timed steps of the real loss, times the steps to run

Training on demand (an `evaluate` whose checkpoint is missing) says what it trains, why, and this
estimate; past KARP_TRAIN_LIMIT_SECONDS (default 600) the CLI asks for `--train` instead of starting
a run of hours or days (ResNet-18 for 100 epochs of CIFAR-10 on a laptop CPU).
"""

from __future__ import annotations

import math
import os
import time

import torch

from robustbench_karp.data import DATASETS, load_split
from robustbench_karp.defenses.base import Recipe, build_defense
from robustbench_karp.defenses.memory import ExampleMemory
from robustbench_karp.threat import ThreatModel
from robustbench_karp.training.optim import make_optimizer

TIMED_STEPS = 2  # after one warm-up step (allocations, kernel selection)


def limit_seconds() -> float:
    return float(os.environ.get("KARP_TRAIN_LIMIT_SECONDS", "600"))


def estimate_seconds(config, device: torch.device, data_dir=None, download: bool = True) -> float:
    """Seconds to train config on device: the time of a real training step (the defense's loss, backward,
    optimizer step) on one batch, times the steps of every epoch, plus a tenth for validation."""
    from robustbench_karp.training.config import build_model

    recipe = Recipe(**config.recipe)
    data = load_split(DATASETS.get(config.dataset), train=True, data_dir=data_dir, download=download)
    n_train = (config.train_size or len(data) - config.val_size)
    idx = torch.arange(min(recipe.batch_size, n_train))
    x, y = (t.to(device) for t in data.batch(idx))
    model = build_model(config).to(device).train()  # a throwaway copy: the real run starts from its own init
    defense = build_defense(config.defense["name"], {k: v for k, v in config.defense.items() if k != "name"})
    optimizer = make_optimizer(model, recipe)
    threat = ThreatModel(config.norm, config.eps)
    gen = torch.Generator(device=device).manual_seed(0)
    memory = ExampleMemory(len(idx), tuple(x.shape[1:]), device) if defense.uses_memory() else None
    started = 0.0
    for step in range(1 + TIMED_STEPS):
        if step == 1:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
        extra = {"memory": memory.rows(idx)} if memory is not None else {}
        loss, _ = defense.loss(model, x, y, threat, gen, **extra)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    per_step = (time.perf_counter() - started) / TIMED_STEPS
    return 1.1 * per_step * math.ceil(n_train / recipe.batch_size) * recipe.epochs


def describe_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
