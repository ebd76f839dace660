"""Contract tests over every registered attack (and torchattacks through the adapter).

Adding an attack to the registry adds it here automatically; only attacks that need cheaper
options to run in seconds are listed in FAST_OPTIONS. Every attack is bound to a run context first
(AdvGAN trains its generator on the context's training data, in a temporary KARP_HOME).
"""

import pytest
import torch
from conftest import Purified
from torch import nn

from robustbench_karp.attacks import ATTACKS, build_attack
from robustbench_karp.evaluation.engine import predict
from robustbench_karp.threat import ThreatModel, check_budget
from robustbench_karp.threat.context import RunContext

FAST_OPTIONS = {
    "pgd": {"steps": 10},
    "apgd": {"steps": 10}, "apgd-ce": {"steps": 10}, "apgd-t": {"steps": 5}, "fab-t": {"steps": 5},
    "square": {"queries": 50}, "autoattack": {"steps": 5, "square_queries": 50},
    "advgan": {"epochs": 5}, "bpda-pgd": {"steps": 10}, "eot-pgd": {"steps": 10, "samples": 2},
    "transfer-pgd": {"steps": 10},
    "strong": {"steps": 5, "odi_steps": 1, "target_steps": 5, "targets": 3, "square_queries": 30,
               "escalated_queries": 30, "escalated_restarts": 1, "eot_samples": 2},
}
PURIFIER_PROTOCOL = {"transfer-pgd"}  # attack the `classifier` of a model with `preprocess` and `classifier`
EXTRA = {"torchattacks:PGD": "linf", "torchattacks:PGDL2": "l2", "torchattacks:CW": "l2"}  # each under its own norm only
THREATS = [ThreatModel("linf", 0.1), ThreatModel("l2", 1.0)]
CASES = [(name, threat) for name in ATTACKS.names() for threat in THREATS]
CASES += [(name, threat) for name, norm in EXTRA.items() for threat in THREATS if threat.norm.value == norm]
# The heaviest cases (pytest --durations on 2 cores) are left out of the fast subset; the other norm of each stays in it.
SLOW = {("advgan", "l2"), ("autoattack", "linf"), ("fab-t", "linf"), ("apgd-t", "linf"), ("strong", "linf")}


def make(name):
    return build_attack(name, FAST_OPTIONS.get(name, {})).bind(RunContext(dataset="digits", model="smallcnn", seed=0))


pytestmark = pytest.mark.usefixtures("module_karp_home")  # generators trained by attacks land there


@pytest.fixture(scope="module")
def batch(digits):
    _, test = digits
    return test.batch(torch.arange(48))


@pytest.mark.parametrize("name,threat", [pytest.param(n, t, id=f"{n}-{t.norm.value}",
                                                     marks=[pytest.mark.slow] if (n, t.norm.value) in SLOW else [])
                                        for n, t in CASES])
def test_attack_contract(name, threat, digits_model, batch):
    x, y = batch
    x0 = x.clone()
    attack = make(name)
    model = Purified(nn.Identity(), digits_model) if name in PURIFIER_PROTOCOL else digits_model
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)  # a stale .grad the attack must not touch
    rng_before = torch.get_rng_state()
    for training in (False, True):
        model.train(training)
        x_adv = attack(model, x, y, threat, torch.Generator().manual_seed(0))
        assert model.training is training  # mode left alone
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
        check_budget(x_adv, x, threat)  # eps-ball, [0, 1], finite
    model.eval()
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in model.parameters())
    assert torch.equal(x, x0)  # input not modified
    again = attack(model, x, y, threat, torch.Generator().manual_seed(0))
    first = attack(model, x, y, threat, torch.Generator().manual_seed(0))
    assert torch.equal(again, first)  # same generator, same output
    clean_acc = (predict(model, x) == y).float().mean()
    adv_acc = (predict(model, first) == y).float().mean()
    assert adv_acc <= clean_acc
    for p in model.parameters():
        p.grad = None


def test_registry_rejects_unknown_names_and_options():
    with pytest.raises(KeyError, match="valid: .*pgd"):
        build_attack("pgdd")
    with pytest.raises(ValueError, match="no option stepz"):
        build_attack("pgd", {"stepz": "3"})
    with pytest.raises(ValueError, match="steps must be >= 1"):
        build_attack("pgd", {"steps": "0"})
    with pytest.raises(ValueError, match="unknown torchattacks attack"):
        build_attack("torchattacks:NoSuchAttack")
    assert build_attack("pgd", {"step_size": "2/255"}).step_size == pytest.approx(2 / 255)
    assert build_attack("torchattacks:CW", {"steps": "7"}).kwargs == (("steps", 7),)


def test_strong_attacks_break_a_standard_model(digits_model, batch):
    """Sanity: at eps 0.3 a standard digits model falls well below its clean accuracy."""
    x, y = batch
    threat = ThreatModel("linf", 0.3)
    clean = (predict(digits_model, x) == y).float().mean()
    for name in ["pgd", "fgsm", "torchattacks:PGD"]:
        x_adv = make(name)(digits_model, x, y, threat, torch.Generator().manual_seed(0))
        assert (predict(digits_model, x_adv) == y).float().mean() < clean - 0.3, name
