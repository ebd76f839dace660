"""How long a training takes on this device: measured before it starts, corrected while it runs.

    estimate = measure_training(config, device)        # real steps of the loop, timed, per phase
    estimate.seconds()                                  # the whole training; .seconds(5) from epoch 5 on
    clock = TrainingClock(say=print, tty=False)         # a loop callback: calibrated on the first batches,
    clock.expect(estimate)                              # corrected after every epoch, a line every 10 s off a tty

The steps are the loop's own (train_epoch on a few real batches: the defense's loss with the loop's
ramp, autocast, channels-last, example memory and weight average), timed after a warm-up, and the
median kept. A defense whose cost changes with the eps warm-up (crown-ibp runs CROWN only while eps
ramps up, about 7x the IBP step) is timed in both phases: timing it at the end of the ramp alone
predicted a third of its real time. The per-epoch validation (PGD-10 on the validation slice and the
guard) is timed on a fifth of its points, after a warm-up. Training on demand (an `evaluate` whose checkpoint is missing)
says this estimate; past KARP_TRAIN_LIMIT_SECONDS (default 600) the CLI asks for `--train` first.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from robustbench_karp.data import DATASETS, ImageSet, load_split
from robustbench_karp.defenses.base import Recipe, build_defense
from robustbench_karp.defenses.memory import ExampleMemory
from robustbench_karp.devices import Distributed
from robustbench_karp.training.optim import WeightAverage

MIN_TIMED, MAX_TIMED, TIMED_SECONDS = 3, 8, 1.0  # timed steps per phase: at least 3, until 1 s, at most 8


def limit_seconds() -> float:
    return float(os.environ.get("KARP_TRAIN_LIMIT_SECONDS", "600"))


@dataclass(frozen=True)
class TrainingEstimate:
    """Seconds per training step in and after the eps warm-up, per-epoch validation, and the run's shape."""

    epochs: int
    steps_per_epoch: int
    ramp_epochs: int  # the first epochs, whose steps cost ramp_step (eps still rising)
    ramp_step: float
    step: float
    validation: float  # seconds of one epoch's validation and guard measurement
    batches: int  # batches timed

    def step_seconds(self, epoch: int) -> float:
        return self.ramp_step if epoch < self.ramp_epochs else self.step

    def seconds(self, start: int = 0, end: int | None = None) -> float:
        """Seconds of epochs start..end-1 (0-based; end None: the last)."""
        end = self.epochs if end is None else end
        return sum(self.step_seconds(e) * self.steps_per_epoch + self.validation for e in range(start, end))


def estimate_seconds(config, device: torch.device, data_dir=None, download: bool = True) -> float:
    """Seconds to train config on device (measure_training's whole run)."""
    return measure_training(config, device, data_dir, download).seconds()


