"""The CLI's progress bars (tqdm on stderr), shared by the command modules.

They live apart from the commands so that no command module imports another for them. Like the
rest of the CLI, only these draw: the library reports progress through callbacks.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm


def tqdm_progress(iterable, *, total=None, desc=""):
    """The CLI's renderer for robustbench_karp.progress: a tqdm bar on stderr (none when not a TTY)."""
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, disable=None)


class TqdmTraining:
    """Progress bar per epoch with running loss and accuracy; one summary line per epoch."""

    def __init__(self):
        self.bar = None

    def on_step(self, epoch, step, steps, loss, accuracy):
        if self.bar is None:
            self.bar = tqdm(total=steps, desc=f"epoch {epoch + 1}", unit="batch", file=sys.stderr, leave=False, disable=None)
        self.bar.update(step - self.bar.n)  # called once per log interval, not per step
        self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.3f}")

    def on_epoch(self, metrics):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        tqdm.write(shown, file=sys.stderr)


class EvalProgress:
    """Evaluation progress on stderr: the running attack and batch, points done, passes, time left for the run.

    It is the engine's reporter (.batch(b), .attack(name, points, budget), .tick(forward passes)), takes
    the harness's .expect(attacks, batch size), on_start and on_batch. On a terminal, a tqdm bar over the
    test points, redrawn at least every REFRESH seconds while passes run (so it moves within a batch), its
    description naming the running attack, its postfix the passes and the time left. Elsewhere (a log
    file, CI) a plain line at most every `interval` seconds (KARP_PROGRESS_INTERVAL, default 10).

    Time left, for the whole run: every attack still to run on this batch and on every later batch, each
    at its pass budget (Attack.forward_budget: about the most forward passes per point it spends; early
    stop spends fewer) over the points that reached it in earlier batches, divided by its own measured
    rate (passes per second; the run's rate for an attack not measured yet).
    """

    REFRESH = 0.5  # seconds between redraws of the terminal bar

    def __init__(self, stream=None, interval: float | None = None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = float(os.environ.get("KARP_PROGRESS_INTERVAL", "10")) if interval is None else interval
        self.bar, self.total, self.done, self.passes, self.b = None, 0, 0, 0, 0
        self.name, self.started, self.shown = "", time.perf_counter(), 0.0
        self.plan: list[tuple[str, float | None]] = []  # (attack, budget per point) in cascade order
        self.batch_size = 0
        self.batch_points = 0  # points in the running batch (those the first attack is given, at most)
        self.attack_started, self.attack_passes, self.attack_points = self.started, 0, 0
        self.rate: dict[str, list[float]] = {}  # attack -> [passes, seconds] measured so far
        self.reach: dict[str, list[int]] = {}  # attack -> [points it was given, batch points] over finished attacks

    def expect(self, attacks: list[tuple[str, float | None]], batch_size: int) -> None:
        """The cascade about to run on every batch (name, forward budget per point) and the logical batch size."""
        self.plan, self.batch_size = list(attacks), batch_size

    def start(self, n: int) -> None:
        self.total, self.started = n, time.perf_counter()
        if self.tty:
            self.bar = tqdm(total=n, desc="evaluating", unit="img", file=self.stream, leave=False, mininterval=0)

    def batch(self, b: int) -> None:
        self._close_attack()
        self.b, self.name, self.batch_points = b, "", min(self.batch_size or self.total, self.total - self.done)

    def attack(self, name: str, points: int, budget: float | None = None) -> None:
        """An attack starts on `points` points and takes about `budget` forward passes per point at most."""
        self._close_attack()
        self.name, self.attack_points = name, points
        self.attack_started, self.attack_passes = time.perf_counter(), self.passes
        if name not in dict(self.plan):
            self.plan.append((name, budget))
        self._show(force=not self.shown)

    def _close_attack(self) -> None:
        """Book the finished attack's passes, time and reach: the rates and fractions the estimate uses."""
        if not self.name:
            return
        spent = self.rate.setdefault(self.name, [0.0, 0.0])
        spent[0] += self.passes - self.attack_passes
        spent[1] += time.perf_counter() - self.attack_started
        reach = self.reach.setdefault(self.name, [0, 0])
        reach[0] += self.attack_points
        reach[1] += max(self.batch_points, 1)
        self.name = ""

    def tick(self, passes: int) -> None:
        self.passes = passes
        self._show()

    def update(self, k: int) -> None:
        self.done += k
        if self.bar is not None:
            self.bar.update(k)
        self._show()

    def _rate(self, name: str) -> float | None:
        passes, seconds = self.rate.get(name, [0.0, 0.0])
        if name == self.name:  # the running attack: its passes so far count too
            passes += self.passes - self.attack_passes
            seconds += time.perf_counter() - self.attack_started
        if passes > 0 and seconds > 0:
            return passes / seconds
        elapsed = time.perf_counter() - self.started
        return self.passes / elapsed if self.passes and elapsed > 0 else None

    def seconds_left(self) -> float | None:
        """About how long the whole run still takes (the class docstring says how); None before any measure."""
        budgets = dict(self.plan)
        names = [name for name, _ in self.plan]
        left = 0.0

        def cost(name: str, points: float) -> float | None:
            rate, budget = self._rate(name), budgets.get(name)
            return None if rate is None or budget is None else points * budget / rate

        running = names.index(self.name) if self.name in names else -1
        pending = []  # (attack, points it should get)
        if running >= 0:
            done_here = self.passes - self.attack_passes
            rate, budget = self._rate(self.name), budgets.get(self.name)
            if rate is None or budget is None:
                return None
            left += max(self.attack_points * budget - done_here, 0) / rate
        later_in_batch = names[running + 1:] if running >= 0 else (names if self.done < self.total else [])
        pending += [(n, self._reach(n) * self.batch_points) for n in later_in_batch]
        batches_after = max(self.total - self.done - self.batch_points, 0)
        pending += [(n, self._reach(n) * batches_after) for n in names]
        for name, points in pending:
            seconds = cost(name, points)
            if seconds is None:
                return None
            left += seconds
        return left

    def _reach(self, name: str) -> float:
        """The share of a batch's points an attack was given so far (1 before it ran: an upper bound)."""
        given, points = self.reach.get(name, [0, 0])
        return given / points if points else 1.0

    def share(self) -> str:
        """', pgd 40% of its passes': how far the running attack is through its pass budget on this batch."""
        budget = dict(self.plan).get(self.name)
        if not self.name or not budget or not self.attack_points:
            return ""
        fraction = (self.passes - self.attack_passes) / (self.attack_points * budget)
        return f", {self.name} {100 * min(fraction, 1.0):.0f}% of its passes"

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        left = self.seconds_left()
        shown = f", about {left:.0f} s left in the run" if left is not None else ""
        return (f"evaluating: {self.name or 'clean'} on batch {self.b + 1}: {self.done}/{self.total} points done, "
                f"{self.passes} forward passes, {elapsed:.0f} s{self.share()}{shown}")

    def _show(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.shown < (self.REFRESH if self.tty else self.interval):
            return
        self.shown = now
        if self.bar is not None:
            left = self.seconds_left()
            self.bar.set_description(f"{self.name or 'clean'} (batch {self.b + 1})", refresh=False)
            self.bar.set_postfix_str(f"{self.passes} passes{self.share()}" + (
                f", about {left:.0f} s left" if left is not None else ""), refresh=False)
            self.bar.refresh()  # redrawn now, within the batch: tqdm would wait for the next update()
        elif not self.tty:
            print(self.line(), file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
