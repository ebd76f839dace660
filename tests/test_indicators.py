"""The attack-failure indicators: each one fired by a model built to trip it, and quiet on a plain model.

Fast: a nearest-centroid linear classifier of the 8x8 digits (no training), 48 test points, short attacks.
"""

import json

import pytest
import torch
from conftest import Noisy, Purified, Quantize
from torch import nn

from robustbench_karp.api import evaluate
from robustbench_karp.attacks import build_attack
from robustbench_karp.data import DATASETS, load_split
from robustbench_karp.evaluation import indicator_rules, indicators
from robustbench_karp.evaluation.engine import EvalResult
from robustbench_karp.evaluation.indicator_rules import NAMES, cascade_indicators, summary_line
from robustbench_karp.threat.trace import AscentTrace


@pytest.fixture(scope="module")
def digits_points():
    spec = DATASETS.get("digits")
    train, test = load_split(spec, train=True), load_split(spec, train=False)
    x, y = train.batch(torch.arange(len(train)))
    means = torch.stack([x[y == c].flatten(1).mean(0) for c in range(10)])  # (10, 64)
    layer = nn.Linear(64, 10)
    with torch.no_grad():  # logits -|x - mean|^2 + |x|^2: the nearest class mean wins (about 92% on these points)
        layer.weight.copy_(2 * means)
        layer.bias.copy_(-(means ** 2).sum(1))
    return nn.Sequential(nn.Flatten(), layer).eval(), *test.batch(torch.arange(48))


class Bump(nn.Module):
    """Class 1 wins only while the mean pixel is within 0.1 of 0.5: steps of 0.25 from 0.3 jump in and out."""

    def forward(self, x):
        f = 1 - 100 * (x.flatten(1).mean(1) - 0.5) ** 2
        return torch.stack([torch.zeros_like(f), f], 1)


def run(model, x, y, attacks, eps):
    out = evaluate(model, x, y, attacks=attacks, eps=eps, device="cpu")
    assert list(out.indicators) == list(NAMES)  # every indicator, computed or saying why, never an error
    for ind in out.indicators.values():
        assert ind["value"] is not None or ind["why"]
    return out.indicators


def test_a_plain_model_under_a_full_attack_leaves_every_indicator_quiet(digits_points):
    model, x, y = digits_points
    found = run(model, x, y, [("pgd", {"steps": 40}), "fgsm"], eps=0.1)
    assert indicator_rules.fired(found) == []
    for name in ("unavailable-gradients", "unstable-predictions", "silent-success", "unconstrained-failure",
                 "single-step-beats-multi-step"):
        assert found[name]["value"] == 0.0 and found[name]["points"] > 0, name
    assert found["more-iterations-help"]["why"].startswith("not run: pgd's running-best loss was flat at the end")
    assert 0 <= found["incomplete-optimization"]["value"] < 0.01 and found["incomplete-optimization"]["points"] > 10
    assert "no surrogate" in found["transfer-failure"]["why"]
    assert "no black-box attack" in found["black-box-beats-white-box"]["why"]


def test_a_quantized_input_fires_unavailable_gradients_unconstrained_and_transfer_failure(digits_points):
    model, x, y = digits_points
    found = run(Purified(Quantize(1), model).eval(), x, y, [("pgd", {"steps": 20})], eps=0.1)
    assert found["unavailable-gradients"]["fired"] and found["unavailable-gradients"]["value"] == 1.0
    assert found["unconstrained-failure"]["fired"]
    assert found["transfer-failure"]["fired"]  # PGD on the classifier alone breaks points PGD on the whole missed
    quiet = run(Purified(nn.Identity(), model).eval(), x, y, [("pgd", {"steps": 40})], eps=0.1)
    assert not quiet["transfer-failure"]["fired"] and quiet["transfer-failure"]["points"] > 10


