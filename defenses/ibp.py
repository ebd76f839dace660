"""IBP certified training (Gowal et al. 2018, "On the Effectiveness of Interval Bound Propagation for Training
Verifiably Robust Models", https://arxiv.org/abs/1810.12715).

    loss = kappa * CE(z(x), y) + (1 - kappa) * CE(z_worst, y)

z_worst are the worst-case logits over the threat model's set (the ball cut to [0, 1]): for every
class k != y the interval bound's lower end of the margin z_y - z_k, negated (robustbench_karp.certification,
the same bound propagation `--certify ibp` evaluates, in float32 with autograd). While eps ramps up
from 0 (the recipe's eps_ramp_epochs), kappa ramps from 1 to kappa_end: the loop passes the ramp's
progress. Training at a larger eps than the one certified (eps_factor) leaves margin at test time, as
the paper trains MNIST at 0.4 to certify 0.3 (here 1.2x: 0.36, which keeps clean accuracy higher).

Threat model: Linf (L2 bounds through the box that holds the ball: sound, loose).

Arguments:
    kappa_end (float): weight of the clean loss once eps has ramped up. Default 0.5 (the paper's).
    eps_factor (float): training eps over the recipe's eps. Default 1.0; 1.2 on MNIST (0.36 for 0.3).

Recipe (MNIST): the `certcnn` model; Adam 1e-3 for 35 epochs, eps (and kappa) ramped over the first 10, the
learning rate cut tenfold at 75% and 90% of training (about 25 min on 2 CPU cores); the paper's large model
trains 100 epochs on a GPU.

Shape: images (B, C, H, W) in [0, 1]; labels (B,).
"""

import weakref
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from robustbench_karp.certification import margins, trace
from robustbench_karp.defenses.base import Defense, Recipe, register, unwrap
from robustbench_karp.threat import ThreatModel

_MNIST = Recipe(epochs=35, batch_size=100, optimizer="adam", lr=1e-3, schedule="piecewise", milestones=(0.75, 0.9),
                eps_ramp_epochs=10)
_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its traced graph, traced once


def worst_case_logits(model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, method: str = "ibp",
                      mix: float = 1.0) -> torch.Tensor:
    """(B, K) logits whose cross-entropy is the certified training loss: -(margin lower bounds), 0 at y."""
    inner = unwrap(model)  # DDP's hooks are for the gradient all-reduce; the bounds go through the network itself
    graph = _GRAPHS.get(inner)
    if graph is None:
        graph = _GRAPHS[inner] = trace(inner, x[:1])
    bound = margins(inner, x, y, threat, method, graph=graph, mix=mix)  # (B, K), +inf at y
    return -bound.masked_fill(F.one_hot(y, bound.shape[1]).bool(), 0.0)


@register("ibp")
@dataclass(frozen=True)
class IBP(Defense):
    kappa_end: float = 0.5
    eps_factor: float = 1.0
    dataset_options = {"mnist": {"eps_factor": 1.2}}
    recipes = {"default": _MNIST, "mnist": _MNIST}
    method = "ibp"

    def __post_init__(self):
        if not 0 <= self.kappa_end <= 1:
            raise ValueError(f"kappa_end must be in [0, 1], got {self.kappa_end}")
        if not self.eps_factor > 0:
            raise ValueError(f"eps_factor must be > 0, got {self.eps_factor}")

    def uses_ramp(self) -> bool:
        return True

    def mix(self, ramp: float) -> float:
        """CROWN-IBP's beta; IBP uses its own bound alone."""
        return 0.0

    def loss(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator,
             ramp: float = 1.0):
        logits = model(x)
        kappa = 1 - (1 - self.kappa_end) * ramp
        worst = worst_case_logits(model, x, y, ThreatModel(threat.norm, threat.eps * self.eps_factor),
                                  "crown-ibp" if self.mix(ramp) > 0 else "ibp", self.mix(ramp))
        return kappa * F.cross_entropy(logits, y) + (1 - kappa) * F.cross_entropy(worst.float(), y), logits
