"""The `strong` cascade (attacks/strong.py): its named components, its black-box safety net, its escalations and
the record's account of them, the ball, determinism, MALT's target order, and the refusal of < 4 classes.

Tiny models on the digits with reduced budgets (FAST): an MLP trained in about a second, the same behind a
4-level quantizer (input gradient zero everywhere: only the black-box parts can break a point), and the same with
noise at inference (predictions change between identical calls)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch
from conftest import Noisy, Purified, Quantize
from torch import nn

from robustbench_karp.attacks import build_attack
from robustbench_karp.attacks.apgd_rows import malt_order
from robustbench_karp.attacks.base import Attack, margin, run_cascade
from robustbench_karp.attacks.strong import (
    GRADIENT_SHARE,
    SQUARE_MIN_POINTS,
    SQUARE_SHARE,
    Nearest,
    Others,
    probe_gradients,
    probe_randomness,
    square_break_share,
)
from robustbench_karp.evaluation.cost import count_passes
from robustbench_karp.evaluation.engine import run_attacks
from robustbench_karp.threat import ThreatModel, check_budget

FAST = {"steps": 10, "odi_steps": 1, "target_steps": 10, "targets": 3, "near_queries": 60, "square_queries": 30,
        "escalated_queries": 100, "escalated_restarts": 1, "eot_samples": 2}
BASE = ["strong/apgd-ce", "strong/apgd-t", "strong/square-near", "strong/square"]
ESCALATIONS = ["strong/eot-pgd", "strong/square+", "strong/autoattack/apgd-ce", "strong/autoattack/apgd-t",
               "strong/autoattack/fab-t", "strong/autoattack/square"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mlp(digits_mlp):
    return digits_mlp


@pytest.fixture(scope="module")
def quantized(mlp):
    return Purified(Quantize(4), mlp).eval()


@pytest.fixture(scope="module")
def points(digits):
    _, test = digits
    return test.batch(torch.arange(48))


def strong(**options):
    return build_attack("strong", {**FAST, **options})


def evaluate(model, points, attack, eps=0.15, seed=0):
    x, y = points
    return run_attacks(model, [(x, y)], [attack], ThreatModel("linf", eps), torch.Generator().manual_seed(seed), CPU)


def test_plain_model_components_named_in_order_and_nothing_escalates(mlp, points):
    result = evaluate(mlp, points, strong(), eps=0.1)
    assert list(result.per_attack) == BASE + ESCALATIONS
    assert result.escalations == []  # a plain model: the white-box attacks leave Square nothing
    assert result.per_attack["strong/apgd-t"] < result.clean_accuracy
    assert result.robust_accuracy == result.per_attack["strong/square"]
    spent = result.cost["per_attack"]
    assert all(spent[name]["attacked_points"] == 0 for name in ESCALATIONS)  # only their probes ran
    probed = min(16, round(result.robust_accuracy * result.n_examples))  # the gradient probe's rows, decided once
    assert spent["strong/autoattack/apgd-ce"]["backward_passes"] == probed
    assert sum(spent[name]["forward_passes"] for name in ESCALATIONS[2:]) == probed


def test_the_safety_net_breaks_what_masked_gradients_hide(quantized, points):
    result = evaluate(quantized, points, strong(escalate=False))
    assert list(result.per_attack) == BASE
    white_box = result.per_attack["strong/apgd-t"]
    assert white_box >= result.clean_accuracy - 0.05  # zero gradients: APGD is as good as its random start
    assert result.per_attack["strong/square"] <= white_box - 0.1  # Square breaks what they could not
    # the net runs on every standing point: it breaks points the nearest fifth's Square never looked at
    assert result.per_attack["strong/square"] <= result.per_attack["strong/square-near"] - 0.05


def test_escalation_breaks_what_the_base_cascade_missed_and_says_why(quantized, points):
    result = evaluate(quantized, points, strong())
    n, acc = result.n_examples, result.per_attack
    assert result.robust_accuracy < acc["strong/square"] - 0.1  # the escalations broke points the base cascade left
    by_component = {e["component"]: e for e in result.escalations}
    square = by_component["strong/square+"]
    near = result.cost["per_attack"]["strong/square-near"]["attacked_points"]
    net = round(acc["strong/apgd-t"] * n) - near  # the net: every standing point strong/square-near left alone
    assert result.cost["per_attack"]["strong/square"]["attacked_points"] == net and near > 0
    attacked, broken = near + net, round((acc["strong/apgd-t"] - acc["strong/square"]) * n)  # both Squares
    assert (square["rule"], square["batch"], square["points"]) == ("square-finds-points", 0, attacked)
    assert square["value"] == pytest.approx(broken / attacked) and square["threshold"] == SQUARE_SHARE
    for name in ESCALATIONS[2:]:  # the whole of AutoAttack, because the input gradient is zero
        assert (by_component[name]["rule"], by_component[name]["value"]) == ("unavailable-gradients", 1.0)
    assert "strong/eot-pgd" not in by_component  # the quantized model is deterministic


def test_unstable_predictions_escalate_to_eot(mlp, points):
    result = evaluate(Noisy(mlp).eval(), points, strong(square_queries=5), eps=0.05)
    fired = {e["component"]: e for e in result.escalations}
    assert fired["strong/eot-pgd"]["rule"] == "unstable-predictions" and fired["strong/eot-pgd"]["value"] == 1.0
    assert result.cost["per_attack"]["strong/eot-pgd"]["backward_passes"] > 0


def test_rules_fire_on_their_evidence_and_stay_quiet_otherwise(mlp, quantized, points):
    x, y = points
    assert not probe_gradients(mlp, x, y, {}, "")["fired"]
    assert probe_gradients(quantized, x, y, {}, "")["value"] == 1.0 > GRADIENT_SHARE
    assert probe_randomness(Noisy(mlp).eval(), x, y, {}, "")["fired"]
    assert not probe_randomness(mlp, x, y, {}, "")["fired"]

    def square(attacked, broken):
        return square_break_share(None, x, y, {"counts": {"s": {"attacked": attacked, "broken": broken}}}, "s")
    assert square(100, 3)["fired"] and square(100, 3)["value"] == 0.03
    assert not square(100, 2)["fired"]  # 2% is not above the threshold
    assert not square(20, SQUARE_MIN_POINTS - 1)["fired"]  # one lucky query in a small batch
    assert not square_break_share(None, x, y, {"counts": {}}, "s")["fired"]  # Square never ran
    both = {"counts": {"a": {"attacked": 20, "broken": 1}, "b": {"attacked": 80, "broken": 2}}}
    assert square_break_share(None, x, y, both, "a,b")["value"] == 0.03  # strong's two Squares, summed
    assert square_break_share(None, x, y, both, "a,b")["fired"] and not square_break_share(None, x, y, both, "a")["fired"]


@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.15), ThreatModel("l2", 1.0)], ids=["linf", "l2"])
def test_every_example_in_the_ball_and_deterministic_under_a_seed(quantized, points, threat):
    x, y = points
    attack = strong(escalated_queries=30)
    first = attack(quantized, x, y, threat, torch.Generator().manual_seed(3))
    again = attack(quantized, x, y, threat, torch.Generator().manual_seed(3))
    check_budget(first, x, threat)
    assert 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, again)
    assert (quantized(first).argmax(1) != y).sum() > (quantized(x).argmax(1) != y).sum()


def test_sharded_batches_give_the_same_masks(quantized, points):
    """Decisions are per batch: two batches run apart equal the same two batches run in one evaluation."""
    x, y = points
    threat, attack = ThreatModel("linf", 0.15), strong(escalated_queries=30)
    both = run_attacks(quantized, [(x[:24], y[:24]), (x[24:], y[24:])], [attack], threat,
                       torch.Generator().manual_seed(0), CPU)
    first = run_attacks(quantized, [(x[:24], y[:24])], [attack], threat, torch.Generator().manual_seed(0), CPU)
    assert both.robust[:24] == first.robust
    assert [e for e in both.escalations if e["batch"] == 0] == first.escalations


def test_malt_order_is_the_linearized_distance_to_each_target(mlp, points):
    x, y = points[0][:6], points[1][:6]
    with torch.no_grad():
        logits = mlp(x)
    order = malt_order(mlp, x, y, logits, dual_p=1.0)
    for i in range(len(x)):
        scores = {}
        for t in range(10):
            if t == y[i]:
                continue
            xi = x[i: i + 1].clone().requires_grad_(True)
            z = mlp(xi)[0]
            (g,) = torch.autograd.grad(z[t] - z[y[i]], xi)
            scores[t] = float((logits[i].max() - logits[i, t]) / g.abs().sum())
        assert order[i].tolist() == sorted(scores, key=scores.get)


def test_forward_budget_bounds_the_base_cascade(points):
    class Unbreakable(nn.Module):  # class 9 by a margin no input in [0, 1] can close: every part runs to its end
        def forward(self, x):
            return torch.cat([1e-3 * x.flatten(1)[:, :9], torch.full((len(x), 1), 5.0)], dim=1)

    x, y = points[0][:10], torch.full((10,), 9)  # the nearest fifth: 2 points, exactly the budget's share
    attack = strong(escalate=False)
    model = Unbreakable()
    with count_passes(model) as passes:
        attack(model, x, y, ThreatModel("linf", 0.1), torch.Generator().manual_seed(0))
    per_point = passes.forward / len(x) - 5  # less the clean prediction and the four checks of what stands
    assert 0.8 * attack.forward_budget() <= per_point <= attack.forward_budget()


def test_fewer_than_four_classes_is_a_one_line_error(points):
    x, y = points
    three = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    y = y % 3
    with pytest.raises(ValueError, match="at least 4 classes") as err:
        evaluate(three, (x, y), strong())
    assert "\n" not in str(err.value)


def test_the_record_says_what_escalated_and_evaluate_prints_it(quantized, karp_home, capsys):
    from robustbench_karp.api import evaluate as api_evaluate
    from robustbench_karp.cli.evaluate import print_record
    from robustbench_karp.store.records import migrate

    result = api_evaluate(quantized, attacks=[strong(escalated_queries=30)], eps=0.15, dataset="digits",
                          n_examples=24, batch_size=12, store=True, model_name="quantized-mlp", device="cpu")
    record = result.record
    assert record["escalations"] == result.escalations and {e["batch"] for e in record["escalations"]} == {0, 1}
    assert {"component", "rule", "value", "threshold", "points"} <= set(record["escalations"][0])
    print_record(migrate(record))
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("escalated: ")]
    assert len(line) == 1 and "strong/autoattack/apgd-ce on 2 batch(es) (unavailable-gradients 1 > 0.1)" in line[0]
    old = {k: v for k, v in record.items() if k != "escalations"}  # a record from before escalations
    assert migrate(old)["id"] == record["id"]
    print_record(migrate(old))
    assert "escalated" not in capsys.readouterr().out


# --- strong/square-near: Square's large budget on the standing points nearest the boundary (attacks/strong.py Nearest)

@dataclass(frozen=True)
class Unmoved(Attack):
    """Returns x: the margins the engine keeps for each point are its clean margins."""

    def __call__(self, model, x, y, threat, gen):
        return x.clone()


@dataclass(frozen=True)
class Spy(Attack):
    """Returns x, and keeps the rows it was given."""

    seen: list = field(default_factory=list, compare=False)

    def __call__(self, model, x, y, threat, gen):
        self.seen.append(x.clone())
        return x.clone()


@dataclass(frozen=True)
class Focused(Attack):
    spy: Spy = field(default_factory=Spy)
    rest: Spy = field(default_factory=Spy)

    def components(self):
        return [("t/unmoved", Unmoved()), ("t/near", Nearest(self.spy, 0.25)), ("t/rest", Others(self.rest, "t/near"))]


def test_nearest_attacks_the_quarter_of_standing_points_of_highest_margin_and_the_net_the_others(mlp, points):
    """Through the engine and through run_cascade: the points it gets are the ceil(n / 4) clean-correct points whose
    margin (best other logit - true) at the earlier components' x_adv is highest, here the clean margin."""
    x, y = points
    with torch.no_grad():
        m = margin(mlp(x), y)
    standing = (m < 0).nonzero().squeeze(1)
    nearest = standing[m[standing].argsort(descending=True)[:math.ceil(len(standing) / 4)]].sort().values
    attack = Focused()
    result = run_attacks(mlp, [(x, y)], [attack], ThreatModel("linf", 0.1), torch.Generator().manual_seed(0), CPU)
    assert result.cost["per_attack"]["t/near"]["attacked_points"] == len(nearest) < len(standing)
    assert torch.equal(attack.spy.seen[0], x[nearest])
    run_cascade(attack.components(), mlp, x, y, ThreatModel("linf", 0.1), torch.Generator().manual_seed(0))
    assert torch.equal(attack.spy.seen[1], x[nearest])
    assert torch.equal(attack.rest.seen[0], x[standing[~torch.isin(standing, nearest)]])  # the net: all the others
    assert torch.equal(attack.rest.seen[1], attack.rest.seen[0])
    margins = {"margins": torch.tensor([-3.0, -1.0, -2.0, -1.0, 9.0])}
    assert torch.equal(Nearest(Spy(), 0.5).focus(margins, torch.arange(4)), torch.tensor([1, 3]))
    assert torch.equal(Nearest(Spy(), 0.5).focus({}, torch.arange(4)), torch.arange(4))  # no margins yet: all