def test_noise_at_inference_fires_unstable_predictions_unless_eot_ran(digits_points):
    model, x, y = digits_points
    with torch.random.fork_rng():
        torch.manual_seed(0)
        found = run(Noisy(model, sigma=0.1).eval(), x, y, [("pgd", {"steps": 10})], eps=0.1)
        assert found["unstable-predictions"]["fired"] and found["unstable-predictions"]["random_points"] > 40
        eot = indicators.unstable_predictions(Noisy(model, sigma=0.1).eval(), x, y, build_threat(0.1), [build_attack("eot-pgd")])
    assert eot["random_points"] == 0  # randomness an EOT attack averages over is not a failure


def build_threat(eps):
    from robustbench_karp.threat import ThreatModel

    return ThreatModel("linf", eps)


def test_an_iterate_lost_by_the_last_iterate_fires_silent_success_and_early_stop_never_does():
    x = (0.3 + 0.001 * torch.arange(8)).view(8, 1, 1, 1).expand(8, 1, 4, 4).contiguous()
    y = torch.zeros(8, dtype=torch.long)
    last = dict(steps=20, step_size=0.25, random_start=False)
    found = run(Bump(), x, y, [("pgd", {**last, "early_stop": False})], eps=0.3)
    assert found["silent-success"]["fired"] and found["silent-success"]["value"] == 1.0
    kept = run(Bump(), x, y, [("pgd", {**last, "early_stop": True})], eps=0.3)
    assert kept["silent-success"]["value"] == 0.0 and kept["silent-success"]["points"] == 8  # the check ran, on all 8


def test_a_pgd_stopped_while_its_loss_rises_fires_incomplete_optimization_and_more_iterations(digits_points):
    model, x, y = digits_points
    found = run(model, x, y, [("pgd", {"steps": 10, "step_size": 0.003})], eps=0.1)  # 0.03 of its 0.1: still far
    assert found["incomplete-optimization"]["fired"] and found["incomplete-optimization"]["value"] > 0.05
    assert found["more-iterations-help"]["fired"] and found["more-iterations-help"]["steps"] == 10
    short = run(model, x, y, [("pgd", {"steps": 3, "step_size": 0.002})], eps=0.1)
    assert "fewer than 10 steps" in short["incomplete-optimization"]["why"]


def test_a_single_step_attack_after_a_weak_multi_step_one_fires_its_indicator(digits_points):
    model, x, y = digits_points
    found = run(model, x, y, [("pgd", {"steps": 10, "step_size": 0.0005}), "fgsm"], eps=0.1)
    ind = found["single-step-beats-multi-step"]
    assert ind["fired"] and ind["attack"] == "fgsm" and ind["points"] == 48


def test_cascade_rules_against_a_hand_computation():
    per_attack = {"pgd": 0.50, "fgsm": 0.45, "autoattack/square": 0.40}
    out = cascade_indicators(0.9, per_attack, list(per_attack), {"fgsm"}, {"autoattack/square"}, 100)
    assert out["single-step-beats-multi-step"] == {"fired": True, "value": pytest.approx(0.05), "threshold": 0.0,
                                                   "points": 100, "attack": "fgsm"}
    assert out["black-box-beats-white-box"]["fired"] and out["black-box-beats-white-box"]["value"] == pytest.approx(0.05)
    quiet = cascade_indicators(0.9, {"fgsm": 0.6, "pgd": 0.5}, ["fgsm", "pgd"], {"fgsm"}, set(), 100)
    assert "no single-step attack ran after a multi-step one" in quiet["single-step-beats-multi-step"]["why"]
    same = cascade_indicators(0.9, {"pgd": 0.5, "fgsm": 0.5, "square": 0.5}, ["pgd", "fgsm", "square"], {"fgsm"},
                              {"square"}, 100)
    assert same["single-step-beats-multi-step"]["fired"] is False and same["black-box-beats-white-box"]["value"] == 0
    assert same["black-box-beats-white-box"]["fired"] is False and same["black-box-beats-white-box"]["points"] == 100
    result = EvalResult(n_examples=100, clean_accuracy=0.9, robust_accuracy=0.45, per_attack={"pgd": 0.5, "square": 0.45},
                        clean=[], robust=[], elapsed_seconds=0.0)
    real = indicators.from_cascade(result, [build_attack("pgd"), build_attack("square")], ["pgd", "square"])
    assert real["black-box-beats-white-box"]["fired"]  # the attacks' own flags say which is black-box