def measure_training(config, device: torch.device, data_dir=None, download: bool = True) -> TrainingEstimate:
    """Time the loop's real steps on a throwaway copy of the model (the run starts from its own init)."""
    from robustbench_karp.training.config import build_model
    from robustbench_karp.training.loop import _measure, _optimization, split_train

    recipe = Recipe(**config.recipe)
    data = load_split(DATASETS.get(config.dataset), train=True, data_dir=data_dir, download=download)
    train_idx, val_idx, guard_idx = split_train(data, config)
    n = min(len(train_idx), recipe.batch_size * (2 + 2 * MAX_TIMED))
    sample = ImageSet(data.images[train_idx[:n]], data.labels[train_idx[:n]])  # real batches, memory for these only
    env = Distributed(0, 1, device)  # one process, whatever torchrun says: nothing here is shared
    model = build_model(config).to(device, memory_format=torch.channels_last if recipe.channels_last
                                   else torch.preserve_format)
    defense = build_defense(config.defense["name"], {k: v for k, v in config.defense.items() if k != "name"})
    optimizer, scheduler = _optimization(model, recipe, len(train_idx), env)
    memory = ExampleMemory(n, tuple(data.images.shape[1:]), device) if defense.uses_memory() else None
    average = WeightAverage(model, recipe.ema_decay) if recipe.ema_decay > 0 else None
    batches = iter(torch.arange(n).split(recipe.batch_size) if n else [])

    def phase(epoch: int, warm: int) -> list[float]:
        from robustbench_karp.training.loop import train_epoch

        times: list[float] = []
        for i in range(warm + MAX_TIMED):
            idx = next(batches, None)
            if idx is None or (i >= warm + MIN_TIMED and sum(times) >= TIMED_SECONDS):
                break
            _sync(device)
            started = time.perf_counter()
            train_epoch(model, defense, sample, idx, config, epoch, optimizer, scheduler, env, [],
                        after_step=average and (lambda: average.update(model)), memory=memory)
            _sync(device)
            if i >= warm:
                times.append(time.perf_counter() - started)
        return times or [0.0]

    ramp = min(recipe.epochs, math.ceil(recipe.eps_ramp_epochs)) if defense.uses_ramp() else 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # dropout: the run's RNG untouched
        rising = phase(0, warm=2) if ramp else []
        steady = phase(ramp, warm=2 if not ramp else 1) if ramp < recipe.epochs else rising
    v, g = min(len(val_idx), max(1, config.val_size // 5)), min(len(guard_idx), max(1, config.guard_size // 5))
    _measure(model, data, val_idx[:8], guard_idx[:8], config, env, defense.adversarial)  # warm-up: allocations
    started = time.perf_counter()
    _measure(model, data, val_idx[:v], guard_idx[:g], config, env, defense.adversarial)
    _sync(device)
    validation = (time.perf_counter() - started) * (config.val_size + config.guard_size * defense.adversarial) / (
        v + g * defense.adversarial)
    steady_step = statistics.median(steady)
    return TrainingEstimate(recipe.epochs, math.ceil(len(train_idx) / recipe.batch_size), ramp,
                            statistics.median(rising) if rising else steady_step, steady_step, validation,
                            len(rising) + (len(steady) if steady is not rising else 0))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainingClock:
    """A training callback that keeps the time left true: say(line) once calibrated on the first batches, after
    the first epoch and then after any epoch that ends an interval (the estimate scaled by the measured over
    the estimated time so far), and off a terminal (tty False) a progress line every interval seconds
    (KARP_PROGRESS_INTERVAL, default 10)."""

    def __init__(self, say: Callable[[str], None], tty: bool = True, interval: float | None = None):
        self.say, self.tty = say, tty
        self.interval = float(os.environ.get("KARP_PROGRESS_INTERVAL", "10")) if interval is None else interval
        self.estimate: TrainingEstimate | None = None
        self.first_epoch, self.started = 0, time.perf_counter()
        self.shown, self.mark, self.ratio = self.started, None, 1.0

    def expect(self, estimate: TrainingEstimate, start_epoch: int = 0) -> None:
        """The run about to start: estimate, from epoch start_epoch (a resumed run)."""
        self.estimate, self.first_epoch = estimate, start_epoch
        self.started = self.shown = time.perf_counter()

    def left(self, epoch: int, step: int) -> float | None:
        """Seconds left from (0-based epoch, steps done in it), corrected by the ratio measured so far."""
        e = self.estimate
        if e is None:
            return None
        rest = e.step_seconds(epoch) * max(e.steps_per_epoch - step, 0) + e.validation + e.seconds(epoch + 1)
        return self.ratio * rest

    def on_step(self, epoch: int, step: int, steps: int, loss: float, accuracy: float) -> None:
        now = time.perf_counter()
        e = self.estimate
        if e is not None and epoch == self.first_epoch and e.step_seconds(epoch) > 0:
            if self.mark is None:
                self.mark = (now, step)  # the batches before it paid for the start: calibrate from here
            elif self.mark[1] >= 0 and step > self.mark[1]:
                self.ratio = (now - self.mark[0]) / (step - self.mark[1]) / e.step_seconds(epoch)
                self.say(f"calibrated on batches {self.mark[1] + 1}-{step}: {self.ratio * e.step_seconds(epoch):.3g} s a "
                         f"batch (measured before the start: {e.step_seconds(epoch):.3g} s); about "
                         f"{describe_seconds(self.left(epoch, step))} left")
                self.mark, self.shown = (now, -1), now  # said once; it counts as the interval's line
        if not self.tty and now - self.shown >= self.interval:
            self.shown = now
            left = self.left(epoch, step)
            self.say(f"training: epoch {epoch + 1}" + (f" of {e.epochs}" if e else "") + f", batch {step} of {steps}, "
                     f"{now - self.started:.0f} s" + (f", about {describe_seconds(left)} left" if left is not None else ""))

    def on_epoch(self, metrics: dict) -> None:
        e, done = self.estimate, int(metrics.get("epoch", 0))
        if e is None or done <= self.first_epoch:
            return
        spent, planned = time.perf_counter() - self.started, e.seconds(self.first_epoch, done)
        self.ratio = spent / planned if planned > 0 else 1.0
        took = f"epoch {done} took {spent:.0f} s (estimated {planned:.0f} s): " if done == self.first_epoch + 1 else (
            f"after epoch {done} of {e.epochs}: ")
        now = time.perf_counter()
        if done < e.epochs and (done == self.first_epoch + 1 or now - self.shown >= self.interval):
            self.say(f"{took}about {describe_seconds(self.ratio * e.seconds(done))} left")
            self.shown = now


def describe_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
