"""Compute cost: the passes each attack spends, counted by the engine (hooks), never by a formula per attack."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustbench_karp.attacks import build_attack
from robustbench_karp.evaluation.cost import count_passes
from robustbench_karp.evaluation.engine import run_attacks
from robustbench_karp.threat import ThreatModel

N, D = 40, 8


def linear_model() -> nn.Module:
    """A linear classifier without bias whose classes split [0, 1]^D: an attack with a large eps breaks it."""
    linear = nn.Linear(D, 3, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(3, D, generator=torch.Generator().manual_seed(0)))
    return nn.Sequential(nn.Flatten(), linear).eval()


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(N, 1, 1, D, generator=gen)  # (B, C, H, W) in [0, 1]
    return x, linear_model()(x).argmax(1)  # every point starts correctly classified


def evaluate_cost(model: nn.Module, attacks: list, eps: float = 0.1, batch_size: int = 16) -> dict:
    x, y = data()
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, N, batch_size)]
    result = run_attacks(model, batches, attacks, ThreatModel("linf", eps), torch.Generator().manual_seed(0),
                         torch.device("cpu"))
    return result.cost


@pytest.mark.parametrize("steps", [1, 7])
def test_pgd_k_without_early_stop_is_k_backward_passes_per_attacked_point(steps):
    cost = evaluate_cost(linear_model(), [build_attack("pgd", {"steps": steps, "early_stop": False})])
    pgd = cost["per_attack"]["pgd"]
    assert pgd["attacked_points"] == N  # all start correct, one attack: every point is attacked
    assert pgd["backward_passes"] == steps * N and pgd["backward_per_point"] == steps
    assert pgd["forward_per_point"] >= steps  # the ascent's forwards (plus whatever checks PGD runs itself)
    # The totals add the engine's own predictions (clean, and after the attack), which have no backward pass.
    assert cost["backward_passes"] == steps * N and cost["forward_passes"] == pgd["forward_passes"] + 2 * N
    assert cost["device"] == "cpu" and cost["wall_seconds"] >= pgd["wall_seconds"] > 0


def test_a_cascade_counts_only_the_points_each_attack_attacks():
    cost = evaluate_cost(linear_model(), [build_attack("fgsm"), build_attack("pgd", {"steps": 5, "early_stop": False})])
    fgsm, pgd = cost["per_attack"]["fgsm"], cost["per_attack"]["pgd"]
    assert (fgsm["attacked_points"], fgsm["backward_per_point"]) == (N, 1)
    assert pgd["attacked_points"] < N  # FGSM broke some points: PGD never saw them
    assert pgd["backward_passes"] == 5 * pgd["attacked_points"]


def test_early_stop_spends_at_most_k():
    cost = evaluate_cost(linear_model(), [build_attack("pgd", {"steps": 20})], eps=0.3)
    pgd = cost["per_attack"]["pgd"]
    assert 0 < pgd["backward_passes"] < 20 * pgd["attacked_points"]


class Purified(nn.Module):
    """classifier(preprocess(x)), the shape of a purifier defense: its classifier is the network counted."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(0.1, 0.9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.preprocess(x))


def test_a_purifier_counts_its_classifier_once_per_call_and_the_hooks_go_away():
    model = Purified(linear_model())
    x, _ = data()
    with count_passes(model) as passes:
        model(x)  # through the purifier
        x_adv = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model.classifier(x_adv).sum(), x_adv)  # BPDA-style: the classifier directly
    assert (passes.forward, passes.backward) == (2 * N, N)
    assert not model.classifier._forward_hooks and not model._forward_hooks
    cost = evaluate_cost(model, [build_attack("pgd", {"steps": 3, "early_stop": False})])
    assert cost["per_attack"]["pgd"]["backward_per_point"] == 3


def test_eps_zero_attacks_nothing_and_costs_nothing():
    cost = evaluate_cost(linear_model(), [build_attack("pgd", {"steps": 3})], eps=0.0)
    assert cost["per_attack"]["pgd"]["attacked_points"] == 0 and cost["backward_passes"] == 0
