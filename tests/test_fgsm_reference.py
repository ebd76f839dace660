"""FGSM against a hand-computed step, and PGD against torchattacks.PGD on real MNIST."""

import pytest
import torch
import torchattacks
from torch.nn import functional as F

from robustbench_karp.api import evaluate
from robustbench_karp.attacks import build_attack
from robustbench_karp.evaluation.engine import predict
from robustbench_karp.threat import ThreatModel


def input_grad(model, x, y):
    x = x.clone().requires_grad_(True)
    F.cross_entropy(model(x), y, reduction="sum").backward()
    return x.grad


def test_fgsm_linf_equals_hand_computed_step(digits_model, digits):
    x, y = digits[1].batch(torch.arange(64))
    eps = 0.07
    expected = (x + eps * input_grad(digits_model, x, y).sign()).clamp(0, 1)
    got = build_attack("fgsm")(digits_model, x, y, ThreatModel("linf", eps), torch.Generator())
    assert torch.allclose(got, expected, atol=1e-7)
    for p in digits_model.parameters():
        p.grad = None


def test_fgm_l2_equals_hand_computed_step(digits_model, digits):
    x, y = digits[1].batch(torch.arange(64))
    eps = 0.8
    g = input_grad(digits_model, x, y)
    step = eps * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    expected = (x + step).clamp(0, 1)
    got = build_attack("fgsm")(digits_model, x, y, ThreatModel("l2", eps), torch.Generator())
    assert torch.allclose(got, expected, atol=1e-6)
    for p in digits_model.parameters():
        p.grad = None


@pytest.mark.slow
def test_pgd_never_weaker_than_torchattacks(mnist_model, mnist_test):
    """Same eps, steps and step size: our robust accuracy is at most 0.3 points above torchattacks'.

    Both are averaged over three random starts: one start each differs by up to +-0.4 points from
    the random start alone (and with the thread count), which would make a 0.3-point margin a coin toss.
    """
    x, y = mnist_test.batch(torch.arange(500))
    eps, steps, step_size = 0.1, 20, 0.01  # an eps where the standard model keeps some accuracy
    seeds = (0, 1, 2)
    runs = [evaluate(mnist_model, x, y, attacks=[("pgd", {"steps": steps, "step_size": step_size})],
                     norm="linf", eps=eps, seed=seed, device="cpu") for seed in seeds]
    ref = []
    for seed in seeds:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            ref_attack = torchattacks.PGD(mnist_model, eps=eps, alpha=step_size, steps=steps, random_start=True)
            ref.append((predict(mnist_model, ref_attack(x, y)) == y).float().mean().item())
    ours = sum(r.robust_accuracy for r in runs) / len(runs)
    ref_acc = sum(ref) / len(ref)
    assert runs[0].clean_accuracy > 0.9
    assert ours <= ref_acc + 0.003, (ours, ref_acc, [r.robust_accuracy for r in runs], ref)
    assert 0.02 < ref_acc < 0.8 * runs[0].clean_accuracy  # a regime where the comparison means something
