"""The CLI's progress bars (tqdm on stderr), shared by commands.py and cli_publish.py.

They live apart from both so that neither command module imports the other for them. Like the
rest of the CLI, only these draw: the library reports progress through callbacks.
"""

from __future__ import annotations

import sys

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
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.3f}")

    def on_epoch(self, metrics):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        tqdm.write(shown, file=sys.stderr)


class EvalProgress:
    """A progress bar over the test points being evaluated."""

    def __init__(self):
        self.bar = None

    def start(self, n: int) -> None:
        self.bar = tqdm(total=n, desc="evaluating", unit="img", file=sys.stderr, leave=False, disable=None)

    def update(self, k: int) -> None:
        self.bar.update(k)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
