"""Attack.forward_budget, which the progress display turns into time left within an attack.

The budget must bound the forward passes an attack really spends per point (else the estimate runs
past 100%) and be close to it when no point breaks (else "at most N s left" is far too long). Counted
with the engine's own pass counter on a model whose prediction no perturbation can change.
"""

from __future__ import annotations

import pytest
import torch
from conftest import Purified
from torch import nn

from robustbench_karp.attacks import build_attack
from robustbench_karp.evaluation.cost import count_passes
from robustbench_karp.threat import ThreatModel


class Unbreakable(nn.Module):
    """Class 9 by a margin of 5 logits that inputs in [0, 1] move by at most 0.06: every attack runs to its end."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)
        with torch.no_grad():
            self.lin.weight.copy_(torch.full((10, 64), 1e-3))
            self.lin.bias.copy_(torch.arange(10.0) * 5)

    def forward(self, x):
        return self.lin(x.flatten(1))


CASES = [("pgd", {"steps": "10", "restarts": "3"}), ("pgd", {"steps": "7"}), ("fgsm", {}),
         ("eot-pgd", {"steps": "5", "samples": "3"}), ("eot-pgd", {"steps": "4", "samples": "2", "restarts": "2"}),
         ("apgd-ce", {"steps": "10"}), ("apgd-t", {"steps": "10"}), ("fab-t", {"steps": "10"}),
         ("square", {"queries": "60"}), ("bpda-pgd", {"steps": "5", "samples": "2"})]


@pytest.mark.parametrize("name,options", CASES)
def test_forward_budget_bounds_the_passes_and_is_close_when_nothing_breaks(name, options):
    attack = build_attack(name, options)
    x, y = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((12,), 9)
    model = Unbreakable().eval()
    if name == "bpda-pgd":  # BPDA needs a purifier; its passes are counted on the classifier behind it
        model = Purified(nn.Identity(), model).eval()
    with count_passes(model) as passes:
        x_adv = attack(model, x, y, ThreatModel("linf", 0.1), torch.Generator().manual_seed(0))
    assert (model(x_adv).argmax(1) == 9).all()  # nothing broke: the attack ran all its steps
    used = passes.forward / len(x)
    assert 0.9 * attack.forward_budget() <= used <= attack.forward_budget(), (used, attack.forward_budget())

