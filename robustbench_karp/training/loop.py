"""The one training loop, shared by every defense.

The loop owns the device, autocast, channels-last, the optimizer and learning-rate schedule, the
epochs, the eps warm-up, checkpoints, resume, logs and callbacks, the catastrophic-overfitting
guard, and DistributedDataParallel under torchrun. A defense only supplies the batch loss.

    torchrun --nproc_per_node=2 -m robustbench_karp train --model smallcnn --dataset mnist --defense fgsm-at

Determinism: the shuffle (DistributedSampler with seed + epoch) and the attack generator are
re-seeded from (seed, epoch, rank) at each epoch, so a run resumed after epoch k is identical on
CPU to one that never stopped. Only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from robustbench_karp.attacks.pgd import PGD
from robustbench_karp.data import DATASETS, ImageSet, load_split
from robustbench_karp.defenses.base import Defense, Recipe, build_defense
from robustbench_karp.defenses.memory import ExampleMemory
from robustbench_karp.devices import Distributed, setup_distributed
from robustbench_karp.evaluation.engine import run_attacks
from robustbench_karp.store import load_checkpoint, save_checkpoint
from robustbench_karp.store.identity import cpu_conditions
from robustbench_karp.threat import ThreatModel
from robustbench_karp.training.config import TrainConfig, build_model, effective_amp
from robustbench_karp.training.logs import Callback, write_logs
from robustbench_karp.training.optim import WeightAverage, lr_factor, make_optimizer

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "karp-robust/1"


LOG_EVERY = 25  # training steps between host syncs (progress callbacks, the non-finite-loss check)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; no checkpoint is written over a good one."""


class ResumeError(ValueError):
    """--resume without a checkpoint, or with one of another configuration."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message names the last saved epoch and how to resume."""


def interrupted_epoch(out: Path) -> int | None:
    """The epochs an interrupted run of out's configuration saved in <stem>.last.pt; None when there is none."""
    last = out.with_suffix(".last.pt")
    if not last.is_file():
        return None
    state = load_checkpoint(last).get("state")
    return int(state["epoch"]) if isinstance(state, dict) and "epoch" in state else 0


def robust_accuracy(model: nn.Module, data: ImageSet, indices: torch.Tensor, threat: ThreatModel, seed: int,
                    device: torch.device, batch_size: int = 500) -> tuple[float, float]:
    """(clean, PGD-10) accuracy on data[indices]: the validation and guard measurement."""
    gen = torch.Generator(device=device).manual_seed(seed)
    batches = ((x, y) for _, x, y in data.batches(indices, batch_size))
    result = run_attacks(model, batches, [PGD(steps=10)], threat, gen, device)
    return result.clean_accuracy, result.robust_accuracy


@dataclass
class TrainState:
    """What a resumed run needs, saved every epoch in <stem>.last.pt."""

    epoch: int = 0  # epochs completed
    history: list = field(default_factory=list)
    best_guard: float = -1.0  # best guard PGD accuracy (catastrophic-overfitting detection)
    best_val: float = -1.0  # best validation PGD accuracy (the weights kept on collapse or with select="best")
    best_epoch: int = 0
    best_state: dict | None = None
    stopped_early: bool = False
    train_seconds: float = 0.0  # wall time of the epochs so far, validation included (summed over resumes)


def _epoch_seed(config: TrainConfig, epoch: int, rank: int) -> int:
    return (config.seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**63 - 1)


