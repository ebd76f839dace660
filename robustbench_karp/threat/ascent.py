"""The shared ascent loop: projected steepest ascent inside a threat model's ball and [0, 1].

Every attack and every adversarial-training defense perturbs images through `ascend`, so there is
one loop, with one early-stop and compaction scheme. Inside a `trace.tracing()` block (the engine opens
one around each attack) it also reports its losses, gradients and outcomes for the attack-failure indicators.

Shapes: images are float (B, C, H, W) in [0, 1]; step sizes are in pixel units (8/255).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from robustbench_karp.threat.ball import ThreatModel
from robustbench_karp.threat.rows import loss_and_grad, pieces
from robustbench_karp.threat.trace import current

Objective = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor | None]"]


def ascend(
    x: torch.Tensor,
    objective: Objective,
    threat: ThreatModel,
    *,
    steps: int,
    step_size: float,
    random_start: bool,
    gen: torch.Generator,
    stop_when_done: bool = False,
    start: torch.Tensor | None = None,
    final_check: bool = True,
    compact_every: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected steepest ascent of objective inside threat's ball and [0, 1].

    objective(x_adv, idx) -> (loss (b,), done (b,) bool or None), where idx (b,) are the positions
    in x of the rows of x_adv. With stop_when_done, a row's first `done` iterate is kept (a masked
    write on the device, no host sync) and later steps can never undo it; every `compact_every`
    steps the finished rows leave the batch (one host sync), so later steps cost nothing for them.
    Rows are independent, so the result is the same for every compact_every (default: every step
    on CPU, where compute is what costs; every 8 on GPUs, where a sync per step does). `start`, when
    given, replaces the random or clean starting point and is used as given (even outside [0, 1]);
    every returned point is projected.

    Returns (x_adv (B, ...), done (B,) bool): done marks the points found adversarial during the
    ascent, and at the last iterate when final_check (one extra forward, for callers that restart).
    The input x is never modified; parameters' .grad
    are untouched because gradients are taken with autograd.grad with respect to x_adv only.
    """
    x = x.detach()
    k = compact_every or (1 if x.device.type == "cpu" else 8)
    if start is not None:
        out = start.detach().clone()  # as given (it may leave [0, 1]); every later iterate is projected
    else:
        out = threat.random_point(x, gen) if random_start else x.clone()
    done_all = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    idx = torch.arange(len(x), device=x.device)
    active = torch.ones(len(x), dtype=torch.bool, device=x.device)  # (b,) rows not yet done
    x_adv, x_ref = out.clone(), x
    trace = current()
    if trace is not None:
        trace.start(x, steps)
    for step in range(steps):
        done, g = loss_and_grad(objective if trace is None else trace.watch(objective), x_adv, idx)  # in physical
        if trace is not None:                                                     # pieces when memory asks
            trace.step(step, idx, x_adv, done, g, active)
        if stop_when_done and done is not None:
            newly = done & active  # (b,) first adversarial iterate: keep it
            rows = newly.view(-1, *([1] * (x.dim() - 1)))
            out[idx] = torch.where(rows, threat.project(x_adv, x_ref), out[idx])  # a no-op projection after step 1
            done_all[idx] = done_all[idx] | newly
            active = active & ~done
            if (step + 1) % k == 0 or step == steps - 1:  # compaction, the only host sync
                keep = active.nonzero().squeeze(1)
                if not len(keep):
                    return _finished(out, done_all, trace, objective)
                if len(keep) < len(idx):
                    idx, x_adv, x_ref, g, active = idx[keep], x_adv[keep], x_ref[keep], g[keep], active[keep]
        x_adv = threat.project(x_adv + step_size * threat.ascent_direction(g), x_ref)
    if stop_when_done:
        live = active.nonzero().squeeze(1)  # rows finished since the last compaction keep their first iterate
        idx, x_adv = idx[live], x_adv[live]
    out[idx] = x_adv
    if stop_when_done and final_check and len(idx):  # the last iterate is only checked when asked (restarts)
        with torch.no_grad():
            dones = [objective(x_adv[rows], idx[rows])[1] for rows in pieces(len(idx))]
        done = None if dones[0] is None else torch.cat(dones)
        if done is not None:
            done_all[idx[done]] = True
    return _finished(out, done_all, trace, objective)


def _finished(out: torch.Tensor, done_all: torch.Tensor, trace, objective: Objective
              ) -> tuple[torch.Tensor, torch.Tensor]:
    if trace is not None:
        trace.finish(out, done_all, objective)
    return out, done_all
