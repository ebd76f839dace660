"""BPDA, EOT and transfer attacks on the generic purifier protocol (`preprocess` + `classifier`), no GAN involved."""

import pytest
import torch
from conftest import Purified, Quantize
from torch import nn
from torch.nn import functional as F

from robustbench_karp.attacks import build_attack
from robustbench_karp.attacks.bpda import straight_through
from robustbench_karp.attacks.eot import eot_objective
from robustbench_karp.attacks.pgd import PGD
from robustbench_karp.evaluation.engine import predict
from robustbench_karp.threat import ThreatModel, check_budget


@pytest.fixture(scope="module")
def batch(digits):
    _, test = digits
    return test.batch(torch.arange(64))


def accuracy(model, x, y) -> float:
    return (predict(model, x) == y).float().mean().item()


def test_bpda_breaks_a_non_differentiable_purifier_that_stops_pgd(digits_model, batch):
    x, y = batch
    defended = Purified(Quantize(4), digits_model).eval()
    threat = ThreatModel("linf", 0.2)
    clean = accuracy(defended, x, y)
    plain = PGD(steps=10)(defended, x, y, threat, torch.Generator().manual_seed(0))
    bpda = build_attack("bpda-pgd", {"steps": 10})(defended, x, y, threat, torch.Generator().manual_seed(0))
    check_budget(bpda, x, threat)
    assert clean > 0.8
    assert accuracy(defended, plain, y) > clean - 0.15  # rounding hides the gradient: PGD barely moves
    assert accuracy(defended, bpda, y) < accuracy(defended, plain, y) - 0.4


def test_bpda_gradient_is_nonzero_where_the_true_gradient_vanishes(digits_model, batch):
    x, y = batch
    defended = Purified(Quantize(4), digits_model).eval()
    x = x.clone().requires_grad_(True)
    (true_grad,) = torch.autograd.grad(F.cross_entropy(defended(x), y), x)
    (bpda_grad,) = torch.autograd.grad(F.cross_entropy(straight_through(defended)(x), y), x)
    assert true_grad.abs().max() == 0
    assert (bpda_grad.flatten(1).norm(dim=1) > 0).all()
    with torch.no_grad():  # forward value of the surrogate is the real model's
        assert torch.allclose(straight_through(defended)(x), defended(x))


def test_bpda_without_preprocess_is_eot_pgd_through_the_model(digits_model, batch):
    x, y = batch
    threat = ThreatModel("linf", 0.1)
    bpda = build_attack("bpda-pgd", {"steps": 5, "samples": 3})(digits_model, x, y, threat, torch.Generator().manual_seed(0))
    eot = build_attack("eot-pgd", {"steps": 5, "samples": 3})(digits_model, x, y, threat, torch.Generator().manual_seed(0))
    assert torch.equal(bpda, eot)


def test_eot_objective_averages_the_loss_and_needs_every_sample_to_misclassify():
    logits = [torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([[0.0, 2.0], [0.0, 2.0]])]  # draws of a random model
    calls = []

    def forward(x):
        calls.append(1)
        return logits[len(calls) - 1] + 0 * x.sum()

    y = torch.tensor([0, 0])
    loss, done = eot_objective(forward, y, "ce", samples=2)(torch.zeros(2, 1), torch.arange(2))
    expected = (F.cross_entropy(logits[0], y, reduction="none") + F.cross_entropy(logits[1], y, reduction="none")) / 2
    assert len(calls) == 2
    assert torch.allclose(loss, expected)
    assert done.tolist() == [False, True]  # point 0 is misclassified by one draw only


def test_eot_pgd_attacks_a_random_model(digits_model, batch):
    """A model that adds fresh Gaussian noise to its input on every call (its own generator)."""
    x, y = batch

    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.gen = digits_model, torch.Generator().manual_seed(1)

        def forward(self, x):
            return self.inner(x + 0.2 * torch.randn(x.shape, generator=self.gen))

    model = Noisy()
    threat = ThreatModel("linf", 0.15)
    clean = accuracy(model, x, y)
    x_adv = build_attack("eot-pgd", {"steps": 10, "samples": 4})(model, x, y, threat, torch.Generator().manual_seed(0))
    check_budget(x_adv, x, threat)
    assert accuracy(model, x_adv, y) < clean - 0.3


def test_transfer_attacks_the_classifier_and_needs_one(digits_model, batch):
    x, y = batch
    threat = ThreatModel("linf", 0.1)
    attack = build_attack("transfer-pgd", {"steps": 5})
    defended = Purified(Quantize(4), digits_model)
    x_adv = attack(defended, x, y, threat, torch.Generator().manual_seed(0))
    expected = PGD(steps=5, early_stop=False)(digits_model, x, y, threat, torch.Generator().manual_seed(0))
    assert torch.equal(x_adv, expected)
    with pytest.raises(ValueError, match="no `classifier` attribute"):
        attack(digits_model, x, y, threat, torch.Generator().manual_seed(0))


def test_adaptive_flags():
    assert build_attack("bpda-pgd").adaptive and build_attack("eot-pgd").adaptive
    assert not getattr(build_attack("pgd"), "adaptive", False)
    assert not getattr(build_attack("transfer-pgd"), "adaptive", False)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        build_attack("bpda-pgd", {"samples": "0"})
    with pytest.raises(ValueError, match="samples must be >= 1"):
        build_attack("eot-pgd", {"samples": "0"})