def train_epoch(model, defense: Defense, data: ImageSet, train_idx: torch.Tensor, config: TrainConfig, epoch: int,
                optimizer, scheduler, env: Distributed, callbacks: list[Callback],
                after_step: Callable[[], None] | None = None, memory: ExampleMemory | None = None) -> dict[str, float]:
    """One pass over the training indices; raises TrainingDiverged on a non-finite loss."""
    recipe = Recipe(**config.recipe)
    sampler = torch.utils.data.DistributedSampler(range(len(train_idx)), num_replicas=env.world, rank=env.rank,
                                                  shuffle=True, seed=config.seed)
    sampler.set_epoch(epoch)
    order = train_idx[torch.tensor(list(iter(sampler)), dtype=torch.long)]
    per_rank = max(1, recipe.batch_size // env.world)
    steps = math.ceil(len(order) / per_rank)
    gen = torch.Generator(device=env.device).manual_seed(_epoch_seed(config, epoch, env.rank))
    autocast = (torch.autocast(env.device.type, dtype=torch.bfloat16) if effective_amp(recipe, env.device) == "bf16"
                else contextlib.nullcontext())
    model.train()
    # Running sums stay on the device; the host syncs once per LOG_EVERY steps (progress, the NaN vote).
    total_loss = torch.zeros((), device=env.device)
    correct = torch.zeros((), dtype=torch.long, device=env.device)
    first_bad = torch.full((), -1, dtype=torch.long, device=env.device)  # the first step with a non-finite loss
    seen = 0
    for step, idx in enumerate(order.split(per_rank)):
        x, y = data.batch(idx)
        x, y = x.to(env.device), y.to(env.device)
        if recipe.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ramp = recipe.eps_ramp_epochs
        scale = min(1.0, (epoch + step / steps) / ramp) if ramp > 0 else 1.0
        threat = ThreatModel(config.norm, config.eps * scale)
        rows = memory.rows(idx) if memory is not None else None
        extra = {"memory": rows} if rows is not None else {}
        if defense.uses_ramp():
            extra["ramp"] = scale
        with autocast:
            loss, logits = defense.loss(model, x, y, threat, gen, **extra)
        bad = ~torch.isfinite(loss.detach()).all()
        first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
        if rows is not None:
            memory.update(idx, rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step()
        total_loss += loss.detach().float() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
        if (step + 1) % LOG_EVERY == 0 or step + 1 == steps:
            _check_finite(first_bad, epoch, env)  # a NaN step's weights are never saved: the epoch is discarded
            for cb in callbacks:
                cb.on_step(epoch, step + 1, steps, total_loss.item() / seen, correct.item() / seen)
    return {"train_loss": total_loss.item() / max(seen, 1), "train_accuracy": correct.item() / max(seen, 1)}


def _check_finite(first_bad: torch.Tensor, epoch: int, env: Distributed) -> None:
    # One vote per log interval, on every rank at the same steps; the step named is the first bad one.
    if env.any_rank(first_bad >= 0):
        step = int(first_bad.item())
        raise TrainingDiverged(f"training diverged: the loss became NaN/inf at epoch {epoch + 1}"
                               + (f", step {step + 1}" if step >= 0 else " (on another rank)"))


def split_train(data: ImageSet, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, validation, guard) indices: validation is the held-out tail, guard a fixed training slice."""
    n = len(data)
    if n <= config.val_size:
        raise ValueError(f"the training split has {n} points, not more than val_size={config.val_size}")
    train_idx = torch.arange(n - config.val_size)
    if config.train_size is not None:
        if not 1 <= config.train_size <= len(train_idx):
            raise ValueError(f"train_size must be in [1, {len(train_idx)}], got {config.train_size}")
        train_idx = train_idx[: config.train_size]
    val_idx = torch.arange(n - config.val_size, n)
    return train_idx, val_idx, train_idx[: config.guard_size]


def _load_resume(last: Path, config: TrainConfig, model: nn.Module, optimizer, scheduler,
                 average: WeightAverage | None, memory: ExampleMemory | None, world: int = 1) -> TrainState:
    if not last.is_file():
        raise ResumeError(f"--resume: no interrupted run to resume ({last} does not exist)")
    payload = load_checkpoint(last)
    if payload.get("config") != asdict(config):
        raise ResumeError(f"--resume: {last} belongs to a different configuration")
    saved_world = int(payload.get("world_size", 1))
    if saved_world != world:  # the schedule's length and each rank's share of the data depend on it
        raise ResumeError(f"{last} was trained by {saved_world} process(es) and this run has {world}: resuming would "
                          "change its learning-rate schedule; run with the same number of processes, or "
                          "`karp-robust train ... --restart`")
    model.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if average is not None:
        average.load_state_dict(payload["average"])
    if memory is not None:
        memory.load_state_dict(payload["memory"])
    return TrainState(**payload["state"])


def _track(state: TrainState, metrics: dict[str, Any], model: nn.Module, config: TrainConfig, keep_best: bool) -> bool:
    """True when the guard says robustness collapsed; otherwise remember the best epoch by validation PGD accuracy."""
    guard = metrics.get("guard_pgd_accuracy")
    if guard is not None:
        if state.best_guard >= 0 and guard < state.best_guard - config.guard_drop:
            return True
        state.best_guard = max(state.best_guard, guard)
    if keep_best and metrics["val_pgd_accuracy"] > state.best_val:
        state.best_val, state.best_epoch = metrics["val_pgd_accuracy"], metrics["epoch"]
        state.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return False


def _optimization(model: nn.Module, recipe: Recipe, n_train: int, env: Distributed):
    """(optimizer, per-step LambdaLR scheduler) for the recipe."""
    optimizer = make_optimizer(model, recipe)
    steps_per_epoch = math.ceil(math.ceil(n_train / env.world) / max(1, recipe.batch_size // env.world))
    total = recipe.epochs * steps_per_epoch
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(recipe, s / total))


def _measure(model: nn.Module, data: ImageSet, val_idx: torch.Tensor, guard_idx: torch.Tensor, config: TrainConfig,
             env: Distributed, adversarial: bool) -> dict[str, float]:
    """Clean and PGD-10 accuracy on the validation slice, and the guard's PGD-10 accuracy (adversarial defenses)."""
    threat = ThreatModel(config.norm, config.eps)
    clean, pgd = robust_accuracy(model, data, val_idx, threat, config.seed, env.device)
    out = {"val_clean_accuracy": clean, "val_pgd_accuracy": pgd}
    if adversarial:
        out["guard_pgd_accuracy"] = robust_accuracy(model, data, guard_idx, threat, config.seed + 1, env.device)[1]
    return out


def _warn_if_at_chance(history: list[dict[str, Any]], epoch: int, classes: int) -> None:
    """A training that fell to chance (a diverged loss that stayed finite) is kept, but never silently."""
    clean = next((h.get("val_clean_accuracy") for h in history if h.get("epoch") == epoch), None)
    if clean is not None and clean < 1.5 / classes:
        log.warning("the kept weights (epoch %d) classify the validation split at chance (clean accuracy %.3f, chance "
                    "%.3f): this training failed, and evaluating its checkpoint measures nothing", epoch, clean,
                    1 / classes)


def fit(config: TrainConfig, out: Path, *, data_dir: Path | None = None, device: torch.device | None = None,
        download: bool = True, resume: bool = False, callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Train config's model with config's defense; write the final checkpoint atomically to `out`.

    Returns the final checkpoint payload. `out.with_suffix('.last.pt')` holds the resumable state,
    written after every epoch; an interrupted run leaves it (and any earlier `out`) intact.
    """
    env = setup_distributed(device or torch.device("cpu"))
    callbacks = list(callbacks or []) if env.main else []
    defense = build_defense(config.defense["name"], {k: v for k, v in config.defense.items() if k != "name"})
    recipe = Recipe(**config.recipe)
    if effective_amp(recipe, env.device) != recipe.amp:
        log.warning("the recipe asks for %s autocast, but %s has no bf16 units: training in float32", recipe.amp,
                    env.device)
    data = load_split(DATASETS.get(config.dataset), train=True, data_dir=data_dir, download=download)
    train_idx, val_idx, guard_idx = split_train(data, config)
    layout = torch.channels_last if recipe.channels_last else torch.preserve_format
    model = build_model(config).to(env.device, memory_format=layout)
    optimizer, scheduler = _optimization(model, recipe, len(train_idx), env)
    last = out.with_suffix(".last.pt")
    average = WeightAverage(model, recipe.ema_decay) if recipe.ema_decay > 0 else None
    memory = ExampleMemory(len(data), tuple(data.images.shape[1:]), env.device) if defense.uses_memory() else None
    state = _load_resume(last, config, model, optimizer, scheduler, average, memory, env.world) if resume else TrainState()
    wrapped = nn.parallel.DistributedDataParallel(model) if dist.is_initialized() else model
    evaluated = average.model if average else model  # the weights that are validated and kept
    try:
        for epoch in range(state.epoch, 0 if state.stopped_early else recipe.epochs):
            started = time.perf_counter()
            metrics = {"epoch": epoch + 1, **train_epoch(wrapped, defense, data, train_idx, config, epoch, optimizer,
                                                          scheduler, env, callbacks,
                                                          after_step=average and (lambda: average.update(model)),
                                                          memory=memory),
                       "lr": optimizer.param_groups[0]["lr"]}
            metrics |= _measure(evaluated, data, val_idx, guard_idx, config, env, defense.adversarial)
            collapsed = _track(state, metrics, evaluated, config, defense.adversarial or recipe.select == "best")
            state.stopped_early = env.any_rank(collapsed)  # all ranks leave the loop together, or none does
            state.epoch, state.train_seconds = epoch + 1, state.train_seconds + time.perf_counter() - started
            state.history.append({**metrics, "train_seconds": state.train_seconds})
            if env.main:
                save_checkpoint(last, {"config": asdict(config), "state_dict": model.state_dict(),
                                       "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                       "average": average.state_dict() if average else None,
                                       "memory": memory.state_dict() if memory else None, "state": asdict(state),
                                       "world_size": env.world})
                write_logs(out.with_suffix(""), state.history)
            for cb in callbacks:
                cb.on_epoch(state.history[-1])
            if state.stopped_early:
                seen = (f"guard PGD accuracy {metrics['guard_pgd_accuracy']:.3f} fell more than {config.guard_drop:.2f} "
                        f"below its best {state.best_guard:.3f}") if collapsed else "another rank's guard collapsed"
                log.warning("catastrophic overfitting at epoch %d: %s; stopping and keeping the epoch-%d weights (best "
                            "validation PGD accuracy %.3f)", epoch + 1, seen, state.best_epoch, state.best_val)
                break
    except KeyboardInterrupt:
        raise TrainingInterrupted(f"training interrupted; {state.epoch} of {recipe.epochs} epochs are saved in "
                                  f"{last}: run the same command again to resume from epoch {state.epoch + 1} "
                                  "(train --restart starts over)") from None
    use_best = state.stopped_early or recipe.select == "best"
    payload = {"format": CHECKPOINT_FORMAT, "config": asdict(config), "amp": effective_amp(recipe, env.device),
               "conditions": {**cpu_conditions(), "device": str(env.device), "world_size": env.world},
               "state_dict": state.best_state if use_best else evaluated.state_dict(),
               "epochs_completed": state.epoch, "selected_epoch": state.best_epoch if use_best else state.epoch,
               "stopped_early": state.stopped_early, "train_seconds": state.train_seconds, "history": state.history}
    if env.main:
        _warn_if_at_chance(state.history, payload["selected_epoch"], DATASETS.get(config.dataset).num_classes)
        save_checkpoint(out, payload)
        if not os.environ.get("KARP_KEEP_RESUME_STATE"):  # kept only to inspect it (the DDP test reads its memory)
            last.unlink(missing_ok=True)  # the run is complete: its resume state (as large as the model) is not needed
    if dist.is_initialized():
        dist.barrier()
    return payload
