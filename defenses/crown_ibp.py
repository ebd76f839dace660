"""CROWN-IBP certified training (Zhang et al. 2020, "Towards Stable and Efficient Training of Verifiably Robust
Neural Networks", https://arxiv.org/abs/1906.06316).

    worst margins = beta * CROWN-IBP bound + (1 - beta) * IBP bound;  loss as IBP's (defenses/ibp.py)

CROWN's backward linear bound over IBP's intermediate boxes is tighter than IBP early in training,
when IBP's boxes are loose, and costs one more backward pass through the network. beta starts at 1
and falls to 0 as eps ramps up (the paper's schedule), so training ends on the IBP bound.

Threat model: Linf (L2 through the dual norm at the input). Arguments: those of `ibp`, and
    beta_end (float): beta once eps has ramped up. Default 0.0.

Shape: images (B, C, H, W) in [0, 1]; labels (B,).
"""

from dataclasses import dataclass

from robustbench_karp.defenses.base import register
from robustbench_karp.defenses.ibp import IBP


@register("crown-ibp")
@dataclass(frozen=True)
class CROWNIBP(IBP):
    beta_end: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.beta_end <= 1:
            raise ValueError(f"beta_end must be in [0, 1], got {self.beta_end}")

    def mix(self, ramp: float) -> float:
        return 1 - (1 - self.beta_end) * ramp
