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
    """Evaluation progress on stderr: the running attack and batch, points done, passes, time left.

    It is the engine's reporter (.batch(b), .attack(name, points, budget), .tick(forward passes)) and takes
    the harness's on_start/on_batch. On a terminal, a tqdm bar over the test points whose description
    names the running attack and whose postfix counts forward passes, so it moves within a batch.
    Elsewhere (a log file, CI) a plain line at most every `interval` seconds (KARP_PROGRESS_INTERVAL,
    default 10), also while one batch is being attacked.
    """

    def __init__(self, stream=None, interval: float | None = None):
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = float(os.environ.get("KARP_PROGRESS_INTERVAL", "10")) if interval is None else interval
        self.bar, self.total, self.done, self.passes, self.b = None, 0, 0, 0, 0
        self.name, self.started, self.shown = "", time.perf_counter(), 0.0
        self.attack_started, self.attack_passes, self.attack_budget = self.started, 0, None

    def start(self, n: int) -> None:
        self.total, self.started = n, time.perf_counter()
        if self.tty:
            self.bar = tqdm(total=n, desc="evaluating", unit="img", file=self.stream, leave=False)

    def batch(self, b: int) -> None:
        self.b = b

    def attack(self, name: str, points: int, budget: float | None = None) -> None:
        """An attack starts on `points` points and takes about `budget` forward passes per point at most."""
        self.name = name
        self.attack_started, self.attack_passes = time.perf_counter(), self.passes
        self.attack_budget = points * budget if budget else None
        self._show(force=not self.shown)

    def tick(self, passes: int) -> None:
        self.passes = passes
        self._show()

    def update(self, k: int) -> None:
        self.done += k
        if self.bar is not None:
            self.bar.update(k)
        self._show()

    def attack_left(self) -> str:
        """', pgd 40% of its passes, at most about 12 s left in it' once the running attack has made some
        progress through its pass budget (early stop ends it sooner); '' before that or without a budget."""
        if not self.attack_budget or not self.name:
            return ""
        fraction = (self.passes - self.attack_passes) / self.attack_budget
        if not 0.01 <= fraction < 1:
            return ""
        seconds = (time.perf_counter() - self.attack_started) * (1 - fraction) / fraction
        return f", {self.name} {100 * fraction:.0f}% of its passes, at most about {seconds:.0f} s left in it"

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        left = f", about {elapsed / self.done * (self.total - self.done):.0f} s left" if self.done else ""
        return (f"evaluating: {self.name or 'clean'} on batch {self.b + 1}: {self.done}/{self.total} points done, "
                f"{self.passes} forward passes, {elapsed:.0f} s{left}{self.attack_left()}")

    def _show(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.shown < (0.2 if self.tty else self.interval):
            return
        self.shown = now
        if self.bar is not None:
            self.bar.set_description(f"{self.name or 'clean'} (batch {self.b + 1})", refresh=False)
            self.bar.set_postfix_str(f"{self.passes} passes{self.attack_left()}", refresh=False)
        elif not self.tty:
            print(self.line(), file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
