"""Our APGD (attacks/apgd.py) against the original AutoAttack's, point by point, and the properties that make it ours:
each point's first adversarial iterate is kept at its early exit, a standing point gets its iterate of highest loss,
the ball holds, the same generator gives the same output, and DLR refuses models with too few classes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustbench_karp.attacks import build_attack
from robustbench_karp.attacks.apgd_rows import LOSSES, Rows, checkpoints, halve_stalled_steps
from robustbench_karp.evaluation.cost import count_passes
from robustbench_karp.threat import ThreatModel, check_budget
from robustbench_karp.threat.rows import physical_rows

LINF = ThreatModel("linf", 0.1)  # on the digits smallcnn: about a third of the points break, at various steps


class Wavy(nn.Module):
    """Class 9 by a margin of 4 or more, never broken; the other logit is cos(200 * mean pixel), so the loss rises
    and falls along APGD's path and its last iterate is often not its best."""

    def forward(self, x):
        wave = torch.cos(200 * x.flatten(1).mean(1))  # (B,)
        zero = torch.zeros_like(wave)
        return torch.stack([wave] + [zero] * 8 + [zero + 5], dim=1)


class Waves(nn.Module):
    """Class 9 by a margin of 3.5 or more; class k's logit is 0.1 k + 0.5 cos(200 * mean pixel + k): every target's
    DLR rises and falls along APGD's path, and which target does best varies from point to point."""

    def forward(self, x):
        phase = 200 * x.flatten(1).mean(1, keepdim=True) + torch.arange(9.0)  # (B, 9)
        return torch.cat([0.1 * torch.arange(9.0) + 0.5 * torch.cos(phase), torch.full((len(x), 1), 5.0)], dim=1)


class Recorder:
    """Every batch that goes through a module's forward (its input and logits), via a hook removed on exit."""

    def __init__(self, model: nn.Module):
        self.model, self.calls = model, []

    def __enter__(self):
        self.handle = self.model.register_forward_hook(
            lambda m, i, o: self.calls.append((i[0].detach().clone(), o.detach().clone())))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def points(digits, digits_model):
    """40 test digits the model classifies correctly."""
    _, test = digits
    x, y = test.batch(torch.arange(60))
    ok = digits_model(x).argmax(1) == y
    return x[ok][:40], y[ok][:40]


