"""Adversarial examples: a few you can see (`evaluate --save-examples DIR`), or every one (`--save-adversarial FILE`,
`evaluate(..., return_adversarial=True)`).

Per attack, up to `per_attack` points it was run on (the ones it broke first), written as
    DIR/<record id>/<attack>.png   rows: clean image, adversarial image, perturbation (amplified:
                                   0.5 + delta / (2 eps) for Linf, scaled to its largest value for L2),
                                   with the true label and the prediction on the adversarial image
    DIR/<record id>/<attack>.pt    {"x", "x_adv" (k, C, H, W) in [0, 1], "y", "predicted" (k,),
                                    "batch", "position" (k,): the logical batch and the place in it}
Collected while the evaluation runs (no second attack), written only once the record exists.

AdversarialCollector keeps one x_adv for every test point, as torchattacks and foolbox return one: the
first attack's adversarial example that broke it, else the last attempt on it, else (a point never
attacked: misclassified clean, certified, or eps 0) the clean image itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from robustbench_karp.store import atomic_write_bytes


class Forwarding:
    """An engine reporter that passes progress calls on to `progress` (the CLI's bar, or another reporter)."""

    def __init__(self, progress=None):
        self.progress, self.b = progress, 0

    def expect(self, attacks: list, batch_size: int) -> None:
        if self.progress is not None and hasattr(self.progress, "expect"):
            self.progress.expect(attacks, batch_size)

    def batch(self, b: int) -> None:
        self.b = b
        if self.progress is not None:
            self.progress.batch(b)

    def attack(self, name: str, points: int, budget: float | None = None) -> None:
        if self.progress is not None:
            self.progress.attack(name, points, budget)

    def tick(self, passes: int) -> None:
        if self.progress is not None:
            self.progress.tick(passes)

    def adversarial(self, name, idx, x, x_adv, y, predicted) -> None:
        if self.progress is not None and hasattr(self.progress, "adversarial"):
            self.progress.adversarial(name, idx, x, x_adv, y, predicted)


class AdversarialCollector(Forwarding):
    """Every point's worst-case x_adv: the first attack's success, else the last attempt (see the module docstring)."""

    def __init__(self, progress=None):
        super().__init__(progress)
        self.kept: dict[tuple[int, int], tuple[torch.Tensor, bool]] = {}  # (batch, position) -> (x_adv, broken)

    def adversarial(self, name, idx, x, x_adv, y, predicted) -> None:
        super().adversarial(name, idx, x, x_adv, y, predicted)
        for j, position in enumerate(idx.tolist()):
            if not self.kept.get((self.b, position), (None, False))[1]:  # a point already broken keeps that example
                self.kept[(self.b, position)] = (x_adv[j].detach().cpu(), bool(predicted[j] != y[j]))

    def tensors(self, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """((N, C, H, W) x_adv, (N,) broken) for the N points x (in evaluation order, logical batches of batch_size)."""
        x_adv, broken = x.detach().cpu().clone(), torch.zeros(len(x), dtype=torch.bool)
        for (b, position), (point, hit) in self.kept.items():
            x_adv[b * batch_size + position], broken[b * batch_size + position] = point, hit
        return x_adv, broken


class ExampleSaver(Forwarding):
    """The engine's reporter for adversarial examples you can see; forwards progress calls (or drops them)."""

    def __init__(self, progress=None, per_attack: int = 8):
        super().__init__(progress)
        self.per_attack = per_attack
        self.kept = {}  # attack name -> list of (broken, batch, position, x, x_adv, y, predicted)

    def adversarial(self, name, idx, x, x_adv, y, predicted) -> None:
        super().adversarial(name, idx, x, x_adv, y, predicted)
        kept = self.kept.setdefault(name, [])
        broken = (predicted != y).cpu()
        for i in torch.argsort((~broken).int(), stable=True)[: self.per_attack].tolist():  # broken points first
            kept.append((bool(broken[i]), self.b, int(idx[i]), x[i].cpu(), x_adv[i].cpu(), int(y[i]),
                         int(predicted[i])))
        kept.sort(key=lambda k: not k[0])  # stable: broken first, each group in order of arrival
        del kept[self.per_attack:]

    def write(self, out: Path, record: dict, eps: float, norm: str) -> list[Path]:
        """The PNG and tensor file per attack under out/<record id>/; returns the PNGs."""
        written = []
        for name, kept in self.kept.items():
            if not kept:
                continue
            stem = re.sub(r"[^A-Za-z0-9._-]", "_", name)
            folder = Path(out) / record["id"]
            tensors = {"x": torch.stack([k[3] for k in kept]), "x_adv": torch.stack([k[4] for k in kept]),
                       "y": torch.tensor([k[5] for k in kept]), "predicted": torch.tensor([k[6] for k in kept]),
                       "batch": torch.tensor([k[1] for k in kept]), "position": torch.tensor([k[2] for k in kept])}
            atomic_write_bytes(folder / f"{stem}.pt", lambda f, t=tensors: torch.save(t, f))
            png = folder / f"{stem}.png"
            atomic_write_bytes(png, lambda f, t=tensors, n=name: grid(t, n, eps, norm, f))
            written.append(png)
        return written


def amplified(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A perturbation (k, C, H, W) shown in [0, 1]: grey is zero."""
    if norm == "linf":
        scale = 2 * eps
    else:
        scale = 2 * delta.abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (delta.dim() - 1)))
    return (0.5 + delta / scale).clamp(0, 1)


def grid(t: dict, name: str, eps: float, norm: str, f) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(t["y"])
    fig = Figure(figsize=(1.3 * k + 0.9, 4.3))
    FigureCanvasAgg(fig)
    rows = [("clean", t["x"]), ("adversarial", t["x_adv"]), ("perturbation", amplified(t["x_adv"] - t["x"], eps, norm))]
    for r, (label, images) in enumerate(rows):
        for i in range(k):
            ax = fig.add_subplot(3, k, r * k + i + 1)
            image = images[i].permute(1, 2, 0).numpy()  # (H, W, C)
            ax.imshow(image[..., 0] if image.shape[2] == 1 else image, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0:
                ax.set_title(f"true {int(t['y'][i])}", fontsize=8)
            if r == 1:
                wrong = int(t["predicted"][i]) != int(t["y"][i])
                ax.set_title(f"pred {int(t['predicted'][i])}", fontsize=8, color="red" if wrong else "black")
    fig.suptitle(f"{name}, {norm} eps={eps:.4g}", fontsize=9)
    fig.savefig(f, format="png", dpi=100, metadata={"Software": None})
