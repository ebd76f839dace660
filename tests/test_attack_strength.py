"""Tests that catch a broken attack: every registered attack must break a standard model, PGD must equal
hand-written and torchattacks loops, its restarts must only ever add broken points, and its generator must decide it.

The contract tests (test_attacks_contract.py) check that an attack stays in the ball; an attack that returns
its input passes all of them. Here every registered attack (and the torchattacks adapter) must push a small
undefended MLP on the 8x8 digits from >= 90% clean accuracy to at most half of it, at an eps where a random
point of the ball leaves the accuracy almost unchanged. A new attack must add its entry to CASES: until it
does, its test fails and names it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
import torchattacks
from conftest import Noisy, Purified, Quantize
from torch import nn
from torch.nn import functional as F

from robustbench_karp.attacks import ATTACKS, build_attack
from robustbench_karp.attacks.pgd import PGD
from robustbench_karp.threat import ThreatModel, check_budget
from robustbench_karp.threat.context import RunContext

EPS = 0.15  # digits, Linf: random noise of this size costs ~3 points of accuracy, PGD ~90
BOUND = 0.5  # after the attack, accuracy <= BOUND * clean accuracy
N_TEST = 100


class Case(NamedTuple):
    options: dict  # small enough for about a CPU second
    model: str = "plain"  # the model the attack is built for: "plain", "noisy" (randomized) or "quantized" (purifier)
    eps: float = EPS


CASES = {
    "fgsm": Case({}),
    "pgd": Case({"steps": 10}),
    "apgd-ce": Case({"steps": 10}),
    "apgd": Case({"steps": 10}),
    "apgd-t": Case({"steps": 10}),
    "fab-t": Case({"steps": 10}),
    "square": Case({"queries": 300}),
    "autoattack": Case({"steps": 10, "square_queries": 300}),
    # one forward pass of a generator trained for half a second: it needs a larger eps than the gradient attacks
    "advgan": Case({"epochs": 4, "width": 8, "batch_size": 64, "lr": 1e-2, "train_size": 512}, eps=0.2),
    "eot-pgd": Case({"steps": 10, "samples": 2}, "noisy"),  # EOT is built for randomized models
    "bpda-pgd": Case({"steps": 10}, "quantized"),  # BPDA: a purifier whose gradient is zero
    "transfer-pgd": Case({"steps": 10}, "quantized"),  # PGD on the classifier, judged through the purifier
    "torchattacks:PGD": Case({"steps": 10, "alpha": 0.03}),
    "strong": Case({"steps": 10, "target_steps": 10, "targets": 3, "square_queries": 100, "escalated_queries": 100}),
}
# attacks whose output depends on the generator, with options cheaper still: only their randomness is tested
# here (fgsm and advgan never draw; fab-t's first restart starts at x and later ones rarely beat it)
RANDOMIZED = {"pgd": {"steps": 2}, "eot-pgd": {"steps": 2, "samples": 2}, "bpda-pgd": {"steps": 2}, "transfer-pgd": {"steps": 2},
              "apgd": {"steps": 2}, "apgd-ce": {"steps": 2}, "apgd-t": {"steps": 2}, "square": {"queries": 20},
              "autoattack": {"steps": 2, "square_queries": 20}, "torchattacks:PGD": {"steps": 2},
              "strong": {"steps": 2, "target_steps": 2, "targets": 3, "square_queries": 20, "escalated_queries": 20}}


pytestmark = pytest.mark.usefixtures("module_karp_home")  # AdvGAN's generator lands there


@pytest.fixture(scope="module")
def mlp(digits_mlp):
    return digits_mlp


@pytest.fixture(scope="module")
def models(mlp):
    return {"plain": mlp, "noisy": Noisy(mlp).eval(), "quantized": Purified(Quantize(8), mlp).eval()}


@pytest.fixture(scope="module")
def batch(digits):
    _, test = digits
    return test.batch(torch.arange(N_TEST))


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def make(name: str, options: dict | None = None):
    threat = ThreatModel("linf", CASES[name].eps)
    options = CASES[name].options if options is None else options
    return build_attack(name, options).bind(RunContext(dataset="digits", model="digits-mlp", threat=threat))


@pytest.mark.parametrize("kind,eps", sorted({(case.model, case.eps) for case in CASES.values()}))
def test_the_bound_is_out_of_reach_without_an_attack(kind, eps, models, batch):
    """Calibration: the input itself, or a random point of the ball, stays far above the bound."""
    x, y = batch
    model = models[kind]
    clean = accuracy(model, x, y)
    noise = accuracy(model, ThreatModel("linf", eps).random_point(x, torch.Generator().manual_seed(0)), y)
    assert clean >= 0.9, (kind, clean)
    assert noise > BOUND * clean + 0.3, (kind, eps, clean, noise)


@pytest.mark.parametrize("name", ATTACKS.names() + ["torchattacks:PGD"])
def test_attack_breaks_a_standard_model(name, models, batch):
    if name not in CASES:
        pytest.fail(f"attack {name!r} is registered but has no strength case: add it to CASES in {__file__}")
    x, y = batch
    model, threat = models[CASES[name].model], ThreatModel("linf", CASES[name].eps)
    clean = accuracy(model, x, y)
    x_adv = make(name)(model, x, y, threat, torch.Generator().manual_seed(0))
    check_budget(x_adv, x, threat)  # an attack may not win by leaving the ball
    robust = accuracy(model, x_adv, y)
    assert robust <= BOUND * clean, f"{name}: accuracy {clean:.2f} -> {robust:.2f}, expected <= {BOUND * clean:.2f}"


# --- PGD and FGSM against independent loops ----------------------------------------------------------


def hand_pgd(model, x, y, eps: float, step_size: float, steps: int, norm: str) -> torch.Tensor:
    """Textbook PGD from x (no random start, no early stop): a steepest-ascent step on the summed CE, then
    the projection onto the ball around x and the clip to [0, 1]."""
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
        if norm == "linf":
            x_adv = x_adv.detach() + step_size * g.sign()
            delta = (x_adv - x).clamp(-eps, eps)
        else:
            g_norm = g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            x_adv = x_adv.detach() + step_size * g / g_norm
            delta = x_adv - x
            delta = delta * (eps / delta.flatten(1).norm(dim=1)).clamp(max=1.0).view(-1, 1, 1, 1)
        x_adv = (x + delta).clamp(0, 1)
    return x_adv


@pytest.mark.parametrize("norm,eps,step_size", [("linf", 0.1, 0.02), ("l2", 1.0, 0.25)])
def test_pgd_without_random_start_equals_a_hand_written_loop(norm, eps, step_size, mlp, batch):
    x, y = batch
    pgd = PGD(steps=10, step_size=step_size, random_start=False, early_stop=False, restarts=1)
    got = pgd(mlp, x, y, ThreatModel(norm, eps), torch.Generator().manual_seed(0))
    expected = hand_pgd(mlp, x, y, eps, step_size, 10, norm)
    assert (got - x).abs().max() > 0.5 * step_size  # it moved
    if norm == "linf":
        assert torch.equal(got, expected)
    else:
        assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("norm,eps,step_size", [("linf", 0.1, 0.02), ("l2", 1.0, 0.25)])
def test_pgd_without_random_start_matches_torchattacks(norm, eps, step_size, mlp, batch):
    x, y = batch
    pgd = PGD(steps=10, step_size=step_size, random_start=False, early_stop=False)
    got = pgd(mlp, x, y, ThreatModel(norm, eps), torch.Generator().manual_seed(0))
    cls = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    expected = cls(mlp, eps=eps, alpha=step_size, steps=10, random_start=False)(x, y)
    assert torch.allclose(got, expected, atol=1e-5)


def test_fgsm_matches_torchattacks(mlp, batch):
    """The hand-computed FGSM step is in test_fgsm_reference.py; this is the other reference."""
    x, y = batch
    got = build_attack("fgsm")(mlp, x, y, ThreatModel("linf", 0.1), torch.Generator())
    expected = torchattacks.FGSM(mlp, eps=0.1)(x, y)
    assert torch.allclose(got, expected, atol=1e-6)


# --- PGD's restarts ---------------------------------------------------------------------------------


class Lottery(nn.Module):
    """Class 1 when the mean pixel exceeds `threshold`, else class 0, with an input gradient of exactly zero:
    PGD cannot move, so whether a point is broken is decided by its random start alone."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x):
        flat = x.flatten(1)  # (B, 64)
        hit = (flat.mean(dim=1) > self.threshold).float()  # (B,)
        return 10 * torch.stack([1 - hit, hit], dim=1) + 0 * flat.sum(dim=1, keepdim=True)  # (B, 2), in the graph


