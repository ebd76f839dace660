"""APGD: Auto-PGD (Croce & Hein 2020, https://arxiv.org/abs/2003.01690), our own, with per-point early exit.

Projected ascent with momentum 0.75 and a step size that needs no tuning: it starts at 2 * eps and is halved
at checkpoints p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (p_0 = 0, p_1 = 0.22, fractions of `steps`)
for each point whose loss rose in fewer than rho = 75% of the steps since the last checkpoint, or whose step
was not halved at the last checkpoint and whose best loss has not risen since; a halved point restarts from
its best iterate. The original's loss history is zero-filled, so its first window compares the first step's
loss with 0; ours compares it with the starting point's loss, as the paper says.

Every point leaves the working batch at the first iterate that is misclassified, and that iterate is what is
returned for it; a point never misclassified gets its iterate of highest loss, never merely the last one.
Targeted DLR attacks `targets` classes per point, `target_batch` of them at once as one batch (a row per point
and target); all rows of a point leave when one of them breaks. Targets are ranked by clean logit, highest first,
or with target_order="malt" by MALT's score (Melamed et al., NeurIPS 2024, https://arxiv.org/abs/2407.02240):
(z_pred - z_i) / ||grad_x (z_i - z_y)||_dual, lowest first, for one more forward and backward per target.
`odi_steps` > 0 runs that many output-diversified steps first (ODI, Tashiro et al. 2020,
https://arxiv.org/abs/2003.06878): steps of size eps up w . logits, w uniform in [-1, 1]^classes per row.

Threat model: Linf or L2 ball of radius eps around x, intersected with [0, 1].

Arguments:
    steps (int): iterations after the starting point. Default 100.
    restarts (int): runs from new random starts; a run only attacks the points no earlier one broke. Default 1.
    loss (str): "ce", "dlr" (3 classes or more) or "dlr-targeted" (4 or more). Default "ce".
    targets (int): dlr-targeted: target classes per point (at most classes - 1). Default 9.
    target_batch (int | None): dlr-targeted: targets run at once; None means all. Default None.
    target_order (str): dlr-targeted: "logits" (highest clean logit first) or "malt". Default "logits".
    random_start (bool): start at a uniform random point of the ball; False starts at x. Default True.
    odi_steps (int): output-diversified steps before APGD. Default 0.
    rho (float): the fraction of rising steps below which the step is halved. Default 0.75.
    momentum (float): weight of the new step against the last one. Default 0.75.

Shape: images (B, C, H, W) in [0, 1]; labels (B,). Returns x_adv of the same shape, detached.

Example:
    >>> x_adv = APGD(loss="dlr-targeted", targets=9)(model, x, y, ThreatModel("linf", 0.3), gen)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustbench_karp.attacks.apgd_rows import LOSSES, MIN_CLASSES, Rows, apgd_run, malt_order, odi_run
from robustbench_karp.attacks.base import Attack, check_positive, register
from robustbench_karp.threat import ThreatModel

TARGET_ORDERS = ("logits", "malt")


@register("apgd")
@dataclass(frozen=True)
class APGD(Attack):
    splits = True  # every pass goes through robustbench_karp.threat.rows' pieces
    steps: int = 100
    restarts: int = 1
    loss: str = "ce"
    targets: int = 9
    target_batch: int | None = None
    random_start: bool = True
    odi_steps: int = 0
    rho: float = 0.75
    momentum: float = 0.75
    target_order: str = "logits"

    def __post_init__(self):
        check_positive(steps=self.steps, restarts=self.restarts, targets=self.targets, target_batch=self.target_batch)
        if self.loss not in LOSSES:
            raise ValueError(f"unknown apgd loss {self.loss!r}; valid: {', '.join(LOSSES)}")
        if self.target_order not in TARGET_ORDERS:
            raise ValueError(f"unknown target_order {self.target_order!r}; valid: {', '.join(TARGET_ORDERS)}")
        if self.odi_steps < 0:
            raise ValueError(f"odi_steps must be >= 0, got {self.odi_steps}")
        if not 0 < self.rho <= 1 or not 0 <= self.momentum < 1:
            raise ValueError(f"apgd needs 0 < rho <= 1 and 0 <= momentum < 1, got {self.rho} and {self.momentum}")

    @property
    def targeted(self) -> bool:
        return self.loss == "dlr-targeted"

    def forward_budget(self) -> float:
        runs = self.restarts * (self.targets if self.targeted else 1)
        # MALT: a pass per candidate target, the classes but the true one: 9 on 10 classes (the budget cannot know)
        ranking = max(self.targets, 9) if self.targeted and self.target_order == "malt" else 0
        return float(runs * (self.odi_steps + self.steps + 1) + 1 + ranking)  # + the clean pass: the classes

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator) -> torch.Tensor:
        x, y = x.detach(), y.detach()
        if not len(x):
            return x.clone()
        classes, ranked = self._ranked_classes(model, x, y, threat)  # ranked (B, targets): best first (targeted)
        out = x.clone()
        best_loss = torch.full((len(x),), float("-inf"), device=x.device)  # (B,) of the points never broken
        todo = torch.arange(len(x), device=x.device)
        groups = ranked.split(self.target_batch or ranked.shape[1], dim=1) if ranked is not None else [None]
        for _ in range(self.restarts):
            for group in groups:
                if not len(todo):
                    return out
                targets = None if group is None else group[todo]
                todo = self._run(model, x, y, todo, targets, classes, threat, gen, out, best_loss)
        return out

    def _ranked_classes(self, model, x: torch.Tensor, y: torch.Tensor,
                        threat: ThreatModel) -> tuple[int, torch.Tensor | None]:
        """(classes, ranked) after one clean pass, which checks the classes; ranked: dlr-targeted's targets of each
        point by clean logit, best first (None for the other losses)."""
        with torch.no_grad():
            logits = model(x if self.targeted else x[:1])
        classes, needed = logits.shape[1], MIN_CLASSES[self.loss]
        if classes < needed:
            raise ValueError(f"apgd loss {self.loss!r} needs a model with at least {needed} classes (DLR divides by "
                             f"a gap between sorted logits); this one has {classes}: use loss=ce")
        if not self.targeted:
            return classes, None
        k = min(self.targets, classes - 1)
        if self.target_order == "malt":  # dual norms: L1 for Linf, L2 for L2
            return classes, malt_order(model, x, y, logits, 1.0 if threat.norm.value == "linf" else 2.0)[:, :k]
        others = logits.scatter(1, y[:, None], float("-inf"))  # the true class is never a target
        return classes, others.argsort(dim=1, descending=True)[:, :k]

    def _run(self, model, x, y, todo, targets, classes, threat, gen, out, best_loss) -> torch.Tensor:
        """One run on the points `todo` (each with its `targets` as rows); writes out and best_loss, returns the
        points still standing."""
        per_point = 1 if targets is None else targets.shape[1]
        owner = torch.arange(len(todo), device=x.device).repeat_interleave(per_point)  # (R,) row -> position in todo
        rows = Rows(x=x[todo][owner], y=y[todo][owner], owner=owner,
                    target=None if targets is None else targets.reshape(-1))
        start = threat.random_point(rows.x, gen) if self.random_start else rows.x.clone()
        broken = torch.zeros(len(todo), dtype=torch.bool, device=x.device)
        adv = x[todo].clone()  # (P, ...) the first adversarial iterate of each broken point
        if self.odi_steps:
            start, rows = odi_run(model, rows, start, threat, gen, self.odi_steps, classes, adv, broken)
        rows = apgd_run(model, LOSSES[self.loss], rows, start, threat, steps=self.steps, rho=self.rho,
                        momentum=self.momentum, adv=adv, broken=broken)
        out[todo[broken]] = adv[broken]
        if len(rows):  # the standing points: their row of highest loss, if it beats earlier runs
            loss = rows.loss_best.view(-1, per_point)  # (P_left, per_point): a point's rows stay or leave together
            pick = loss.argmax(dim=1)
            points = todo[rows.owner.view(-1, per_point)[:, 0]]
            candidate = rows.x_best.view(len(pick), per_point, *x.shape[1:])[torch.arange(len(pick)), pick]
            better = loss.amax(dim=1) > best_loss[points]
            out[points[better]] = candidate[better]
            best_loss[points[better]] = loss.amax(dim=1)[better]
        return todo[~broken]