def reference_run(model, x, y, loss: str, eps: float, targets: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(broken (B,), best loss (B,) or None for dlr-targeted) of pyautoattack's APGD, 100 iterations from x itself."""
    autopgd = pytest.importorskip("pyautoattack.autopgd_base")
    with torch.random.fork_rng():  # it draws a random start (then replaced by x_init) from the global RNG
        if loss != "dlr-targeted":
            ref = autopgd.APGDAttack(model, n_iter=100, norm="Linf", eps=eps, loss=loss, device=x.device)
            ref.init_hyperparam(x)
            _, robust, best_loss, _ = ref.attack_single_run(x, y, x_init=x.clone())
            return ~robust.bool(), best_loss
        ref = autopgd.APGDAttack_targeted(model, n_iter=100, norm="Linf", eps=eps, device=x.device)
        ref.init_hyperparam(x)
        ranked, broken = model(x).sort(dim=1)[1], torch.zeros(len(x), dtype=torch.bool)
        for k in range(2, targets + 2):  # its targets: the 2nd, 3rd, ... largest clean logit, as ours
            ref.y_target = ranked[:, -k]
            broken |= ~ref.attack_single_run(x, y, x_init=x.clone())[1].bool()
        return broken, None


@pytest.mark.parametrize("loss", ["ce", "dlr", "dlr-targeted"])
def test_matches_the_original_point_by_point(loss, digits_model, points):
    """Same model, points and start (x itself), 100 iterations: the same points break, and a point that stands
    returns the original's best loss (its step sizes, momentum and restarts from the best point agree). On 296
    digits at eps 0.1 and 0.2 (Linf; and L2 at 1.0 and 1.5) the two agreed on every point. One point is allowed
    to differ: our batch shrinks as points leave, and a matrix product over fewer rows may round its last bit
    differently, which can flip the sign of a near-zero gradient coordinate and send one trajectory elsewhere."""
    x, y = points[0][:24], points[1][:24]
    ours = build_attack("apgd", {"loss": loss, "random_start": False, "targets": 2})(
        digits_model, x, y, LINF, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = digits_model(ours)
    broken = logits.argmax(1) != y
    ref_broken, ref_loss = reference_run(digits_model, x, y, loss, LINF.eps, targets=2)
    assert 4 <= ref_broken.sum() <= len(x) - 4  # a comparison with something on both sides
    assert (broken != ref_broken).sum() <= 1, (broken.sum(), ref_broken.sum())
    if ref_loss is not None:
        standing = ~broken & ~ref_broken
        ours_loss = LOSSES[loss](logits, y, None)[standing]
        assert (~torch.isclose(ours_loss, ref_loss[standing], rtol=1e-4, atol=1e-6)).sum() <= 1


@pytest.mark.parametrize("norm,eps", [("Linf", 0.1), ("L2", 0.5)])
def test_matches_the_original_where_the_loss_rises_and_falls(norm, eps):
    """On Wavy nothing breaks and the loss goes up and down, so every checkpoint's two halving rules are at work:
    each point's best loss after 100 iterations is the original's (measured: equal to the last bit)."""
    autopgd = pytest.importorskip("pyautoattack.autopgd_base")
    x, y, model = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((30,), 9), Wavy()
    ours = build_attack("apgd", {"random_start": False})(model, x, y, ThreatModel(norm.lower(), eps), torch.Generator())
    ref = autopgd.APGDAttack(model, n_iter=100, norm=norm, eps=eps, loss="ce", device=x.device)
    ref.init_hyperparam(x)
    with torch.random.fork_rng():
        ref_loss = ref.attack_single_run(x, y, x_init=x.clone())[2]
    assert torch.allclose(F.cross_entropy(model(ours), y, reduction="none"), ref_loss, rtol=1e-5, atol=1e-7)


def test_a_broken_point_returns_the_iterate_that_broke_it(digits, digits_model):
    """Points of one class, so each recorded batch says how many rows were misclassified at that step: each row
    leaves at its first misclassified iterate, so the rows counted misclassified over all steps are exactly the
    points returned adversarial (dropping a broken point's example, or keeping its rows on, breaks the equality)."""
    _, test = digits
    x, y = test.batch(torch.arange(300))
    keep = (y == 8) & (digits_model(x).argmax(1) == y)
    x, y = x[keep][:30], y[keep][:30]
    with Recorder(digits_model) as seen:
        out = build_attack("apgd", {"steps": 30})(digits_model, x, y, LINF, torch.Generator().manual_seed(0))
    per_call = torch.tensor([int((logits.argmax(1) != 8).sum()) for _, logits in seen.calls[1:]])  # [0]: classes check
    assert per_call[3:].sum() >= 2  # some points broke at an intermediate step, not at the start or first steps
    returned = digits_model(out).argmax(1) != y
    assert int(returned.sum()) == int(per_call.sum())
    sizes = torch.tensor([len(inputs) for inputs, _ in seen.calls[1:]])  # the working batch at each step
    assert sizes[0] == len(x) and torch.equal(sizes[1:], sizes[:-1] - per_call[:-1])  # a broken row leaves at once


@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.1), ThreatModel("l2", 0.5)], ids=["linf", "l2"])
def test_a_standing_point_returns_its_iterate_of_highest_loss(threat):
    """Nothing breaks Wavy, so every step evaluates all rows in order: the returned point's loss is the highest
    of any iterate, and on some points strictly above the last iterate's (so returning the last would fail)."""
    x, y, model = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((30,), 9), Wavy()
    with Recorder(model) as seen:
        out = build_attack("apgd", {"steps": 20})(model, x, y, threat, torch.Generator().manual_seed(0))
    losses = torch.stack([F.cross_entropy(logits, y, reduction="none") for _, logits in seen.calls[1:]])  # (21, 30)
    assert len(losses) == 21
    returned = F.cross_entropy(model(out), y, reduction="none")
    assert torch.allclose(returned, losses.max(0).values, atol=1e-6)
    assert (losses[-1] < losses.max(0).values - 1e-4).sum() >= 2
    check_budget(out, x, threat)


