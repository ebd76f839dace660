"""Defense-GAN on the digits with a tiny WGAN-GP: projection, vanishing gradients, adaptive vs plain attacks, options."""

import logging

import pytest
import torch
from torch.nn import functional as F

from robustbench_karp.attacks import build_attack
from robustbench_karp.attacks.bpda import straight_through
from robustbench_karp.defenses import build_defense
from robustbench_karp.defenses.defense_gan import DefenseGANModel
from robustbench_karp.evaluation.engine import predict
from robustbench_karp.registry import UnknownName
from robustbench_karp.store import file_sha256, networks
from robustbench_karp.threat import ThreatModel, check_budget
from robustbench_karp.threat.context import RunContext

DIGITS = RunContext(dataset="digits", model="smallcnn", seed=0)
TINY = {"epochs": 15, "gan_lr": 1e-3, "latent_dim": 16, "steps": 20, "restarts": 2}  # ~90 generator steps


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("karp-home")
        patch.setenv("KARP_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def defended(store, digits_model):
    networks.clear_memo()
    return build_defense("defense-gan", TINY).wrap(digits_model, DIGITS).eval()


@pytest.fixture(scope="module")
def batch(digits):
    _, test = digits
    return test.batch(torch.arange(64))


def accuracy(model, x, y) -> float:
    return (predict(model, x) == y).float().mean().item()


def test_projection_lowers_reconstruction_error(defended, batch):
    x, _ = batch
    projection = defended.preprocess
    z, z0 = projection.search(x)  # (R, B, latent) after L steps, and the random starts
    _, error = projection.reconstruct(x, z)
    _, start_error = projection.reconstruct(x, z0)
    assert (error < start_error).float().mean() > 0.95
    assert error.mean() < 0.5 * start_error.mean()


def test_defended_model_is_accurate_deterministic_and_leaves_the_global_rng(store, digits_model, defended, batch):
    x, y = batch
    rng = torch.get_rng_state()
    assert accuracy(defended, x, y) > 0.5
    one, two = (build_defense("defense-gan", TINY).wrap(digits_model, DIGITS) for _ in range(2))
    first = one.preprocess(x)
    assert torch.equal(first, two.preprocess(x))  # same context seed: same random starts
    assert not torch.equal(first, one.preprocess(x))  # fresh random starts on every call
    assert torch.equal(torch.get_rng_state(), rng)
    assert isinstance(defended, DefenseGANModel) and defended.classifier is digits_model


def test_plain_gradients_vanish_where_bpda_gradients_do_not(defended, batch):
    x, y = batch
    x = x.clone().requires_grad_(True)
    grads = [None if p.grad is None else p.grad.clone() for p in defended.parameters()]
    (plain,) = torch.autograd.grad(F.cross_entropy(defended(x), y), x)
    (bpda,) = torch.autograd.grad(F.cross_entropy(straight_through(defended)(x), y), x)
    assert plain.abs().max() == 0
    assert (bpda.flatten(1).norm(dim=1) > 0).all()
    same = lambda a, b: (a is None) == (b is None) and (a is None or torch.equal(a, b))
    assert all(same(p.grad, g) for p, g in zip(defended.parameters(), grads))  # no parameter's .grad touched


def test_adaptive_attack_beats_plain_pgd(defended, batch):
    x, y = batch
    threat = ThreatModel("linf", 0.2)
    plain = build_attack("pgd", {"steps": 10})(defended, x, y, threat, torch.Generator().manual_seed(0))
    bpda = build_attack("bpda-pgd", {"steps": 10})(defended, x, y, threat, torch.Generator().manual_seed(0))
    check_budget(bpda, x, threat)
    assert accuracy(defended, bpda, y) < accuracy(defended, plain, y) - 0.15


@pytest.mark.slow
def test_gan_is_cached_and_a_corrupted_file_is_retrained(store, digits_model, defended, caplog):
    files = list((store / "generators").glob("defense-gan-digits-*.pt"))
    assert len(files) == 1 and file_sha256(files[0]) == networks.recorded_sha256(files[0])
    caplog.set_level(logging.INFO, logger="robustbench_karp.store.networks")
    networks.clear_memo()
    build_defense("defense-gan", {**TINY, "steps": 5}).wrap(digits_model, DIGITS)  # projection options: same GAN
    assert not any(r.getMessage().startswith("training") for r in caplog.records)
    files[0].write_bytes(files[0].read_bytes()[:100])
    networks.clear_memo()
    again = build_defense("defense-gan", TINY).wrap(digits_model, DIGITS)
    assert any(r.levelno == logging.WARNING and "corrupted" in r.getMessage() for r in caplog.records)
    assert file_sha256(files[0]) == networks.recorded_sha256(files[0])
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), defended.state_dict().values()))


def test_defense_delegates_training_to_its_base(digits_model, batch):
    x, y = batch
    defense, standard = build_defense("defense-gan"), build_defense("standard")
    threat, gen = ThreatModel("linf", 0.1), torch.Generator()
    assert defense.classifier_defense() == standard
    assert defense.recipe_for("mnist") == standard.recipe_for("mnist") and not defense.adversarial
    assert torch.equal(defense.loss(digits_model, x, y, threat, gen)[0], standard.loss(digits_model, x, y, threat, gen)[0])
    assert [a.name for a in defense.adaptive_attacks()] == ["transfer-pgd", "bpda-pgd"]
    assert build_defense("defense-gan", {"base": "fgsm-at"}).adversarial


@pytest.mark.parametrize("options, message", [
    ({"restarts": "0"}, r"restarts \(R\) must be >= 1, got 0"),
    ({"steps": "0"}, r"steps \(L\) must be >= 1, got 0"),
    ({"epochs": "0"}, "epochs must be >= 1"),
    ({"lr": "0"}, "lr must be a positive number"),
    ({"gan_lr": "-1e-4"}, "gan_lr must be a positive number"),
    ({"base": "defense-gan"}, "base must be another defense"),
])
def test_impossible_options_raise_value_error(options, message):
    with pytest.raises(ValueError, match=message):
        build_defense("defense-gan", options)


def test_unknown_base_lists_the_defenses():
    with pytest.raises(UnknownName, match="valid: .*standard"):
        build_defense("defense-gan", {"base": "nope"})
