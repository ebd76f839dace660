"""What the ascent loop shows while it runs: loss traces, gradients and outcomes, for the attack-failure indicators.

    with tracing() as trace:                          # the engine opens one around each attack of the cascade
        x_adv = attack(model, x, y, threat, gen)      # every `ascend` inside reports to it
    trace.summary()                                   # plain numbers (JSON): evaluation/indicators.py reads them

Outside a `tracing()` block `ascend` records nothing and costs nothing extra (training never traces).
Per ascent row (a point in one ascend call; a restart attacks its points again) it keeps:
- whether its gradient was zero, NaN or infinite at a step before it fell (unavailable gradients);
- its running-best loss at every step, reduced at once to how much that trace, scaled to [0, 1], still
  rose over the last 10% of steps, for rows still standing at the end (incomplete optimization);
- whether an iterate was adversarial while the point ascend returned is not (silent success). The returned
  row is compared with the last adversarial iterate bit for bit; only rows that differ go through the model
  again (no_grad, a handful: never one with early stop in Linf), and those passes are counted apart.
Shapes: losses, masks (b,); images (b, C, H, W).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch

MIN_TRACE_STEPS = 10  # fewer steps make no trace worth reading: the tail would be one step
TAIL_SHARE = 0.10  # the last 10% of steps

_CURRENT: contextvars.ContextVar[AscentTrace | None] = contextvars.ContextVar("karp_ascent_trace", default=None)


class AscentTrace:
    """Sums over every ascend call of one block; one ascend call at a time (calls do not nest)."""

    def __init__(self):
        self.rows = 0  # ascent rows traced
        self.bad_gradient = 0  # rows with a zero or non-finite gradient before they fell
        self.traced = 0  # rows still standing at the end of an ascent of >= MIN_TRACE_STEPS steps
        self.rise = 0.0  # the sum over those rows of their scaled running-best loss's rise over the tail
        self.rising = 0  # of those, rows whose own rise exceeded 0.05
        self.short = 0  # standing rows of ascents with fewer than MIN_TRACE_STEPS steps
        self.adversarial = 0  # rows with an adversarial iterate
        self.silent = 0  # of those, rows whose returned point is not adversarial
        self.extra_forward = 0  # rows the silent-success check sent through the model again
        self.steps = 0  # the most steps of any call

    def start(self, x: torch.Tensor, steps: int) -> None:
        n, self.steps = len(x), max(self.steps, steps)
        self._best = torch.full((steps, n), float("-inf"), device=x.device)  # (steps, b) running best per step
        self._running = torch.full((n,), float("-inf"), device=x.device)
        self._bad = torch.zeros(n, dtype=torch.bool, device=x.device)
        self._ever = torch.zeros(n, dtype=torch.bool, device=x.device)
        self._last_adv = torch.zeros_like(x)  # the last adversarial iterate of each row
        self._losses: list[torch.Tensor] = []
        self.rows += n

    def watch(self, objective):
        """The objective, with each piece's loss kept for `step` (loss_and_grad returns only the gradient)."""
        def watched(rows: torch.Tensor, idx: torch.Tensor):
            loss, done = objective(rows, idx)
            self._losses.append(loss.detach())
            return loss, done
        return watched

    def step(self, step: int, idx: torch.Tensor, x_adv: torch.Tensor, done: torch.Tensor | None,
             g: torch.Tensor, active: torch.Tensor) -> None:
        """After the loss and gradient at step `step` of the rows idx (b,) still in the batch."""
        loss, self._losses = torch.cat(self._losses) if self._losses else None, []
        if loss is not None and len(loss) == len(idx):
            self._running[idx] = torch.maximum(self._running[idx], loss.float())
        self._best[step] = self._running
        flat = g.flatten(1)
        bad = (flat == 0).all(1) | ~torch.isfinite(flat).all(1)
        self._bad[idx] |= bad & active
        if done is not None:
            hit = done & active
            self._ever[idx] |= hit
            rows = hit.view(-1, *([1] * (x_adv.dim() - 1)))
            self._last_adv[idx] = torch.where(rows, x_adv.detach(), self._last_adv[idx])

    def finish(self, out: torch.Tensor, done_all: torch.Tensor, objective) -> None:
        """After the ascent: out (b, ...) the returned points, done_all (b,) those it found adversarial."""
        self._losses = []
        standing = ~done_all & ~self._ever
        self.bad_gradient += int(self._bad.sum())
        steps = len(self._best)
        if steps >= MIN_TRACE_STEPS:
            self._add_rises(self._best[:, standing])
        else:
            self.short += int(standing.sum())
        ever = self._ever.nonzero().squeeze(1)
        self.adversarial += len(ever)
        differs = ever[(out[ever] != self._last_adv[ever]).flatten(1).any(1)] if len(ever) else ever
        if len(differs):  # the returned point is not the adversarial iterate: ask the model again
            with torch.no_grad():
                _, done = objective(out[differs], differs)
            self.extra_forward += len(differs)
            self.silent += int((~done).sum()) if done is not None else 0
        del self._best, self._running, self._bad, self._ever, self._last_adv

    def _add_rises(self, best: torch.Tensor) -> None:
        """best (steps, s): the running-best loss of the standing rows; min-max scaled per row, as Pintor et al."""
        if not best.shape[1]:
            return
        tail = max(1, math.ceil(TAIL_SHARE * len(best)))
        first, last, before = best[0], best[-1], best[-1 - tail]
        span = last - first
        moved = torch.isfinite(span) & (span > 1e-7 * (1 + first.abs()))  # a flat trace rose by nothing
        rise = torch.where(moved, (last - before) / torch.where(moved, span, torch.ones_like(span)),
                           torch.zeros_like(span))
        self.traced += best.shape[1]
        self.rise += float(rise.sum())
        self.rising += int((rise > 0.05).sum())

    def summary(self) -> dict[str, float]:
        keys = ("rows", "bad_gradient", "traced", "rise", "rising", "short", "adversarial", "silent", "extra_forward",
                "steps")
        return {k: getattr(self, k) for k in keys}


def current() -> AscentTrace | None:
    return _CURRENT.get()


@contextlib.contextmanager
def tracing() -> Iterator[AscentTrace]:
    """Every ascend call inside the block reports to the trace yielded."""
    trace = AscentTrace()
    token = _CURRENT.set(trace)
    try:
        yield trace
    finally:
        _CURRENT.reset(token)