@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.1), ThreatModel("l2", 0.5)], ids=["linf", "l2"])
def test_targeted_returns_the_iterate_of_highest_loss_over_all_targets(threat):
    """Nothing breaks Waves: each step evaluates 3 rows per point (its 3 targets) in order. The returned image is
    exactly the recorded iterate of highest targeted DLR over every step and target, not the last, not any row's."""
    x, y, model = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((30,), 9), Waves()
    with Recorder(model) as seen:
        out = build_attack("apgd", {"steps": 20, "loss": "dlr-targeted", "targets": 3})(
            model, x, y, threat, torch.Generator().manual_seed(0))
    targets = seen.calls[0][1][:, :9].topk(3, dim=1).indices.reshape(-1)  # (90,) from the clean pass: distinct logits
    inputs = torch.stack([inputs for inputs, _ in seen.calls[1:]]).view(21, 30, 3, *x.shape[1:])
    losses = torch.stack([LOSSES["dlr-targeted"](logits, torch.full((90,), 9), targets) for _, logits in seen.calls[1:]])
    best = losses.view(21, 30, 3).max(dim=0)  # per (point, target): the highest loss and its step
    target = best.values.argmax(dim=1)  # (30,)
    step = best.indices[torch.arange(30), target]
    assert torch.equal(out, inputs[step, torch.arange(30), target])
    assert (step < 20).sum() >= 5 and len(set(target.tolist())) > 1  # not the last step; not always one target


@pytest.mark.parametrize("threat", [ThreatModel("linf", 0.1), ThreatModel("l2", 0.5)], ids=["linf", "l2"])
@pytest.mark.parametrize("options", [{"restarts": 2, "odi_steps": 2}, {"loss": "dlr-targeted", "targets": 3,
                                                                       "target_batch": 2}])
def test_every_point_lies_in_the_ball_and_the_seed_decides(threat, options, digits_model, points):
    x, y = points
    x0 = x.clone()
    attack = build_attack("apgd", {"steps": 10, **options})
    first = attack(digits_model, x, y, threat, torch.Generator().manual_seed(0))
    check_budget(first, x, threat)  # raises outside the ball or [0, 1]
    assert torch.equal(x, x0) and not first.requires_grad
    assert torch.equal(first, attack(digits_model, x, y, threat, torch.Generator().manual_seed(0)))
    assert not torch.equal(first, attack(digits_model, x, y, threat, torch.Generator().manual_seed(1)))


def test_physical_pieces_give_the_same_numbers(digits_model, points):
    """splits = True: the engine may cut a batch into pieces on out-of-memory and expect identical results."""
    x, y = points
    attack = build_attack("apgd", {"steps": 10, "loss": "dlr-targeted", "targets": 3, "odi_steps": 1})
    whole = attack(digits_model, x, y, LINF, torch.Generator().manual_seed(3))
    with physical_rows(7):
        assert torch.equal(whole, attack(digits_model, x, y, LINF, torch.Generator().manual_seed(3)))


def test_targets_in_one_batch_break_the_points_they_break_one_at_a_time(digits_model, points):
    """Rows are independent: a point breaks if one of its targets does, however many targets run at once."""
    x, y = points
    broken = []
    for group in (None, 1):
        attack = build_attack("apgd", {"loss": "dlr-targeted", "targets": 3, "target_batch": group,
                                       "random_start": False, "steps": 20})
        broken.append(digits_model(attack(digits_model, x, y, LINF, torch.Generator().manual_seed(0))).argmax(1) != y)
    assert torch.equal(broken[0], broken[1]) and broken[0].any()


