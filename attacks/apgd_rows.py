"""APGD's working batch and inner loops (attacks/apgd.py is the attack): one row per (point, target).

A row leaves the batch the moment its point is broken (any of the point's rows misclassified): its iterate is
written to the point's slot of `adv` and every row of that point is dropped, so later steps cost nothing for
it. Rows stay ordered by point, so a point's rows are contiguous and leave together.

Shapes: images (R, C, H, W) in [0, 1] for R rows; per-row values (R,); step sizes in pixel units.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from robustbench_karp.attacks.base import margin
from robustbench_karp.threat import ThreatModel, random_uniform
from robustbench_karp.threat.rows import pieces

DLR_EPS = 1e-12  # keeps the DLR ratio finite when the sorted logits tie
MALT_POOL = 100  # MALT ranks at most this many candidate targets per point: ImageNet's 999 would cost more than APGD-T


def dlr(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """(R,) -(z_y - max_{i != y} z_i) / (z_(1) - z_(3)): the margin, scaled away from the logits' scale."""
    top = logits.sort(dim=1).values  # ascending: top[:, -1] is the largest logit
    return margin(logits, y) / (top[:, -1] - top[:, -3] + DLR_EPS)


def dlr_targeted(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """(R,) -(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)."""
    top = logits.sort(dim=1).values
    gap = logits.gather(1, target[:, None]).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)
    return gap / (top[:, -1] - 0.5 * (top[:, -3] + top[:, -4]) + DLR_EPS)


def logit_gap(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """(R,) z_t - z_y: MALT's linearized distance to target t is -(this) / ||its gradient||_dual."""
    return (logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])).squeeze(1)


