"""Contract tests over every registered defense, and the defenses' own invariants."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustbench_karp.defenses import DEFENSES, build_defense
from robustbench_karp.defenses.base import inner_attack_mode
from robustbench_karp.defenses.memory import BatchMemory
from robustbench_karp.defenses.trades import kl_objective
from robustbench_karp.sources import new_model
from robustbench_karp.threat import ThreatModel


class Spy(nn.Module):
    """Wraps a model and keeps the inputs and the mode of every forward call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.inputs, self.modes = model, [], []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        self.modes.append(self.model.training)
        return self.model(x)


@pytest.fixture
def batch(digits):
    return digits[0].batch(torch.arange(32))


@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_contract(name, batch):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = new_model("smallcnn", "digits")
    model.train()
    x, y = batch
    rng = torch.get_rng_state()
    loss, logits = build_defense(name).loss(model, x, y, ThreatModel("linf", 0.1), torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss) and logits.shape == (32, 10)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing and model.training  # every parameter gets a finite gradient; mode restored
    assert torch.equal(torch.get_rng_state(), rng)


def test_inner_attack_mode_restores_mode_even_on_error():
    model = nn.Linear(2, 2).train()
    with pytest.raises(RuntimeError):
        with inner_attack_mode(model, eval_mode=True) as inner:
            assert not inner.training
            raise RuntimeError("boom")
    assert model.training


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 1.5)])
def test_fgsm_at_perturbation_never_leaves_the_ball(batch, digits_model, norm, eps):
    spy = Spy(digits_model)
    x, y = batch
    build_defense("fgsm-at").loss(spy, x, y, ThreatModel(norm, eps), torch.Generator().manual_seed(0))
    x_adv = spy.inputs[-1]  # the training forward sees the adversarial batch
    dist = ThreatModel(norm, eps).distance(x_adv, x)
    assert (dist <= eps + 1e-6).all() and (dist > 0.5 * eps).all()  # random start + 1.25 eps step, projected
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_fgsm_at_prior_init_steps_from_the_remembered_perturbation(batch, digits_model):
    """init=prior (prior_noise 0): one FGSM step from x + the remembered delta, checked by hand; the new delta is stored."""
    x, y = batch
    eps = 0.3
    previous = 0.5 * eps * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(2)))
    rows, spy = BatchMemory(previous.clone()), Spy(digits_model)
    build_defense("fgsm-at", {"init": "prior", "prior_noise": "0"}).loss(
        spy, x, y, ThreatModel("linf", eps), torch.Generator().manual_seed(0), memory=rows)
    start = (x + previous).requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(digits_model(start), y, reduction="sum"), start)
    expected = (x + (previous + 1.25 * eps * g.sign()).clamp(-eps, eps)).clamp(0, 1)
    assert torch.allclose(spy.inputs[-1], expected, atol=1e-6)
    assert torch.allclose(rows.stored, expected - x, atol=1e-6)
    with pytest.raises(ValueError, match="per-example memory"):
        build_defense("fgsm-at", {"init": "prior"}).loss(digits_model, x, y, ThreatModel("linf", eps),
                                                         torch.Generator())


def test_fgsm_at_prior_init_noise_stays_in_the_ball(batch, digits_model):
    x, y = batch
    threat, rows = ThreatModel("linf", 0.3), BatchMemory(torch.full(batch[0].shape, 0.3))  # on the ball's face
    build_defense("fgsm-at", {"init": "prior"}).loss(Spy(digits_model), x, y, threat, torch.Generator(), memory=rows)
    assert (threat.distance(x + rows.stored, x) <= 0.3 + 1e-6).all() and (x + rows.stored).min() >= 0


def test_fgsm_at_uses_prior_init_on_mnist_only_by_default():
    assert build_defense("fgsm-at", dataset="mnist").init == "prior"
    assert build_defense("fgsm-at", {"init": "uniform"}, dataset="mnist").init == "uniform"  # explicit wins
    assert build_defense("fgsm-at", dataset="cifar10").init == "uniform" and not build_defense("fgsm-at").uses_memory()


def test_attack_eval_mode_is_applied_and_recorded(batch, digits_model):
    x, y = batch
    for flag in (True, False):
        spy = Spy(digits_model).train()
        defense = build_defense("pgd-at", {"steps": "2", "attack_eval_mode": str(flag)})
        defense.loss(spy, x, y, ThreatModel("linf", 0.1), torch.Generator())
        assert spy.modes == [not flag] * 2 + [True]  # inner attack steps, then the training forward
        assert defense.config()["attack_eval_mode"] is flag


def test_trades_inner_maximization_increases_kl(batch, digits_model):
    x, y = batch
    spy = Spy(digits_model).train()
    build_defense("trades").loss(spy, x, y, ThreatModel("linf", 0.2), torch.Generator().manual_seed(0))
    x_adv = spy.inputs[-1]  # TRADES' last forward is on x_adv
    digits_model.eval()
    with torch.no_grad():
        p_clean = F.softmax(digits_model(x), dim=1)
        start = (x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
        objective = kl_objective(digits_model, p_clean)
        idx = torch.arange(len(x))
        kl_start, kl_adv = objective(start, idx)[0], objective(x_adv, idx)[0]
    assert kl_adv.mean() > 100 * kl_start.mean() and kl_adv.mean() > 0.05
    assert (ThreatModel("linf", 0.2).distance(x_adv, x) <= 0.2 + 1e-6).all()


@pytest.mark.parametrize("name,options", [("trades", {"beta": "-1"}), ("pgd-at", {"steps": "0"}),
                                          ("fgsm-at", {"step_scale": "0"}), ("fgsm-at", {"init": "zero"}),
                                          ("fgsm-at", {"prior_noise": "2"}), ("mart", {"nope": "1"})])
def test_impossible_defense_options_are_errors(name, options):
    with pytest.raises(ValueError):
        build_defense(name, options)


def test_unknown_defense_lists_valid_names():
    with pytest.raises(KeyError, match="valid: .*fgsm-at.*trades"):
        build_defense("magic")
