"""The torchattacks adapter substitutes nothing silently: norms, eps, projection and the CLI shorthands.

A class of another norm is an error (at build, bind and call); a bounded class's output reaches the
engine's budget check unprojected; a minimum-norm class is projected and says so in its config;
--steps/--step-size/--restarts reach a class under its own parameter names. A tiny linear model on
random 3x8x8 images keeps the file to a few seconds.
"""

import pytest
import torch
import torchattacks
from torch import nn

from robustbench_karp.api import evaluate
from robustbench_karp.attacks import build_attack
from robustbench_karp.attacks.base import attack_from_config
from robustbench_karp.attacks.torchattacks_adapter import NORMS, TorchAttack, derive_seed, torchattacks_names
from robustbench_karp.cli import main
from robustbench_karp.cli.evaluate import parse_attacks
from robustbench_karp.cli.parser import build_parser
from robustbench_karp.evaluation.engine import predict, run_attacks
from robustbench_karp.threat import BudgetViolation, ThreatModel, check_budget
from robustbench_karp.threat.context import RunContext

LINF, L2 = ThreatModel("linf", 0.1), ThreatModel("l2", 0.5)


@pytest.fixture(scope="module")
def model():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()


@pytest.fixture(scope="module")
def batch(model):
    """(16, 3, 8, 8) images in [0, 1] labelled with the model's own predictions: every point starts correct."""
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return x, predict(model, x)


def bound(name, threat, options=None):
    return build_attack(name, options).bind(RunContext(dataset="digits", model="smallcnn", threat=threat))


def run(attack, model, batch, threat):
    x, y = batch
    return attack(model, x, y, threat, torch.Generator().manual_seed(0))


def test_every_exposed_class_has_a_norm_in_the_table():
    assert set(NORMS) == set(torchattacks_names())


@pytest.mark.parametrize("name,norm", [("torchattacks:CW", "L2"), ("torchattacks:PGDL2", "L2"), ("torchattacks:PGD", "Linf"),
                                       ("torchattacks:DeepFool", "L2")])
def test_another_norm_is_an_error_at_bind_and_on_call(name, norm, model, batch):
    threat = L2 if norm == "Linf" else LINF
    message = f"{name} attacks the {norm} norm but this run's threat model is {threat.norm.value}; use --norm {norm.lower()}"
    with pytest.raises(ValueError, match=message):
        bound(name, threat)
    with pytest.raises(ValueError, match=message):
        run(build_attack(name), model, batch, threat)  # never bound: refused on call


@pytest.mark.parametrize("name,options,message", [
    ("torchattacks:JSMA", {}, "L0 norm, which no threat model here has"),
    ("torchattacks:EADL1", {}, "L1 norm, which no threat model here has"),
    ("torchattacks:GN", {}, "no norm"),
    ("torchattacks:FAB", {"norm": "L1"}, "L1 norm, which no threat model here has")])
def test_norms_no_threat_model_has_are_refused_when_built(name, options, message):
    with pytest.raises(ValueError, match=message):
        build_attack(name, options)


def test_a_norm_argument_must_match_the_run():
    assert build_attack("torchattacks:APGD", {"norm": "l2"}).kwargs == (("norm", "L2"),)  # torchattacks' spelling
    with pytest.raises(ValueError, match="torchattacks:APGD attacks the L2 norm but this run's threat model is linf"):
        bound("torchattacks:APGD", LINF, {"norm": "L2"})
    bound("torchattacks:APGD", L2, {"norm": "L2"})


@pytest.mark.parametrize("name,norm", [("torchattacks:PGD", "linf"), ("torchattacks:FGSM", "linf"), ("torchattacks:PGDL2", "l2"),
                                       ("torchattacks:APGD", "linf"), ("torchattacks:APGD", "l2"), ("torchattacks:Square", "l2")])
def test_bounded_attacks_are_not_projected_and_stay_inside_the_ball(name, norm, model, batch):
    threat = LINF if norm == "linf" else L2
    attack = bound(name, threat, {"n_queries": "50"} if "Square" in name else {})
    assert "projected" not in attack.config()
    x_adv = run(attack, model, batch, threat)
    check_budget(x_adv, batch[0], threat)  # torchattacks' own clipping, within the check's 1e-6
    assert (predict(model, x_adv) != batch[1]).any()  # it attacked


def test_bounded_output_is_torchattacks_own(model, batch):
    """PGDL2's output is exactly what torchattacks returns with the same seed: no projection in between."""
    x, y = batch
    x_adv = run(bound("torchattacks:PGDL2", L2), model, batch, L2)
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(torch.Generator().manual_seed(0)))
        reference = torchattacks.PGDL2(model, eps=L2.eps)(x, y)
    assert torch.equal(x_adv, reference)


def test_larger_eps_is_refused_at_bind_and_caught_by_the_budget_check(model, batch):
    attack = build_attack("torchattacks:PGD", {"eps": "0.3", "steps": "3"})
    with pytest.raises(ValueError, match=r"torchattacks:PGD eps=0.3 exceeds this run's linf eps 0.1"):
        attack.bind(RunContext(dataset="digits", model="smallcnn", threat=LINF))
    bound("torchattacks:PGD", LINF, {"eps": "0.05"})  # a smaller ball is inside the run's: allowed
    x, y = batch
    with pytest.raises(ValueError, match="exceeds this run's linf eps 0.1"):  # the library binds, as the CLI does
        evaluate(model, x, y, attacks=[attack], norm="linf", eps=0.1, device="cpu")
    with pytest.raises(BudgetViolation, match="exceeds linf eps"):  # an unbound attack in the engine: the check raises
        run_attacks(model, [(x, y)], [attack], LINF, torch.Generator().manual_seed(0), torch.device("cpu"))


def test_minimum_norm_attacks_are_projected_and_say_so(model, batch):
    threat = ThreatModel("l2", 0.05)
    x, y = batch
    attack = bound("torchattacks:CW", threat, {"steps": "20", "c": "10"})
    assert attack.config()["projected"] is True
    assert attack_from_config(attack.config()) == attack  # the record still rebuilds it
    raw = torchattacks.CW(model, steps=20, c=10)(x, y)
    assert (threat.distance(raw, x) > threat.eps + 1e-3).any()  # CW alone leaves this small ball
    check_budget(run(attack, model, batch, threat), x, threat)


def parse(*argv):
    return parse_attacks(build_parser().parse_args(["evaluate", *argv]))


def test_shorthands_reach_torchattacks_under_their_own_names():
    (pgd,) = parse("--attack", "torchattacks:PGD", "--steps", "3", "--step-size", "0.01")
    assert dict(pgd.kwargs) == {"steps": 3, "alpha": 0.01}
    (apgd,) = parse("--norm", "l2", "--attack", "torchattacks:APGD", "--steps", "4", "--restarts", "2")
    assert dict(apgd.kwargs) == {"steps": 4, "n_restarts": 2}
    (pgd,) = parse("--attack", "torchattacks:PGD", "--attack-arg", "alpha=0.02", "--step-size", "0.01")
    assert dict(pgd.kwargs) == {"alpha": 0.02}  # --attack-arg wins over the shorthand, as for our attacks
    pgd, apgd = parse("--attack", "pgd", "--attack", "torchattacks:APGD", "--step-size", "0.01", "--restarts", "2")
    assert (pgd.step_size, pgd.restarts, dict(apgd.kwargs)) == (0.01, 2, {"n_restarts": 2})  # APGD's step is adaptive


@pytest.mark.parametrize("argv,message", [
    (["--attack", "torchattacks:FGSM", "--steps", "3"], "--steps: none of the attacks torchattacks:FGSM has it"),
    (["--attack", "torchattacks:APGD", "--step-size", "0.01"], "--step-size: none of the attacks torchattacks:APGD has it"),
    (["--attack", "torchattacks:PGD", "--restarts", "2"], "--restarts: none of the attacks torchattacks:PGD has it")])
def test_shorthands_fail_clearly_for_a_class_without_them(argv, message):
    with pytest.raises(ValueError, match=message):
        parse(*argv)


def test_cli_refuses_another_norm_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KARP_HOME", str(tmp_path))
    assert main(["evaluate", "--model", "smallcnn", "--attack", "torchattacks:CW"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["karp-robust: error: torchattacks:CW attacks the L2 norm but this run's threat model is linf; "
                   "use --norm l2"]
    assert not any(tmp_path.iterdir())  # nothing trained, nothing stored
    assert isinstance(parse("--norm", "l2", "--attack", "torchattacks:CW")[0], TorchAttack)