def broken_by_restarts(model, x, y, threat, restarts: int, seed: int, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_adv, broken (B,) bool) of PGD with `restarts` restarts from generator seed `seed`."""
    x_adv = PGD(restarts=restarts, **options)(model, x, y, threat, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x_adv, model(x_adv).argmax(1) != y


def check_restarts_only_add(runs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """runs[r - 1] = PGD with r restarts, same seed: points broken by r restarts stay broken, and untouched."""
    first_adv, first = runs[0]
    for r in range(1, len(runs)):
        x_adv, broken = runs[r]
        lost = (runs[r - 1][1] & ~broken).nonzero().squeeze(1).tolist()
        assert not lost, f"points {lost} broken with {r} restarts are robust again with {r + 1}"
        assert torch.equal(x_adv[first], first_adv[first]), "a later restart overwrote a point the first one broke"
    gained = runs[-1][1].sum().item() - first.sum().item()
    assert gained >= 3, f"{len(runs)} restarts broke only {gained} more points than one"


@pytest.mark.parametrize("early_stop", [True, False])
def test_a_point_only_a_later_restart_breaks_is_counted(early_stop):
    """Lottery: each random start breaks a point with probability ~0.3 (the mean of 64 uniform draws in
    [-eps, eps] has std eps / sqrt(192); the threshold sits half a std above the image's mean)."""
    eps = 0.1
    x, y = torch.full((64, 1, 8, 8), 0.5), torch.zeros(64, dtype=torch.long)
    model, threat = Lottery(0.5 + 0.5 * eps / math.sqrt(192)), ThreatModel("linf", eps)
    runs = [broken_by_restarts(model, x, y, threat, r, seed=3, steps=2, early_stop=early_stop) for r in (1, 2, 3, 4, 5)]
    assert 8 <= runs[0][1].sum() <= 32  # restart 1 alone breaks some, not most
    check_restarts_only_add(runs)


@pytest.mark.parametrize("early_stop", [True, False])
def test_more_pgd_restarts_are_never_weaker_on_a_real_model(early_stop, mlp, batch):
    x, y = batch
    threat = ThreatModel("l2", 0.8)  # two short steps break about a third of the points; the start matters
    runs = [broken_by_restarts(mlp, x, y, threat, r, seed=0, steps=2, step_size=0.2, early_stop=early_stop)
            for r in (1, 2, 3, 4)]
    check_restarts_only_add(runs)


# --- generators ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RANDOMIZED)
def test_the_generator_decides_the_output(name, models, batch):
    """Same seed, bitwise the same output; another seed, another random start (fails for a fixed or
    zero start, and for draws from the global RNG)."""
    x, y = batch
    model, threat = models[CASES[name].model], ThreatModel("linf", CASES[name].eps)
    if name == "eot-pgd":
        model = models["plain"]  # the noisy model's own draws would make two runs differ anyway
    attack = make(name, RANDOMIZED[name])
    runs = [attack(model, x, y, threat, torch.Generator().manual_seed(seed)) for seed in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]), f"{name}: the same generator seed gave different outputs"
    assert not torch.equal(runs[0], runs[2]), f"{name}: generator seeds 0 and 1 gave the same output"


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_pgd_random_start_comes_from_the_generator(norm, eps, mlp, batch):
    """One step of size ~0: PGD returns its random start, which must be the generator's draw, inside the ball."""
    x, y = batch
    threat = ThreatModel(norm, eps)
    starts = [PGD(steps=1, step_size=1e-9, early_stop=False)(mlp, x, y, threat, torch.Generator().manual_seed(s))
              for s in (0, 0, 1)]
    assert torch.equal(starts[0], starts[1]) and not torch.equal(starts[0], starts[2])
    distance = threat.distance(starts[0], x)
    assert (distance <= eps + 1e-6).all() and distance.mean() > 0.3 * eps  # a point of the ball, not x itself
    assert torch.allclose(starts[0], threat.random_point(x, torch.Generator().manual_seed(0)), atol=1e-6)
