"""Progress reporting without printing from the library, and the cascade's time-left model.

Library code wraps long loops in `progress(iterable, total=..., desc=...)`. By default that is the
iterable itself; the CLI installs tqdm with `use(factory)`, so only the CLI draws progress bars.

CascadeTracker is the engine's reporter state behind the CLI's evaluation display: which points have
a final verdict, and how long the run still takes. It draws nothing (cli/progress.py does).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_factory: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("karp_progress", default=None)


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterable[T]:
    factory = _factory.get()
    return iterable if factory is None else factory(iterable, total=total, desc=desc)


@contextlib.contextmanager
def use(factory: Callable) -> Iterator[None]:
    """Within the block, progress() wraps iterables with factory(iterable, total=, desc=)."""
    token = _factory.set(factory)
    try:
        yield
    finally:
        _factory.reset(token)


class CascadeTracker:
    """What an evaluation has settled and what it has left, from the engine's reporter calls.

    Calls, in the order the engine and harness make them: expect(attacks, batch size) (the cascade:
    (name, forward budget per point)), start(n points), then per batch: batch(b), attack(name, points,
    budget) as each attack starts on the points still standing, tick(forward passes so far) after every
    pass, and update(points) when the batch is done.

    Final verdicts (final()): a point leaves the cascade when it is misclassified clean, certified, or
    broken (the next attack is given fewer points), and every point of a finished batch is final.

    Time left (seconds_left()): for every (batch, attack) still to run, the points expected to reach it
    (points standing now in that batch, times the survival measured so far for each attack in between:
    points it passed on / points it was given, 1 where not measured yet), times the passes per point that
    attack really spent so far (its forward budget before it finished once), over its measured passes
    per second (the run's before it ran); plus, per batch to come, the clean prediction and certification
    time per point measured. Early stop and broken points make an attack spend less than its budget;
    certified and broken points skip the later attacks: both only shorten the estimate as they are seen.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.plan: list[tuple[str, float | None]] = []  # (attack, forward budget per point) in cascade order
        self.batch_size, self.total, self.done, self.passes, self.b = 0, 0, 0, 0, 0
        self.started = clock()
        self.open = False  # a batch is running
        self.batch_points = 0  # points of the running batch
        self.given: list[int] = []  # points each attack of the running batch was given, in cascade order
        self.name, self.attack_points = "", 0  # the running attack ("" before the first one of a batch)
        self.mark_time, self.mark_passes = self.started, 0  # when the running stage began
        self.rate: dict[str, list[float]] = {}  # attack -> [passes, seconds] of its finished runs
        self.spent: dict[str, list[float]] = {}  # attack -> [passes, points given] of its finished runs
        self.flow: dict[int, list[int]] = {}  # stage i -> [points in, points on]: 0 batch -> first attack, i attack i-1 -> i
        self.clean = [0.0, 0]  # [seconds, points]: clean prediction and certification before the first attack
        self.y, self.broken = None, None  # the running attack's labels; the most of its points one pass misclassified

    def expect(self, attacks: list[tuple[str, float | None]], batch_size: int) -> None:
        """The cascade about to run on every batch (name, forward budget per point) and the logical batch size."""
        self.plan, self.batch_size = list(attacks), batch_size

    def start(self, n: int) -> None:
        self.total, self.started = n, self.clock()
        self.mark_time = self.started

    def batch(self, b: int) -> None:
        self._close_batch()
        self.b, self.open, self.given, self.name = b, True, [], ""
        self.batch_points = max(min(self.batch_size or self.total, self.total - self.done), 0)
        self.mark_time, self.mark_passes = self.clock(), self.passes

    def attack(self, name: str, points: int, budget: float | None = None) -> None:
        """An attack starts on `points` points and takes about `budget` forward passes per point at most."""
        if not self.open:  # a reporter driven without batch(): one batch of the rest
            self.batch(self.b)
        if name not in self._names():
            self.plan.append((name, budget))
        self._close_stage()
        self._book(len(self.given), self.given[-1] if self.given else self.batch_points, points)
        self.given.append(points)
        self.name, self.attack_points, self.y, self.broken = name, points, None, None

    def tick(self, passes: int) -> None:
        self.passes = passes

    def update(self, k: int) -> None:
        """k more points are done: those of the batch that just finished (or resumed from partial results)."""
        if self.open:
            self.batch_points = k
            self._close_batch()
        self.done += k

    def final(self) -> int:
        """Points whose verdict is final: those of finished batches, and those the running batch's cascade has left."""
        if not self.open or not self.given:
            return min(self.done, self.total) if self.total else self.done
        return min(self.done + max(self.batch_points - self.given[-1], 0), self.total)

    def _names(self) -> list[str]:
        return [name for name, _ in self.plan]

    def _book(self, stage: int, went_in: int, went_on: int) -> None:
        if went_in > 0:
            seen = self.flow.setdefault(stage, [0, 0])
            seen[0] += went_in
            seen[1] += min(went_on, went_in)

    def _close_stage(self) -> None:
        """Book the finished stage's time and passes: the clean prediction's, or the running attack's."""
        now, passes = self.clock(), self.passes - self.mark_passes
        if self.name:
            rate = self.rate.setdefault(self.name, [0.0, 0.0])
            rate[0] += passes
            rate[1] += now - self.mark_time
            spent = self.spent.setdefault(self.name, [0.0, 0])
            spent[0] += passes
            spent[1] += self.attack_points
        elif self.open:
            self.clean[0] += now - self.mark_time
            self.clean[1] += self.batch_points
        self.mark_time, self.mark_passes = now, self.passes

    def _close_batch(self) -> None:
        """The running batch is over: the attack after the last one that ran got no points (nothing stood)."""
        if not self.open:
            return
        self._close_stage()
        if len(self.given) < len(self.plan):
            self._book(len(self.given), self.given[-1] if self.given else self.batch_points, 0)
        self.open, self.name, self.given, self.y, self.broken = False, "", [], None, None

    def labels(self, y) -> None:
        """The running attack's points' labels, (points,): its forward passes over all of them tell what broke so far."""
        self.y, self.broken = y, None

    def outputs(self, logits) -> None:
        """A forward pass's (rows, classes) logits; on all of the running attack's points, count the misclassified.

        The most seen in one pass is a lower bound on what the attack breaks (an attack keeps the first
        x_adv that breaks a point). Kept as a tensor: no device sync until the estimate reads it.
        """
        y = self.y
        if y is None or getattr(logits, "dim", lambda: 0)() != 2 or logits.shape[0] != len(y) or len(y) != self.attack_points:
            return
        wrong = (logits.detach().argmax(1) != y).sum()
        self.broken = wrong if self.broken is None else self.broken.maximum(wrong)

    def survival(self, stage: int) -> float:
        """The share of points that go on through stage (0: a batch into the first attack), as measured on earlier
        batches; for the running attack not measured yet, the share not yet seen broken; else 1."""
        went_in, went_on = self.flow.get(stage, [0, 0])
        if went_in:
            return went_on / went_in
        if self.name and stage == len(self.given) and self.broken is not None and self.attack_points:
            return 1.0 - int(self.broken) / self.attack_points
        return 1.0

    def _rate(self, name: str) -> float | None:
        """Passes per second of the attack (its running part included), else of every attack so far (not the clean
        prediction and certification: their time passes few images through the network); None before any."""
        running = (self.passes - self.mark_passes, self.clock() - self.mark_time) if self.name else (0, 0.0)
        passes, seconds = self.rate.get(name, [0.0, 0.0])
        if name == self.name:
            passes, seconds = passes + running[0], seconds + running[1]
        if passes > 0 and seconds > 0:
            return passes / seconds
        passes = sum(p for p, _ in self.rate.values()) + running[0]
        seconds = sum(s for _, s in self.rate.values()) + running[1]
        return passes / seconds if passes > 0 and seconds > 0 else None

    def per_point(self, name: str) -> float | None:
        """Forward passes per point the attack spent on its finished runs, else its budget (None: neither known)."""
        passes, points = self.spent.get(name, [0.0, 0])
        return passes / points if points else dict(self.plan).get(name)

    def _cascade(self, points: float, first: int) -> float | None:
        """Seconds for `points` points entering attack `first` and going on through the rest of the cascade."""
        seconds = 0.0
        for i, (name, _) in enumerate(self.plan[first:], start=first):
            if points <= 0:
                break
            rate, per_point = self._rate(name), self.per_point(name)
            if rate is None or per_point is None:
                return None
            seconds += points * per_point / rate
            points *= self.survival(i + 1)
        return seconds

    def _running(self) -> float | None:
        """Seconds the running attack still takes on this batch."""
        rate, so_far = self._rate(self.name), self.passes - self.mark_passes
        per_point, budget = self.per_point(self.name), dict(self.plan).get(self.name)
        if rate is None or per_point is None:
            return None
        expected = self.attack_points * per_point
        if so_far >= expected:  # past what it spent before: at most its budget
            expected = self.attack_points * budget if budget else so_far
        return max(expected - so_far, 0.0) / rate

    def seconds_left(self) -> float | None:
        """About how long the whole run still takes (the class docstring says how); None before any measure."""
        clean_per_point = self.clean[0] / self.clean[1] if self.clean[1] else 0.0
        left, rest = 0.0, max(self.total - self.done, 0)
        if self.open:
            rest = max(rest - self.batch_points, 0)
            if self.name:
                here, stage = self._running(), len(self.given)
                standing = self.attack_points * self.survival(stage)
            else:
                here = max(clean_per_point * self.batch_points - (self.clock() - self.mark_time), 0.0)
                standing, stage = self.batch_points * self.survival(0), 0
            after = self._cascade(standing, stage)
            if here is None or after is None:
                return None
            left += here + after
        later = self._cascade(rest * self.survival(0), 0)
        return None if later is None else left + later + rest * clean_per_point