def malt_order(model, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, dual_p: float) -> torch.Tensor:
    """(B, min(classes - 1, MALT_POOL)) every point's targets, most promising first by MALT's score (Melamed et al., NeurIPS 2024,
    https://arxiv.org/abs/2407.02240; code odeliamel/MALT): (z_pred - z_i) / ||grad_x (z_i - z_y)||_dual, ascending,
    the step a linearized model needs to make i the prediction. One forward and backward per point and candidate:
    the MALT_POOL classes of highest logit but the true one (all of them below 101 classes)."""
    pool = min(logits.shape[1] - 1, MALT_POOL)
    others = logits.scatter(1, y[:, None], float("-inf")).argsort(dim=1, descending=True)[:, :pool]
    owner = torch.arange(len(x), device=x.device).repeat_interleave(pool)  # (R,) row -> point
    _, _, grad = rows_loss_and_grad(model, logit_gap, x[owner], y[owner], others.reshape(-1))
    dual = grad.flatten(1).norm(p=dual_p, dim=1).view(len(x), pool)  # (B, pool)
    gap = logits.amax(dim=1, keepdim=True) - logits.gather(1, others)  # z_pred - z_i >= 0
    score = gap / (dual + DLR_EPS)  # a zero gradient makes the score huge: such targets go last
    return others.gather(1, score.argsort(dim=1, stable=True))


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def odi_objective(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """(R,) w . logits: ascent on it moves the output in a random direction (output diversification)."""
    return (logits * w).sum(dim=1)


LOSSES = {"ce": cross_entropy, "dlr": dlr, "dlr-targeted": dlr_targeted}
MIN_CLASSES = {"ce": 2, "dlr": 3, "dlr-targeted": 4}  # DLR's denominator reads the 3rd (targeted: 4th) largest logit


class Rows:
    """The working batch: every field is a tensor with one entry per row (or None)."""

    def __init__(self, **fields: torch.Tensor | None):
        self.__dict__.update(fields)

    def keep(self, idx: torch.Tensor) -> Rows:
        return Rows(**{k: None if v is None else v[idx] for k, v in vars(self).items()})

    def __len__(self) -> int:
        return len(self.owner)


def rows_loss_and_grad(model, objective, x_adv: torch.Tensor, y: torch.Tensor, extra: torch.Tensor | None):
    """(loss (R,), misclassified (R,), d loss.sum() / d x_adv) in physical pieces (robustbench_karp.threat.rows).

    torch.autograd.grad, not .backward(): the parameters' .grad stay untouched."""
    losses, wrong, grads = [], [], []
    with torch.enable_grad():
        for piece in pieces(len(x_adv)):
            rows = x_adv[piece].detach().requires_grad_(True)
            logits = model(rows)
            loss = objective(logits, y[piece], None if extra is None else extra[piece])
            (g,) = torch.autograd.grad(loss.sum(), rows)
            losses.append(loss.detach())
            wrong.append(logits.detach().argmax(1) != y[piece])
            grads.append(g)
    return torch.cat(losses), torch.cat(wrong), torch.cat(grads)


def settle(rows: Rows, wrong: torch.Tensor, adv: torch.Tensor, broken: torch.Tensor) -> Rows:
    """Write each newly broken point's misclassified iterate to adv (its first such row) and drop its rows."""
    hit = wrong.nonzero().squeeze(1)  # the one host sync per step: the batch shrinks
    if not len(hit):
        return rows
    owners = rows.owner[hit]  # non-decreasing: rows are ordered by point
    first = torch.ones_like(owners, dtype=torch.bool)
    first[1:] = owners[1:] != owners[:-1]
    adv[owners[first]] = rows.x_adv[hit[first]]
    broken[owners] = True
    return rows.keep((~broken[rows.owner]).nonzero().squeeze(1))


def column(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(R,) -> (R, 1, 1, 1): a per-row value that broadcasts over an image batch."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def checkpoints(steps: int) -> dict[int, int]:
    """{iteration: window}: the iterations (0-based) after which step sizes are checked, each with the number
    of steps since the last check: 0.22 * steps first, then 0.03 * steps shorter each time, at least 0.06 * steps."""
    window, shrink, least = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, i = {}, window - 1
    while i < steps:
        out[i] = window
        window = max(window - shrink, least)
        i += window
    return out


def odi_run(model, rows: Rows, start: torch.Tensor, threat: ThreatModel, gen: torch.Generator, steps: int,
            classes: int, adv: torch.Tensor, broken: torch.Tensor) -> tuple[torch.Tensor, Rows]:
    """`steps` output-diversified steps of size eps from start; returns (the rows' new starts, the rows left)."""
    rows.w = 2 * random_uniform((len(rows), classes), gen, start) - 1  # (R, classes): a direction per row
    rows.x_adv = start
    for _ in range(steps):
        _, wrong, rows.grad = rows_loss_and_grad(model, odi_objective, rows.x_adv, rows.y, rows.w)
        rows = settle(rows, wrong, adv, broken)
        if not len(rows):
            break
        rows.x_adv = threat.project(rows.x_adv + threat.eps * threat.ascent_direction(rows.grad), rows.x)
    return rows.x_adv, rows


def apgd_run(model, objective, rows: Rows, start: torch.Tensor, threat: ThreatModel, *, steps: int, rho: float,
             momentum: float, adv: torch.Tensor, broken: torch.Tensor) -> Rows:
    """APGD from start on rows; broken points go to adv and broken, the rows left carry x_best and loss_best."""
    rows.x_adv = start
    rows.loss, wrong, rows.grad = rows_loss_and_grad(model, objective, rows.x_adv, rows.y, rows.target)
    rows = settle(rows, wrong, adv, broken)
    n = len(rows)
    rows.x_best, rows.grad_best, rows.loss_best = rows.x_adv.clone(), rows.grad.clone(), rows.loss.clone()
    rows.x_old = rows.x_adv.clone()
    rows.eta = torch.full((n,), 2 * threat.eps, dtype=start.dtype, device=start.device)  # (R,) step sizes
    rows.rises = torch.zeros(n, device=start.device)  # steps since the last check whose loss rose
    rows.loss_at_check = rows.loss_best.clone()
    rows.halved = torch.ones(n, dtype=torch.bool, device=start.device)  # the first check looks at rises only
    windows = checkpoints(steps)
    for i in range(steps):
        if not len(rows):
            break
        weight = 1.0 if i == 0 else momentum
        x = rows.x_adv
        z = threat.project(x + column(rows.eta, x) * threat.ascent_direction(rows.grad), rows.x)
        rows.x_old, rows.x_adv = x, threat.project(x + weight * (z - x) + (1 - weight) * (x - rows.x_old), rows.x)
        loss, wrong, rows.grad = rows_loss_and_grad(model, objective, rows.x_adv, rows.y, rows.target)
        rows.rises, rows.loss = rows.rises + (loss > rows.loss), loss
        rows = settle(rows, wrong, adv, broken)
        better = rows.loss > rows.loss_best
        rows.x_best = torch.where(column(better, x), rows.x_adv, rows.x_best)
        rows.grad_best = torch.where(column(better, x), rows.grad, rows.grad_best)
        rows.loss_best = torch.where(better, rows.loss, rows.loss_best)
        if i in windows:
            halve_stalled_steps(rows, windows[i], rho)
    return rows


def halve_stalled_steps(rows: Rows, window: int, rho: float) -> None:
    """Halve the step of rows whose loss rose in at most rho of the window, or that were not halved last time and
    whose best loss did not rise since; those restart from their best iterate and its gradient."""
    halve = (rows.rises <= window * rho) | (~rows.halved & (rows.loss_at_check >= rows.loss_best))
    rows.halved, rows.loss_at_check, rows.rises = halve, rows.loss_best.clone(), torch.zeros_like(rows.rises)
    rows.eta = torch.where(halve, rows.eta / 2, rows.eta)
    at = column(halve, rows.x_adv)
    rows.x_adv = torch.where(at, rows.x_best, rows.x_adv)
    rows.grad = torch.where(at, rows.grad_best, rows.grad)