def test_dlr_on_too_few_classes_is_a_one_line_error():
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    for loss, classes in (("dlr-targeted", 3), ("dlr", 2)):
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, classes))
        with pytest.raises(ValueError, match=f"at least {classes + 1} classes") as error:
            build_attack("apgd", {"loss": loss})(model, x, y, LINF, torch.Generator())
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="unknown apgd loss"):
        build_attack("apgd", {"loss": "cw"})


@pytest.mark.parametrize("options", [{"steps": 10}, {"steps": 5, "loss": "dlr-targeted", "targets": 3},
                                     {"steps": 10, "restarts": 2, "odi_steps": 2}])
def test_forward_budget_bounds_the_passes(options):
    attack, model = build_attack("apgd", options), Wavy()
    x, y = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((12,), 9)
    with count_passes(model) as passes:
        attack(model, x, y, LINF, torch.Generator().manual_seed(0))
    assert 0.9 * attack.forward_budget() <= passes.forward / len(x) <= attack.forward_budget()


def test_checkpoints_follow_the_paper():
    """p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), p_1 = 0.22, times 100 iterations (checked after iteration p - 1)."""
    assert [i + 1 for i in checkpoints(100)] == [22, 41, 57, 70, 80, 87, 93, 99]
    assert set(checkpoints(100).values()) == {22, 19, 16, 13, 10, 7, 6}


def test_a_checkpoint_halves_the_steps_that_stalled():
    """A window of 20 steps, rho 0.75: halve where the loss rose in at most 15 steps, or where the step was not
    halved at the last check and the best loss has not risen since; halved rows go back to their best point."""
    rises = torch.tensor([15.0, 16.0, 16.0, 16.0])
    halved_last = torch.tensor([True, False, True, False])
    best_at_last = torch.tensor([1.0, 2.0, 2.0, 2.0])
    best = torch.tensor([1.5, 2.0, 2.0, 2.5])  # rows 1 and 2 did not improve; row 3 did
    rows = Rows(rises=rises, halved=halved_last, loss_at_check=best_at_last, loss_best=best, eta=torch.full((4,), 0.2),
                x_adv=torch.zeros(4, 1, 2, 2), x_best=torch.ones(4, 1, 2, 2), grad=torch.zeros(4, 1, 2, 2),
                grad_best=torch.full((4, 1, 2, 2), 3.0))
    halve_stalled_steps(rows, window=20, rho=0.75)
    expected = torch.tensor([True, True, False, False])
    assert torch.equal(rows.halved, expected)
    assert torch.equal(rows.eta, torch.where(expected, 0.1, 0.2))
    assert torch.equal(rows.x_adv.flatten(1).amax(1), expected.float())  # the best point, where halved
    assert torch.equal(rows.grad.flatten(1).amax(1), 3 * expected.float())
    assert torch.equal(rows.loss_at_check, best) and not rows.rises.any()


def test_dlr_losses_are_the_originals():
    """On random logits (and rows with ties), DLR and targeted DLR equal pyautoattack's own functions."""
    autopgd = pytest.importorskip("pyautoattack.autopgd_base")
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 10, generator=gen) * 3
    logits[:8, :3] = 1.0  # ties among the largest logits
    y, target = torch.randint(0, 10, (64,), generator=gen), torch.randint(0, 10, (64,), generator=gen)
    ref = autopgd.APGDAttack_targeted(nn.Identity(), eps=0.1)
    ref.y_target = target
    assert torch.allclose(LOSSES["dlr"](logits, y, None), ref.dlr_loss(logits, y), rtol=1e-6, atol=1e-6)
    assert torch.allclose(LOSSES["dlr-targeted"](logits, y, target), ref.dlr_loss_targeted(logits, y), rtol=1e-6,
                          atol=1e-6)