def test_the_trace_rise_is_the_scaled_running_best_over_the_last_tenth():
    trace = AscentTrace()
    steps = torch.arange(20, dtype=torch.float32)
    best = torch.stack([steps, torch.minimum(steps, torch.tensor(10.0)), torch.zeros(20)], 1)  # (steps, 3 rows)
    trace._add_rises(best)
    # row 0 rises linearly 0..19: over the last 2 steps it rose (19 - 17) / 19; row 1 flattened at step 10; row 2 flat
    assert trace.traced == 3 and trace.rise == pytest.approx(2 / 19) and trace.rising == 1


def test_a_mutant_that_never_fires_fails_the_tests(digits_points, monkeypatch):
    model, x, y = digits_points
    real = indicator_rules.indicator
    monkeypatch.setattr(indicator_rules, "indicator", lambda *a, **k: {**real(*a, **k), "fired": False})
    monkeypatch.setattr(indicators, "indicator", indicator_rules.indicator)
    with pytest.raises(AssertionError):
        test_a_quantized_input_fires_unavailable_gradients_unconstrained_and_transfer_failure(digits_points)
    with pytest.raises(AssertionError):
        test_cascade_rules_against_a_hand_computation()


def test_summary_line_names_the_fired_ones():
    assert list(indicator_rules.MEASURES) == list(NAMES)  # every indicator says what its value measures
    found = {"silent-success": {"fired": True, "value": 0.25, "threshold": 0.0, "points": 8},
             "incomplete-optimization": {"fired": False, "value": 0.01, "threshold": 0.05, "points": 30},
             "transfer-failure": {"fired": False, "value": None, "threshold": 0.0, "points": 0, "why": "no surrogate"}}
    assert summary_line(found) == ("indicators: fired: silent-success (0.25 > 0); 1 quiet, 1 not computed "
                                   "(docs/indicators.md)")
    assert summary_line({k: {**v, "fired": False} for k, v in found.items() if v["value"] is not None}).startswith(
        "indicators: none fired; 2 quiet")


def test_records_carry_indicators_verify_rederives_them_and_old_records_still_read(digits_points, karp_home):
    from robustbench_karp.boards.verify import record_problems
    from robustbench_karp.store import config_hash
    from robustbench_karp.store.records import migrate

    model, _, _ = digits_points
    out = evaluate(model, dataset="digits", model_name="centroid", n_examples=40,
                   attacks=[("pgd", {"steps": 10}), "fgsm"], eps=0.1, store=True, device="cpu")
    record = json.loads(json.dumps(out.record))
    assert record["indicators"] == out.indicators and list(record["indicators"]) == list(NAMES)
    assert config_hash(record["config"]) == record["id"]  # a result field: the id is the config's hash alone
    assert record_problems(record) == []
    tampered = json.loads(json.dumps(record))
    tampered["indicators"]["single-step-beats-multi-step"]["fired"] = True
    tampered["indicators"]["single-step-beats-multi-step"]["value"] = 0.5
    assert any("indicator single-step-beats-multi-step" in p for p in record_problems(tampered))
    old = {k: v for k, v in record.items() if k != "indicators"}
    assert migrate(old)["id"] == record["id"] and "indicators" not in migrate(old)
    assert record_problems(migrate(old)) == []


def test_evaluate_ends_with_one_indicator_line(digits_points, karp_home, capsys):
    from robustbench_karp.cli.evaluate import print_record

    model, _, _ = digits_points
    record = evaluate(model, dataset="digits", model_name="centroid", n_examples=40,
                      attacks=[("pgd", {"steps": 10, "step_size": 0.002})], eps=0.1, store=True, device="cpu").record
    print_record(record)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("indicators: fired: incomplete-optimization (") and lines[-1].startswith("record ")
    assert "warning: incomplete-optimization: rise of the scaled running-best loss" in "\n".join(lines)  # its flag
    print_record({k: v for k, v in record.items() if k != "indicators"})  # an older record: no line, no error
    assert not any(line.startswith("indicators:") for line in capsys.readouterr().out.splitlines())
