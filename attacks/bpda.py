"""BPDA-PGD: Backward Pass Differentiable Approximation with EOT
(Athalye, Carlini & Wagner 2018, "Obfuscated Gradients Give a False Sense of Security", https://arxiv.org/abs/1802.00420).

A purifier (Defense-GAN's projection, JPEG, denoisers, ...) is often non-differentiable or has
vanishing gradients, so plain PGD through it sees no signal. BPDA runs the purifier forward but
treats it as the identity on the backward pass, through the straight-through surrogate

    classifier(x + (preprocess(x) - x).detach())       # value: the real model; gradient: d classifier at preprocess(x)

and averages that gradient over `samples` forward passes (EOT), since purifiers are random.

Protocol (nothing is special-cased): the model has attributes `preprocess` (nn.Module) and
`classifier` (nn.Module), and its forward is classifier(preprocess(x)). A model without
`preprocess` is attacked as EOT-PGD through the model itself. A point counts as misclassified
(and leaves the batch under early_stop) only when the real model's prediction is wrong on every one
of the EOT samples of that step.

Threat model: Linf or L2 ball of radius eps around x, intersected with [0, 1].

Arguments:
    steps (int): ascent steps per restart. Default 50.
    step_size (float | None): pixel units; None means 2.5 * eps / steps. Default None.
    restarts (int): random restarts, each only on the points no earlier restart broke. Default 1.
    random_start (bool): start at a uniform random point of the ball. Default True.
    samples (int): forward passes (purifier draws) averaged per step (EOT). Default 2.
    loss (str): "ce" or "margin". Default "ce".
    early_stop (bool): a point leaves the batch at its first misclassified iterate. Default True.

Shape: images (B, C, H, W) in [0, 1]; labels (B,). Returns x_adv of the same shape.

Example:
    >>> x_adv = BPDAPGD(steps=100, samples=4)(defended, x, y, ThreatModel("linf", 0.3), gen)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from robustbench_karp.attacks.base import register
from robustbench_karp.attacks.eot import EOTPGD, Forward


def straight_through(model) -> Forward:
    """x -> logits of the real model, whose gradient treats model.preprocess as the identity."""
    preprocess = getattr(model, "preprocess", None)
    if preprocess is None:
        return model
    classifier = model.classifier

    def forward(x: torch.Tensor) -> torch.Tensor:
        purified = preprocess(x.detach()).detach()  # (b, C, H, W), no graph through the purifier
        return classifier(x + (purified - x).detach())

    return forward


@register("bpda-pgd")
@dataclass(frozen=True)
class BPDAPGD(EOTPGD):
    samples: int = 2

    def gradient_model(self, model) -> Forward:
        return straight_through(model)
