"""Threat models (Linf / L2 balls in [0, 1] pixel space) and the budget check.

The projection, the ascent direction and the random start exist exactly once, here; the shared
ascent loop (ascent.py) and every attack and defense use them.

Shapes: images are float (B, C, H, W) in [0, 1]; eps and step sizes are in pixel units (8/255).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch

BUDGET_TOLERANCE = 1e-6
# An L2 norm sums d float32 squares: its rounding grows with eps and the image size. Our own projection at
# eps 3 on 3x224x224 (ImageNet's L2 radius) measured up to 4.6e-6 above eps, at eps 10 1.6e-5.
L2_RELATIVE_TOLERANCE = 1e-5


class Norm(str, enum.Enum):
    LINF = "linf"
    L2 = "l2"


class BudgetViolation(RuntimeError):
    """An adversarial batch left the threat model: never clamped silently, always raised."""


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def random_uniform(shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    # Drawn on the generator's device, so a CPU generator also serves CUDA tensors.
    return torch.rand(shape, generator=gen, device=gen.device, dtype=like.dtype).to(like.device)


def random_normal(shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=gen, device=gen.device, dtype=like.dtype).to(like.device)


@dataclass(frozen=True)
class ThreatModel:
    norm: Norm
    eps: float

    def __post_init__(self):
        object.__setattr__(self, "norm", Norm(self.norm))
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps}")

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B,) distance in float64, so the budget check is not fooled by float32 rounding."""
        d = (x_adv.detach().double() - x.detach().double()).flatten(1)
        return d.abs().amax(dim=1) if self.norm is Norm.LINF else d.norm(dim=1)

    def project_delta(self, delta: torch.Tensor) -> torch.Tensor:
        """Nearest point of the eps-ball around 0 (no [0, 1] clipping)."""
        if self.norm is Norm.LINF:
            return delta.clamp(-self.eps, self.eps)
        return delta * (self.eps / _flat_norm(delta)).clamp(max=1.0)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Nearest point of the eps-ball around x, then clipped to [0, 1] (clipping only shrinks delta)."""
        return (x + self.project_delta(x_adv - x)).clamp(0.0, 1.0)

    def ascent_direction(self, g: torch.Tensor) -> torch.Tensor:
        """Steepest-ascent direction of unit norm: sign(g) for Linf, g/||g|| for L2."""
        return g.sign() if self.norm is Norm.LINF else g / _flat_norm(g)

    def random_point(self, x: torch.Tensor, gen: torch.Generator, clip: bool = True) -> torch.Tensor:
        """A uniform random point of the ball around x, clipped to [0, 1] unless clip=False."""
        if self.norm is Norm.LINF:
            delta = (2 * random_uniform(x.shape, gen, x) - 1) * self.eps
        else:
            direction = random_normal(x.shape, gen, x)
            direction = direction / _flat_norm(direction)
            dim = x[0].numel()
            radius = random_uniform((x.shape[0],), gen, x) ** (1.0 / dim) * self.eps
            delta = direction * radius.view(-1, *([1] * (x.dim() - 1)))
        return self.project(x + delta, x) if clip else x + delta


def check_eps(norm: str, eps: float, image_shape: tuple[int, ...] | None = None) -> None:
    """Refuse an eps in the wrong units: images are in [0, 1], so a Linf eps above 1 allows any image (8 meant
    8/255?), and an L2 eps above the image's diameter sqrt(C*H*W) likewise."""
    if Norm(norm) is Norm.LINF and eps > 1:
        hint = f" (did you mean {int(eps)}/255?)" if float(eps).is_integer() else ""
        raise ValueError(f"linf eps {eps:g} is above 1: eps is in [0, 1] pixel units{hint}")
    if Norm(norm) is Norm.L2 and image_shape is not None:
        diameter = math.sqrt(math.prod(image_shape))
        if eps > diameter:
            raise ValueError(f"l2 eps {eps:g} is above the diameter of the [0, 1] image box ({diameter:.4g} for images "
                             f"of shape {tuple(image_shape)}): eps is in pixel units")


def check_budget(x_adv: torch.Tensor, x: torch.Tensor, threat: ThreatModel) -> None:
    """Raise BudgetViolation unless x_adv is finite, inside [0, 1] and within eps of x."""
    if x_adv.shape != x.shape:
        raise BudgetViolation(f"adversarial batch has shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise BudgetViolation("adversarial batch contains non-finite values")
    lo, hi = x_adv.min().item(), x_adv.max().item()
    if lo < 0.0 or hi > 1.0:
        raise BudgetViolation(f"adversarial batch leaves [0, 1]: range [{lo:.6g}, {hi:.6g}]")
    worst = threat.distance(x_adv, x).max().item() if len(x) else 0.0
    tolerance = budget_tolerance(threat)
    if worst > threat.eps + tolerance:
        raise BudgetViolation(f"perturbation {worst:.8g} exceeds {threat.norm.value} eps {threat.eps:.8g} (+{tolerance:.3g})")


def budget_tolerance(threat: ThreatModel) -> float:
    """How far above eps float32 rounding may put a projected point: 1e-6 for Linf (a clamp is exact up to
    the rounding of x + delta), plus 1e-5 * eps for L2 (a norm accumulates rounding over every pixel)."""
    return BUDGET_TOLERANCE + (L2_RELATIVE_TOLERANCE * threat.eps if threat.norm is Norm.L2 else 0.0)
