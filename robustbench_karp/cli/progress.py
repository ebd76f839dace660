"""The CLI's progress bars (tqdm on stderr), shared by the command modules.

They live apart from the commands so that no command module imports another for them. Like the
rest of the CLI, only these draw: the library reports progress through callbacks.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

from robustbench_karp.progress import CascadeTracker


def tqdm_progress(iterable, *, total=None, desc=""):
    """The CLI's renderer for robustbench_karp.progress: a tqdm bar on stderr (none when not a TTY)."""
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, disable=None)


def duration(seconds: float) -> str:
    """85 s, 12 min, 1.5 h."""
    return f"{seconds:.0f} s" if seconds < 90 else (f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h")


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


class EvalProgress(CascadeTracker):
    """Evaluation progress on stderr: time left for the run, the running attack and batch, final verdicts, passes.

    It is the engine's reporter (.batch, .attack, .tick) and takes the harness's .expect, on_start (.start)
    and on_batch (.update); robustbench_karp.progress.CascadeTracker keeps the counts and says how the
    time left is estimated. On a terminal, a tqdm bar over the test points that counts those whose
    verdict is final (misclassified, certified, broken, or through every attack), redrawn at least every
    REFRESH seconds while passes run, the time left first on the line so that 80 columns still show it.
    Elsewhere (a log file, CI) a plain line at most every `interval` seconds (KARP_PROGRESS_INTERVAL,
    default 10).
    """

    REFRESH = 0.5  # seconds between redraws of the terminal bar
    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"

    def __init__(self, stream=None, interval: float | None = None, clock=time.perf_counter):
        super().__init__(clock)
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = float(os.environ.get("KARP_PROGRESS_INTERVAL", "10")) if interval is None else interval
        self.bar, self.shown = None, None

    def start(self, n: int) -> None:
        super().start(n)
        if self.tty:
            self.bar = tqdm(total=n, desc="evaluating", unit="img", file=self.stream, leave=False, mininterval=0,
                            bar_format=self.FORMAT, ncols=self.columns())

    def batch(self, b: int) -> None:
        super().batch(b)
        self._show()

    def attack(self, name: str, points: int, budget: float | None = None) -> None:
        super().attack(name, points, budget)
        self._show(force=self.shown is None)

    def tick(self, passes: int) -> None:
        super().tick(passes)
        self._show()

    def update(self, k: int) -> None:
        super().update(k)
        self._show()

    def columns(self) -> int | None:
        """The terminal's width (None where it says 0 or cannot say: tqdm then draws the whole line)."""
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or None
        except (AttributeError, OSError, ValueError):
            return None

    def share(self) -> str:
        """'40% of pgd': how far the running attack is through the passes it is expected to spend on this batch."""
        per_point = self.per_point(self.name) if self.name else None
        if not per_point or not self.attack_points:
            return ""
        fraction = (self.passes - self.mark_passes) / (self.attack_points * per_point)
        return f"{100 * min(fraction, 1.0):.0f}% of {self.short()}"

    def short(self) -> str:
        """The running stage's name without its composite's prefix: autoattack/apgd-ce -> apgd-ce."""
        return self.name.rsplit("/", 1)[-1] if self.name else "clean"

    def left(self) -> str:
        """'about 85 s left' (or 12 min, 1.5 h); '20 s to 12 min left' while the attack running is the first of its
        kind (how many points it leaves to the attacks after it is not known yet); 'time left: measuring' before
        the first measure."""
        if self.total and self.done >= self.total:
            return "all points evaluated, sanity checks next"  # their cost is not the cascade's: no estimate
        low, seconds = self.bounds() if self.uncertain() else (None, self.seconds_left())
        if seconds is None:
            return "time left: measuring"
        if low is not None and duration(low) != duration(seconds):  # the first run of this attack: how many it breaks
            return f"{duration(low)} to {duration(seconds)} left"
        return f"about {duration(seconds)} left"

    def line(self) -> str:
        """The line off a terminal: 'evaluating: pgd on batch 1: 40/100 points final, ..., about 12 s left in the run'."""
        elapsed = self.clock() - self.started
        per_point = self.per_point(self.name) if self.name else None
        share = ""
        if per_point and self.attack_points:
            fraction = (self.passes - self.mark_passes) / (self.attack_points * per_point)
            share = f", {self.name} {100 * min(fraction, 1.0):.0f}% of its passes"
        left = self.left()
        left = "" if left.startswith("time left") else f", {left}" + (" in the run" if left.endswith(" left") else "")
        return (f"evaluating: {self.name or 'clean'} on batch {self.b + 1}: {self.final()}/{self.total} points final, "
                f"{self.passes} forward passes, {elapsed:.0f} s{share}{left}")

    def _show(self, force: bool = False) -> None:
        now = self.clock()
        if not force and self.shown is not None and now - self.shown < (self.REFRESH if self.tty else self.interval):
            return
        self.shown = now
        if self.bar is not None:
            self.bar.set_description_str(f"{self.left()}, {self.short()} b{self.b + 1}", refresh=False)
            share = self.share()
            self.bar.set_postfix_str((f"{share}, " if share else "") + f"{self.passes} passes", refresh=False)
            self.bar.ncols = self.columns()  # the terminal's width now: a resized window is followed
            self.bar.update(self.final() - self.bar.n)
            self.bar.refresh()  # redrawn now, within the batch: tqdm would wait for the next update()
        elif not self.tty:
            print(self.line(), file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
