"""Fast adversarial training: FGSM with a random start (Wong, Rice & Kolter 2020, https://arxiv.org/abs/2001.03994).

Each batch is replaced by one FGSM step of size step_scale * eps from a uniform random point of
the eps-ball, projected back to the ball around the clean input (one public reimplementation
skips the projection and trains at up to 2 eps) and to [0, 1]. Threat model: Linf (or L2).

Catastrophic overfitting (CO): single-step training can suddenly lose all robustness to multi-step
attacks while its FGSM accuracy soars. The training loop's guard measures PGD accuracy on a fixed
training slice every epoch, stops when it collapses and keeps the best validation epoch.

What makes MNIST at eps 0.3 work (smallcnn; test PGD-50 x 3 restarts on 1000 points, GPU sweeps):
- Clipping the random start to [0, 1] before taking the gradient is what collapses it. About 80%
  of MNIST pixels are 0, and clipping removes the negative half of their noise, so every FGSM step
  starts from almost the same point: a predictable attack the network learns to mask. With the
  clipped start, step 1.25 eps or 1.0 eps collapsed to 0% by epoch 3. The fast-AT reference's MNIST
  code does not clip its start either (its issue #21). Hence `clip_start=False` (the default): the
  gradient is taken at x + eta even where that leaves [0, 1]; the training example is then
  projected into the ball and [0, 1] as usual.
- With the unclipped start and Adam one-cycle to 1e-3, step 1.25 eps reached 27-31% and step 1.0
  eps 65-75%. One-cycle to 3e-3 with eps ramped over the first 3 epochs gave 82% (two seeds; 77% at
  5e-3). An exponential moving average of the weights (decay 0.999, the averaged weights validated
  and kept) then made step 1.25 eps stable: val PGD-10 0.90, test PGD-50 x 10 restarts 0.834 with
  clean 0.990 (step 1.0 eps: 0.828). N-FGSM (noise 2 eps, no projection) collapsed by epoch 4.
- The registered MNIST recipe: step 1.25 eps from an unclipped start, Adam with one-cycle to 3e-3,
  eps ramped over 3 epochs, batch 128, weight EMA 0.999, best validation epoch kept; 20 epochs with
  the training step in bf16 autocast and channels-last (14 min on two Zen 4 cores; 70 -> 36 s per
  epoch, float32 on devices without bf16 units). Test PGD-50-10 on 1000 points, clean >= 99.0%:
  seed 0 84.4%, seed 1 83.1%, seed 2 83.5% (validation PGD-10 0.915, 0.907, 0.908). The earlier 12-epoch float32 schedule
  gave 85.3% (seed 0) and 83.0% (seed 1) in 15 min: the longer schedule raised validation PGD-10
  but not test PGD-50-10. An EMA decay of 0.9995 with a 5-epoch ramp was worse (val 0.86, falling).
Open problem: this stays near 84%, below the 88.8% PGD-50-10 of the reference's smaller stride-2
network. smallcnn keeps a gap of 6-8 points between validation PGD-10 and test PGD-50-10 (some
gradient masking remains), and in the last, low-learning-rate epochs the FGSM training accuracy
climbs to 99.6% while validation PGD accuracy falls: a slow form of catastrophic overfitting.

Arguments:
    step_scale (float): step = step_scale * eps. Default 1.25 (the paper's alpha).
    clip_start (bool): clip the random start to [0, 1] before the gradient. Default False.
    attack_eval_mode (bool): inner FGSM with the model in eval mode. Default False (reference).
"""

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from robustbench_karp.attacks.base import untargeted_objective
from robustbench_karp.defenses.base import Defense, Recipe, inner_attack_mode, register
from robustbench_karp.threat import ThreatModel, ascend

_CIFAR = Recipe(epochs=15, optimizer="sgd", lr=0.2, weight_decay=5e-4, schedule="onecycle")
_MNIST = Recipe(epochs=20, batch_size=128, optimizer="adam", lr=3e-3, schedule="onecycle", eps_ramp_epochs=3,
                ema_decay=0.999, select="best", amp="bf16", channels_last=True)


@register("fgsm-at")
@dataclass(frozen=True)
class FGSMAT(Defense):
    step_scale: float = 1.25
    clip_start: bool = False
    attack_eval_mode: bool = False
    recipes = {
        "default": Recipe(epochs=10, optimizer="adam", lr=1e-3, schedule="onecycle", eps_ramp_epochs=2),
        "mnist": _MNIST, "fashion-mnist": _MNIST,
        "cifar10": _CIFAR, "cifar100": _CIFAR, "svhn": _CIFAR,
    }

    def __post_init__(self):
        if not self.step_scale > 0:
            raise ValueError(f"step_scale must be > 0, got {self.step_scale}")

    def loss(self, model, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, gen: torch.Generator):
        start = threat.random_point(x, gen, clip=self.clip_start)  # (B, C, H, W), may leave [0, 1]
        with inner_attack_mode(model, self.attack_eval_mode) as inner:
            x_adv, _ = ascend(x, untargeted_objective(inner, y), threat, steps=1,
                              step_size=self.step_scale * threat.eps, random_start=True, gen=gen, start=start)
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits
