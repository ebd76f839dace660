"""Certified lower bounds: exact where the answer is known, sound against strong attacks, tighter with CROWN,
refused in one line where they cannot apply, and cheaper evaluations for the points they prove."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustbench_karp.api import evaluate
from robustbench_karp.certification import UnsupportedOp, certify, margins
from robustbench_karp.certification.margins import SAFETY_ABSOLUTE, SAFETY_RELATIVE
from robustbench_karp.cli import main
from robustbench_karp.evaluation.batch import CertificationConflict
from robustbench_karp.models import Classifier, Normalize
from robustbench_karp.sources import new_model
from robustbench_karp.threat import ThreatModel, budget_tolerance


def tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
    return split.batch(torch.arange(len(split)))


@pytest.fixture(scope="module")
def linear_model(digits):
    """Flatten -> Linear, trained on the digits: the one network whose worst margin has a closed form."""
    x, y = tensors(digits[0])
    torch.manual_seed(0)
    model = Classifier(Normalize((0.5,), (0.25,)), nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def closed_form(model, x, y, eps):
    """(w_y - w_k) . c + (b_y - b_k) - |w_y - w_k| . r over the box [max(x - eps, 0), min(x + eps, 1)]."""
    linear = model.backbone[1]
    w = linear.weight.double() / 0.25  # the Normalize folded in: (x - 0.5) / 0.25
    b = linear.bias.double() - (linear.weight.double() * 0.5 / 0.25).sum(1)
    lo, hi = (x.double() - eps).clamp(0, 1).flatten(1), (x.double() + eps).clamp(0, 1).flatten(1)
    c, r = (lo + hi) / 2, (hi - lo) / 2
    d = w[y].unsqueeze(1) - w.unsqueeze(0)  # (B, K, 64)
    exact = (d * c.unsqueeze(1)).sum(-1) + (b[y].unsqueeze(1) - b) - (d.abs() * r.unsqueeze(1)).sum(-1)
    return exact.masked_fill(F.one_hot(y, 10).bool(), float("inf"))


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_both_methods_are_exact_on_a_linear_model(linear_model, digits, method):
    x, y = tensors(digits[1])
    x, y = x[:100], y[:100]
    for eps in (0.02, 0.1, 0.3):
        exact = closed_form(linear_model, x, y, eps)
        bound = margins(linear_model, x.double(), y, ThreatModel("linf", eps), method)
        finite = torch.isfinite(exact)
        assert (bound[finite] - exact[finite]).abs().max() < 1e-9
        cert = certify(linear_model, x, y, eps=eps, method=method)
        exact = closed_form(linear_model, x, y, eps + budget_tolerance(ThreatModel("linf", eps)))  # what attacks reach
        assert (cert.margin - exact.amin(1)).abs().max() < 1e-9
        scale = linear_model(x).abs().amax(1).double()
        worst = exact.amin(1)
        clear = (worst - (SAFETY_ABSOLUTE + SAFETY_RELATIVE * scale)).abs() > 1e-6  # off the safety margin's edge
        assert torch.equal(cert.certified[clear], (worst > SAFETY_ABSOLUTE + SAFETY_RELATIVE * scale)[clear])


def margin_pgd():
    return ("pgd", {"steps": 100, "restarts": 10, "loss": "margin"})


def square():
    return ("autoattack", {"steps": 100, "square_queries": 5000})


@pytest.mark.slow
@pytest.mark.parametrize("method,eps", [("ibp", 0.002), ("crown-ibp", 0.005)])  # where each certifies most points
def test_no_certified_point_of_a_trained_smallcnn_is_broken(digits_model, digits, method, eps):
    """PGD-100 x 10 restarts with the margin loss, then AutoAttack (Square at 5,000 queries), on every point:
    certified ones too (check_certified). Any break raises CertificationConflict, and the test fails."""
    x, y = tensors(digits[1])
    result = evaluate(digits_model, x[:40], y[:40], attacks=[margin_pgd(), square()], eps=eps, certify=method,
                      check_certified=True, device="cpu")
    assert result.certified_accuracy > 0.2


@pytest.mark.slow
def test_a_certifier_that_certifies_everything_is_caught(digits_model, digits, monkeypatch):
    """The mutant the soundness tests guard against: it must stop the evaluation, naming point, attack, margins."""
    from robustbench_karp import api
    from robustbench_karp.certification import Certificate

    x, y = tensors(digits[1])
    monkeypatch.setattr(api, "certify_points", lambda m, xb, yb, **kw: Certificate(
        torch.ones(len(xb), dtype=torch.bool), torch.ones(len(xb), dtype=torch.float64)))
    with pytest.raises(CertificationConflict, match=r"point \d+ .*certified by crown-ibp \(worst margin >= 1\) but pgd "
                                                    r"broke it \(margin -"):
        evaluate(digits_model, x[:40], y[:40], attacks=[margin_pgd()], eps=0.1, certify="crown-ibp",
                 check_certified=True, device="cpu")


@pytest.fixture(scope="module")
def certified_model(digits):
    """certcnn trained by the ibp defense for a few epochs on the digits (eps 0.1): a model built to certify."""
    from robustbench_karp.defenses import build_defense

    x, y = tensors(digits[0])
    torch.manual_seed(0)
    model = new_model("certcnn", "digits").train()
    defense = build_defense("ibp", {})
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    epochs = 30
    for epoch in range(epochs):
        ramp = min(1.0, epoch / (epochs / 2))
        for idx in torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch)).split(128):
            loss, _ = defense.loss(model, x[idx], y[idx], ThreatModel("linf", 0.1 * ramp), None, ramp=ramp)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.mark.slow
def test_the_certified_trained_model_is_sound_and_crown_is_at_least_as_tight(certified_model, digits):
    x, y = tensors(digits[1])
    ibp = certify(certified_model, x, y, eps=0.1, method="ibp")
    crown = certify(certified_model, x, y, eps=0.1, method="crown-ibp")
    assert crown.certified.sum() >= ibp.certified.sum() > 0.3 * len(y)
    assert (crown.margin >= ibp.margin - 1e-9).float().mean() > 0.95  # CROWN is tighter almost everywhere
    result = evaluate(certified_model, x[:40], y[:40], attacks=[margin_pgd(), square()], eps=0.1, certify="crown-ibp",
                      check_certified=True, device="cpu")
    assert result.certified_accuracy <= result.robust_accuracy


def test_l2_bounds_are_sound_against_l2_pgd(digits_model, digits):
    x, y = tensors(digits[1])
    result = evaluate(digits_model, x[:40], y[:40], attacks=[("pgd", {"steps": 50, "restarts": 3, "loss": "margin"})],
                      norm="l2", eps=0.005, certify="crown-ibp", check_certified=True, device="cpu")
    assert 0 < result.certified_accuracy <= result.robust_accuracy


def test_residual_networks_bound_with_ibp_and_crown():
    torch.manual_seed(0)
    model = new_model("resnet18", "digits").eval()
    x = torch.rand(3, 1, 8, 8)
    y = model(x).argmax(1)
    for method in ("ibp", "crown-ibp"):
        bound = margins(model, x.double(), y, ThreatModel("linf", 1e-7), method).amin(1)
        assert torch.isfinite(bound).all()


class Mixed(nn.Module):
    """Every supported layer kind in one network: conv, batch norm (negative scales), relu, a residual add,
    max and average pooling, flatten, linear."""

    def __init__(self):
        super().__init__()
        self.normalize = Normalize((0.5,), (0.25,))
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.MaxPool2d(2), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x):
        h = F.relu(self.bn(self.conv1(self.normalize(x))))
        return self.head(F.relu(self.conv2(h)) + h)


@pytest.fixture(scope="module")
def mixed():
    torch.manual_seed(0)
    model = Mixed()
    with torch.no_grad():
        model.bn.weight.copy_(torch.tensor([1.5, -0.7, 0.3, -2.0]))
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_bounds_through_every_layer_kind_are_exact_at_eps_0_and_sound_beyond(mixed, method):
    torch.manual_seed(1)
    x = torch.rand(16, 1, 8, 8)
    exact = copy.deepcopy(mixed).double()
    y = exact(x.double()).argmax(1)

    def worst(z):  # the true worst margin of each point, in float64
        logits = exact(z.double())
        return (logits.gather(1, y[:, None]) - logits).masked_fill(F.one_hot(y, 10).bool(), float("inf")).amin(1)

    at_zero = margins(mixed, x.double(), y, ThreatModel("linf", 0.0), method).amin(1)
    assert (at_zero - worst(x)).abs().max() < 1e-9
    eps = 0.03
    bound = margins(mixed, x.double(), y, ThreatModel("linf", eps), method).amin(1)
    assert (bound < at_zero).all()  # a ball costs margin
    for _ in range(50):  # random points and corners of the ball never go below the bound
        corner = torch.randint(0, 2, x.shape) * 2 - 1.0
        for delta in (corner * eps, (torch.rand_like(x) * 2 - 1) * eps):
            assert (worst((x + delta).clamp(0, 1)) >= bound - 1e-9).all()


@pytest.mark.parametrize("layer,named", [
    (nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), "padding_mode='reflect'"),
    (nn.Conv2d(1, 2, 3, padding="same"), "padding='same'"),
    (nn.BatchNorm2d(1, track_running_stats=False), "no running statistics"),
    (nn.AvgPool2d(2, divisor_override=3), "divisor_override=3"),
])
def test_options_the_bounds_do_not_model_are_refused_by_name(layer, named):
    model = Classifier(Normalize((0.5,), (0.25,)), nn.Sequential(layer, nn.Flatten(), nn.LazyLinear(10))).eval()
    x = torch.rand(2, 1, 8, 8)
    model(x)  # the lazy layer takes its shape
    with pytest.raises(UnsupportedOp, match=re.escape(named)) as caught:
        certify(model, x, torch.tensor([0, 1]), eps=0.1)
    assert "\n" not in str(caught.value)


class Scaled(nn.Module):
    def forward(self, x):
        return torch.add(x.flatten(1), x.flatten(1), alpha=2.0)


def test_an_add_with_alpha_is_refused():
    with pytest.raises(UnsupportedOp, match=r"alpha=2.0"):
        certify(Scaled(), torch.rand(2, 1, 2, 5), torch.tensor([0, 1]), eps=0.1)


def test_certification_runs_without_tf32_and_restores_it():
    from robustbench_karp.certification import exact_float32

    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with exact_float32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_an_unsupported_op_is_one_line_naming_it():
    model = new_model("stn", "digits").eval()
    with pytest.raises(UnsupportedOp, match="grid_sample") as caught:
        certify(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), eps=0.1)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("extra,message", [
    (["--model", "stn", "--certify", "ibp"], "grid_sample"),
    (["--defense", "defense-gan", "--defense-arg", "epochs=1", "--defense-arg", "train_size=64", "--certify", "ibp"],
     "does not apply"),
    (["--certify", "zonotope"], "invalid choice: 'zonotope' (choose from 'ibp', 'crown-ibp')"),
])
def test_bad_certification_requests_exit_2_writing_nothing(karp_home, digits_checkpoint, extra, message, capsys,
                                                           tmp_path):
    model = ["--model", "smallcnn", "--checkpoint", str(digits_checkpoint)] if "stn" not in extra else []
    args = ["evaluate", *model, "--n-examples", "20", "--attack", "fgsm", *extra]
    if "stn" in extra:
        torch.save(new_model("stn", "digits").state_dict(), tmp_path / "stn.pt")
        args += ["--checkpoint", str(tmp_path / "stn.pt")]
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own refusal (an unknown method): one line, exit 2
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (karp_home / "results.sqlite").exists() or main(["records", "list"]) == 0 and \
        "no records" in capsys.readouterr().out


def test_certified_points_skip_the_attacks_and_the_record_says_so(karp_home, digits_checkpoint, capsys):
    args = ["evaluate", "--model", "smallcnn", "--checkpoint", str(digits_checkpoint), "--n-examples", "100",
            "--eps", "0.004", "--attack", "pgd", "--attack-arg", "steps=20", "--json"]
    assert main([*args, "--certify", "crown-ibp"]) == 0
    certified = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert certified["config"]["certify"] == "crown-ibp" and "certify" not in plain["config"]
    mask = certified["certified_mask"]
    assert certified["certified_accuracy"] == mask.count("1") / 100 > 0
    assert all(r == "1" for c, r in zip(mask, certified["robust_mask"]) if c == "1")  # certified points are robust
    # every point the plain run left robust and the certified run did not certify went through the same attack
    attacked = certified["cost"]["per_attack"]["pgd"]["attacked_points"]
    assert attacked == plain["cost"]["per_attack"]["pgd"]["attacked_points"] - mask.count("1")
    info = certified["certification"]
    assert info["method"] == "crown-ibp" and info["bounds"] == "float64" and info["certified_points"] == mask.count("1")
    assert info["saved_forward_passes"] == mask.count("1") * 20 and info["seconds"] > 0
    # a certified record re-runs certified: the same id, numbers and all three masks
    assert main(["reproduce", certified["id"]]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "certified_mask" in out and "certified_accuracy" in out and "MISMATCH" not in out


def test_checking_certified_points_saves_nothing_and_says_so():
    from types import SimpleNamespace

    from robustbench_karp.attacks import build_attack
    from robustbench_karp.evaluation.certified import certified_fields
    from robustbench_karp.evaluation.engine import EvalResult

    result = EvalResult(4, 1.0, 0.5, {"pgd": 0.5}, [True] * 4, [True, True, False, False], 1.0, [],
                        certified=[True, True, False, False])
    attacks = [build_attack("pgd", {"steps": 10})]
    for checked, saved in ((False, 2 * attacks[0].forward_budget()), (True, 0)):
        plan = SimpleNamespace(attacks=attacks, config=SimpleNamespace(certify="crown-ibp"), check_certified=checked)
        fields = certified_fields(result, plan)["certification"]
        assert fields["saved_forward_passes"] == saved and fields.get("check_certified", False) == checked


def test_a_wide_bracket_is_flagged_on_a_certified_trained_model_up_to_its_training_eps():
    from robustbench_karp.evaluation.certified import bracket_warning
    from robustbench_karp.evaluation.engine import EvalResult

    # 10 points: 8 survive the attacks, 5 certified, so the bracket is 30 points wide
    result = EvalResult(n_examples=10, clean_accuracy=1.0, robust_accuracy=0.8, per_attack={"pgd": 0.8},
                        clean=[True] * 10, robust=[True] * 8 + [False] * 2, elapsed_seconds=1.0,
                        certified=[True] * 5 + [False] * 5)
    (warning,) = bracket_warning(result, {"name": "ibp"}, eps=0.3, trained_eps=0.3)
    assert "attacked 80.0%, certified 50.0%" in warning and "ibp" in warning
    assert bracket_warning(result, {"name": "crown-ibp"}, eps=0.1, trained_eps=0.3)  # inside its training eps
    assert bracket_warning(result, {"name": "ibp"}, eps=0.2, trained_eps=0.1) == []  # beyond it: expected
    assert bracket_warning(result, {"name": "pgd-at"}, eps=0.3, trained_eps=0.3) == []  # not trained for it
    narrow = EvalResult(**{**result.__dict__, "certified": [True] * 7 + [False] * 3})
    assert bracket_warning(narrow, {"name": "ibp"}, eps=0.3, trained_eps=0.3) == []  # 10 points apart: not more
