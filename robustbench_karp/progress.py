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
    (name, forward budget per point)), start(n points), conditional(names) (escalations, which run on a
    batch only when their rule fires), then per batch: batch(b), attack(name, points, budget) as each
    attack starts on the points still standing, labels(y) of those points, tick(forward passes so far) and
    outputs(logits) after every pass, and update(points) when the batch is done.

    Final verdicts (final()): a point leaves the cascade when it is misclassified clean, certified, or
    broken (a later attack is given fewer points), and every point of a finished batch is final.

    Time left (seconds_left()): for every (batch, attack) still to run, the points expected to reach it,
    times the passes per point that attack really spent so far (its forward budget before it finished
    once), over its measured passes per second (the attacks' so far before it ran); plus, per batch to
    come, the clean prediction and certification time per point measured. The points expected to reach
    attack k from n standing at attack j (or at the batch's start) are n x (points k was given) / (points
    j was given) over the batches seen that far; where none was, n x the share of j's points still
    standing as its passes show (when j is running: survival()), and 0 for an escalation. The running
    attack's own remainder shrinks with the share of its points its latest pass still ran on (an attack
    that drops broken points). So broken and certified points, early stop and escalations that do not
    fire all shorten the estimate as they are seen. While an attack runs for the first time and its passes
    have not yet shown what it breaks (measuring()), there is no estimate: the points left to the attacks
    after it could be all or none (a smallcnn's first batch on MNIST: 1700 s "left" for 31 s real).
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.plan: list[tuple[str, float | None]] = []  # (attack, forward budget per point) in cascade order
        self.escalations: set[str] = set()
        self.batch_size, self.total, self.done, self.passes, self.b = 0, 0, 0, 0, 0
        self.started = clock()
        self.open = False  # a batch is running
        self.batch_points = 0  # points of the running batch
        self.given: dict[int, int] = {}  # running batch: position in the plan (-1: the batch) -> points given
        self.pos, self.name, self.attack_points = -1, "", 0  # the running attack ("", -1 before a batch's first)
        self.mark_time, self.mark_passes = self.started, 0  # when the running stage began
        self.tick_time, self.low = self.started, False  # the latest pass; low: the running attack breaks all it has
        self.rate: dict[str, list[float]] = {}  # attack -> [passes, seconds] of its finished runs
        self.spent: dict[str, list[float]] = {}  # attack -> [passes, points given] of its finished runs
        self.totals: dict[int, int] = {}  # position -> points given over finished batches (-1: their points)
        self.clean = [0.0, 0]  # [seconds, points]: clean prediction and certification before the first attack
        self.y, self.broken = None, None  # the running attack's labels; the most of its points one pass misclassified
        self.rows: int | None = None  # the fewest rows of the running attack's passes (of more than one row)
        self.trail: list[int] = []  # the rows of the running attack's passes of more than one row, the latest last
        self.settled = False  # measuring() has ended for the running attack

    def expect(self, attacks: list[tuple[str, float | None]], batch_size: int) -> None:
        """The cascade about to run on every batch (name, forward budget per point) and the logical batch size."""
        self.plan, self.batch_size = list(attacks), batch_size

    def conditional(self, names: list[str]) -> None:
        """Attacks of the cascade that run on a batch only when their rule fires (strong's escalations)."""
        self.escalations = set(names)

    def start(self, n: int) -> None:
        self.total, self.started = n, self.clock()
        self.mark_time = self.started

    def batch(self, b: int) -> None:
        self._close_batch()
        self.b, self.open, self.pos, self.name = b, True, -1, ""
        self.batch_points = max(min(self.batch_size or self.total, self.total - self.done), 0)
        self.given = {-1: self.batch_points}
        self.mark_time, self.mark_passes = self.clock(), self.passes
        self.tick_time = self.mark_time

    def attack(self, name: str, points: int, budget: float | None = None) -> None:
        """An attack starts on `points` points and takes about `budget` forward passes per point at most."""
        if not self.open:  # a reporter driven without batch(): one batch of the rest
            self.batch(self.b)
        if name not in self._names():
            self.plan.append((name, budget))
        self._close_stage()
        at = self._names().index(name)
        self.given.update({skipped: 0 for skipped in range(self.pos + 1, at)})  # escalations that did not fire
        self.given[at] = points
        self.pos, self.name, self.attack_points, self.y, self.broken, self.rows = at, name, points, None, None, None
        self.trail, self.settled = [], False

    def labels(self, y) -> None:
        """The running attack's points' labels, (points,): its forward passes over all of them tell what broke so far."""
        self.y, self.broken = y, None

    def tick(self, passes: int) -> None:
        if self.name and passes - self.passes > 1:  # one row is a probe of the class count, not the points at work
            # the fewest rows a pass had: an attack that drops broken points has fewer and fewer (the engine's
            # prediction of its x_adv, over every point it was given, comes after it is done)
            self.rows = min(self.rows or passes - self.passes, passes - self.passes)
            self.trail = self.trail[-2:] + [passes - self.passes]
        self.passes, self.tick_time = passes, self.clock()

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

    def update(self, k: int) -> None:
        """k more points are done: those of the batch that just finished (or resumed from partial results)."""
        if self.open:
            self.batch_points = self.given[-1] = k
            self._close_batch()
        self.done += k

    def final(self) -> int:
        """Points whose verdict is final: those of finished batches, and those the running batch's cascade has left."""
        if not self.open or self.pos < 0:
            return min(self.done, self.total) if self.total else self.done
        return min(self.done + max(self.batch_points - self.attack_points, 0), self.total)

    def _names(self) -> list[str]:
        return [name for name, _ in self.plan]

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
        self.mark_time, self.mark_passes, self.tick_time = now, self.passes, now

    def _close_batch(self) -> None:
        """The running batch is over: every attack it did not start got no points."""
        if not self.open:
            return
        self._close_stage()
        for at in range(-1, len(self.plan)):
            self.totals[at] = self.totals.get(at, 0) + self.given.get(at, 0)
        self.open, self.pos, self.name, self.given, self.y, self.broken, self.rows = False, -1, "", {}, None, None, None

    def reach(self, k: int, j: int, points: float) -> float:
        """Points expected to reach attack k (plan position) from `points` standing at j (-1: a batch's start)."""
        known = k in self.given  # the running batch has gone past k: it counts too
        went_on = self.totals.get(k, 0) + (self.given[k] if known else 0)
        went_in = self.totals.get(j, 0) + (self.given.get(j, 0) if known else 0)
        if went_in > 0:
            return points * min(went_on / went_in, 1.0)
        if self.plan[k][0] in self.escalations:
            return 0.0
        deepest = self.pos if self.open and j <= self.pos < k else j  # the furthest the running batch has seen
        if deepest != j:
            points = self.reach(deepest, j, points)
        if deepest == self.pos and self.name:
            return 0.0 if self.low else points * self.survival()
        return points

    def survival(self) -> float:
        """The share of the running attack's points still standing as its passes show: not misclassified by a pass
        over all of them, and no more than its latest pass's rows (an attack that drops broken points); 1 before."""
        if not self.attack_points:
            return 1.0
        broken = 0 if self.broken is None else int(self.broken)
        return max(min(1.0 - broken / self.attack_points, self.at_work()), 0.0)

    def at_work(self) -> float:
        """The share of the running attack's points its passes still run on (1 for an attack that drops none)."""
        return min(self.rows / self.attack_points, 1.0) if self.rows and self.attack_points else 1.0

    def _rate(self, name: str) -> float | None:
        """Passes per second of the attack (its running part included), else of every attack so far (not the clean
        prediction and certification: their time passes few images through the network); None before any."""
        running = (self.passes - self.mark_passes, self.tick_time - self.mark_time) if self.name else (0, 0.0)
        if running[0] < self.attack_points:  # not yet one pass over its points: class-count probes, no rate yet
            running = (0, 0.0)
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
        if not points and self.low and name == self.name and self.passes > self.mark_passes:
            return (self.passes - self.mark_passes) / self.attack_points  # bounds(): it ends now, so it spends this
        return passes / points if points else dict(self.plan).get(name)

    def foreseen(self, name: str) -> float | None:
        """Forward passes per point the attack will spend on a batch to come: per_point(), but for the running attack
        before it finished once, what it spent so far plus its budget's remainder on the share of rows still at work
        (an attack that breaks most points in a few steps costs a few steps a point, not its budget)."""
        passes, points = self.spent.get(name, [0.0, 0])
        budget = dict(self.plan).get(name)
        if points or name != self.name or not budget or not self.attack_points or self.low:
            return self.per_point(name)
        spent = self.passes - self.mark_passes
        return (spent + max(budget * self.attack_points - spent, 0.0) * self.at_work()) / self.attack_points

    def _cascade(self, points: float, j: int) -> float | None:
        """Seconds for the attacks after position j (-1: all) on `points` points standing at j."""
        seconds = 0.0
        for k in range(j + 1, len(self.plan)):
            expected = self.reach(k, j, points)
            if expected <= 0:
                continue
            name = self.plan[k][0]
            rate, per_point = self._rate(name), self.foreseen(name)
            if rate is None or per_point is None:
                return None
            seconds += expected * per_point / rate
        return seconds

    def _running(self) -> float | None:
        """Seconds the running attack still takes on this batch (none for bounds()' low end)."""
        if self.low:
            return 0.0
        rate, so_far = self._rate(self.name), self.passes - self.mark_passes
        per_point, budget = self.per_point(self.name), dict(self.plan).get(self.name)
        if rate is None or per_point is None:
            return None
        expected = self.attack_points * per_point
        if so_far >= expected:  # past what it spent before: at most its budget
            expected = self.attack_points * budget if budget else so_far
        seconds = max(expected - so_far, 0.0) * self.at_work() / rate  # the points it dropped take no more passes
        return max(seconds - (self.clock() - self.tick_time), 0.0)  # the pass under way since the latest tick

    def uncertain(self) -> bool:
        """Whether the running attack is the first of its kind to run: what it leaves standing, and so the cost of
        the attacks after it, is known only from its passes so far (seconds_left(), low: the bounds)."""
        later = [name for name, _ in self.plan[self.pos + 1:] if name not in self.escalations]
        return bool(self.open and self.name and later and not self.totals.get(self.pos, 0))

    SETTLED = 0.9  # a pass on at least this share of the rows of the pass before: the attack's breaks have slowed
    WARM_UP = 3  # passes before the rows can show what an attack breaks: ODI's 2 steps, then APGD's first pass

    def measuring(self) -> bool:
        """Whether the running attack is the first of its kind and its passes do not yet show how many points it
        leaves to the attacks after it: fewer than WARM_UP passes, or its latest pass ran on under SETTLED of the
        rows of the one before and over 1% of its points fewer (points are breaking fast; a standard smallcnn on
        MNIST: 481, 476, 314, 272, 18, 9, 6, 4, 4 rows). Until then those attacks could get any share of the
        points, so there is no estimate (seconds_left(): None). At most a tenth of the attack's budget is spent
        measuring, and once it ends it stays ended for this run of the attack (no flicker back)."""
        if not self.uncertain() or self.settled:
            return False
        budget = dict(self.plan).get(self.name)
        falling = len(self.trail) < self.WARM_UP or (self.trail[-1] < self.SETTLED * self.trail[-2]
                                                     and self.trail[-2] - self.trail[-1] > 0.01 * self.attack_points)
        spent = budget and self.passes - self.mark_passes >= 0.1 * budget * self.attack_points
        self.settled = not falling or bool(spent)  # once shown, an estimate stays: no flicker back to "measuring"
        return not self.settled

    def bounds(self) -> tuple[float | None, float | None]:
        """(the time left if the running attack breaks every point it still has now, so that it ends here having
        spent the passes it has, seconds_left())."""
        self.low = True
        try:
            low = self.seconds_left()
        finally:
            self.low = False
        return low, self.seconds_left()

    def seconds_left(self) -> float | None:
        """About how long the whole run still takes (the class docstring says how); None before any measure."""
        if not self.plan or self.measuring():
            return None
        clean_per_point = self.clean[0] / self.clean[1] if self.clean[1] else 0.0
        left, rest = 0.0, max(self.total - self.done, 0)
        if self.open:
            rest = max(rest - self.batch_points, 0)
            if self.name:
                here, after = self._running(), self._cascade(self.attack_points, self.pos)
            else:
                here = max(clean_per_point * self.batch_points - (self.clock() - self.mark_time), 0.0)
                after = self._cascade(self.batch_points, -1)
            if here is None or after is None:
                return None
            left += here + after
        later = self._cascade(rest, -1) if rest else 0.0
        return None if later is None else left + later + rest * clean_per_point
