"""Attack.forward_budget, which the progress display turns into time left; the time-left model and the bar.

The budget must bound the forward passes an attack really spends per point (else the estimate runs
past 100%) and be close to it when no point breaks (else "at most N s left" is far too long). Counted
with the engine's own pass counter on a model whose prediction no perturbation can change.
"""

from __future__ import annotations

import re

import pytest
import torch
from conftest import Purified
from torch import nn

from robustbench_karp.attacks import build_attack
from robustbench_karp.evaluation.cost import count_passes
from robustbench_karp.progress import CascadeTracker
from robustbench_karp.threat import ThreatModel


class Unbreakable(nn.Module):
    """Class 9 by a margin of 5 logits that inputs in [0, 1] move by at most 0.06: every attack runs to its end."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 10)
        with torch.no_grad():
            self.lin.weight.copy_(torch.full((10, 64), 1e-3))
            self.lin.bias.copy_(torch.arange(10.0) * 5)

    def forward(self, x):
        return self.lin(x.flatten(1))


CASES = [("pgd", {"steps": "10", "restarts": "3"}), ("pgd", {"steps": "7"}), ("fgsm", {}),
         ("eot-pgd", {"steps": "5", "samples": "3"}), ("eot-pgd", {"steps": "4", "samples": "2", "restarts": "2"}),
         ("apgd-ce", {"steps": "10"}), ("apgd-t", {"steps": "10"}), ("fab-t", {"steps": "10"}),
         ("square", {"queries": "60"}), ("bpda-pgd", {"steps": "5", "samples": "2"})]


@pytest.mark.parametrize("name,options", CASES)
def test_forward_budget_bounds_the_passes_and_is_close_when_nothing_breaks(name, options):
    attack = build_attack(name, options)
    x, y = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((12,), 9)
    model = Unbreakable().eval()
    if name == "bpda-pgd":  # BPDA needs a purifier; its passes are counted on the classifier behind it
        model = Purified(nn.Identity(), model).eval()
    with count_passes(model) as passes:
        x_adv = attack(model, x, y, ThreatModel("linf", 0.1), torch.Generator().manual_seed(0))
    assert (model(x_adv).argmax(1) == 9).all()  # nothing broke: the attack ran all its steps
    used = passes.forward / len(x)
    assert 0.9 * attack.forward_budget() <= used <= attack.forward_budget(), (used, attack.forward_budget())



# --- The time-left model and the final-verdict count (robustbench_karp/progress.py CascadeTracker), on a fake clock.

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_attack(tracker, clock, name: str, points: int, per_point: float, rate: float, budget: float) -> None:
    """The engine's calls for one attack on `points` points spending per_point passes each at `rate` passes/s."""
    tracker.attack(name, points, budget)
    for _ in range(10):  # ten ticks, as passes go through the network
        clock.now += points * per_point / rate / 10
        tracker.tick(tracker.passes + int(points * per_point / 10))


def test_a_cascade_where_most_points_break_first_is_estimated_from_the_points_left_not_every_budget():
    clock, rate = Clock(), 1000.0  # passes per second, every attack
    tracker = CascadeTracker(clock)
    tracker.expect([("apgd", 100.0), ("square", 5000.0)], batch_size=100)
    tracker.start(1000)
    tracker.batch(0)
    run_attack(tracker, clock, "apgd", 90, 40.0, rate, 100.0)  # 10 misclassified clean; early stop: 40 of 100 passes
    run_attack(tracker, clock, "square", 3, 5000.0, rate, 5000.0)  # 87 of 90 broken by apgd
    tracker.update(100)
    tracker.batch(1)
    left = tracker.seconds_left()
    # 9 batches to come, each: 90 points into apgd at 40 passes, then 90 * 3/90 = 3 into square at 5000
    expected = 9 * (90 * 40 + 3 * 5000) / rate
    assert left == pytest.approx(expected, rel=1e-6)
    every_budget = 9 * 100 * (100 + 5000) / rate  # the old estimate: every attack's budget on every point
    assert left < every_budget / 20


def test_the_running_attack_counts_only_its_own_remaining_passes_and_what_follows_it():
    clock = Clock()
    tracker = CascadeTracker(clock)
    tracker.expect([("pgd", 10.0), ("square", 100.0)], batch_size=50)
    tracker.start(100)
    tracker.batch(0)
    clock.now = 1.0  # clean prediction: 1 s for 50 points
    tracker.attack("pgd", 40, 10.0)
    clock.now += 1.0
    tracker.tick(100)  # 100 of pgd's 400 budgeted passes in 1 s
    left = tracker.seconds_left()
    # pgd: 300 passes at 100/s; square, unmeasured: 40 points (survival 1) x 100 at the attacks' 100/s so far;
    # batch 2: 1 s of clean prediction, 40 of 50 points (measured) into pgd (4 s), 40 into square (40 s)
    assert left == pytest.approx(3 + 40 * 100 / 100 + 1 + 400 / 100 + 4000 / 100, rel=1e-6)


def test_the_bar_counts_points_as_their_verdict_becomes_final():
    clock = Clock()
    tracker = CascadeTracker(clock)
    tracker.expect([("a", 10.0), ("b", 10.0), ("c", 10.0)], batch_size=100)
    tracker.start(150)
    seen = []
    tracker.batch(0)
    seen.append(tracker.final())
    tracker.attack("a", 80, 10.0)  # 20 misclassified or certified
    seen.append(tracker.final())
    tracker.attack("b", 30, 10.0)  # a broke 50
    seen.append(tracker.final())
    tracker.attack("c", 5, 10.0)
    seen.append(tracker.final())
    tracker.update(100)  # c's 5 are through every attack
    seen.append(tracker.final())
    tracker.batch(1)
    tracker.attack("a", 40, 10.0)  # the last batch holds 50 points
    seen.append(tracker.final())
    tracker.update(50)  # a broke all 40: b and c never ran
    seen.append(tracker.final())
    assert seen == [0, 20, 70, 95, 100, 110, 150]
    assert tracker.reach(2, 1, 6) == pytest.approx(1)  # c got 5 of b's 30
    assert tracker.reach(1, 0, 12) == pytest.approx(3)  # b got 30 + 0 of a's 80 + 40
    assert tracker.reach(2, -1, 150) == pytest.approx(5)  # c got 5 of the batches' 150 points


def test_the_engine_reports_what_the_tracker_counts_as_final():
    """A real cascade: when each attack starts, the points left are those the engine found still robust."""
    from robustbench_karp.evaluation.engine import attack_batches

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x, y = torch.rand(40, 1, 8, 8), torch.randint(0, 10, (40,))
    y[:20] = model(x[:20]).argmax(1)  # half clean-correct
    finals, live, outcomes = [], [], []

    class Watch(CascadeTracker):
        def attack(self, name, points, budget=None):
            if self.broken is not None:  # what the passes of the attack before showed broken
                live.append(int(self.broken))
            super().attack(name, points, budget)
            finals.append((name, self.final()))

    tracker = Watch()
    tracker.expect([("fgsm", 1.0), ("pgd", 10.0)], batch_size=20)
    tracker.start(40)
    batches = [(b, x[b * 20:(b + 1) * 20], y[b * 20:(b + 1) * 20]) for b in range(2)]
    attacks = [build_attack("fgsm", {}), build_attack("pgd", {"steps": "10"})]
    attack_batches(model, batches, attacks, ThreatModel("linf", 0.05), lambda b: torch.Generator().manual_seed(b),
                   torch.device("cpu"), lambda b, o: (outcomes.append(o), tracker.update(len(o.clean))), tracker)
    expected, broken = [], []
    for b, outcome in enumerate(outcomes):
        standing = [sum(outcome.clean), outcome.after["fgsm"]]
        expected += [(name, 20 * b + 20 - k) for name, k in zip(["fgsm", "pgd"], standing) if k]
        broken += [standing[0] - standing[1]] if standing[1] else []
    assert finals == expected and tracker.final() == 40
    # the engine's prediction of FGSM's x_adv passes every attacked point: the live count is exact by then
    assert live == broken and sum(broken) > 0


def test_the_running_attack_survival_comes_from_its_passes_over_all_its_points():
    tracker = CascadeTracker(Clock())
    tracker.expect([("a", 10.0), ("b", 10.0)], batch_size=4)
    tracker.start(8)
    tracker.batch(0)
    tracker.attack("a", 4, 10.0)
    tracker.labels(torch.tensor([0, 1, 2, 3]))
    assert tracker.survival() == 1.0 and tracker.reach(1, 0, 4) == 4  # nothing seen yet
    tracker.outputs(torch.eye(4)[[0, 1, 0, 0]])  # points 2 and 3 misclassified
    tracker.outputs(torch.eye(4)[[0, 1, 2, 0]])  # a pass where fewer are: the most seen stays
    tracker.outputs(torch.eye(4)[[1, 0]])  # two rows: another subset, not these points
    assert tracker.survival() == 0.5 and tracker.reach(1, 0, 4) == 2
    tracker.attack("b", 1, 10.0)  # a broke 3 in the end: measured now, the live count is b's
    assert tracker.reach(1, 0, 4) == 1 and tracker.survival() == 1.0


def test_an_attack_that_drops_broken_points_shows_them_in_its_passes_rows():
    clock = Clock()
    tracker = CascadeTracker(clock)
    tracker.expect([("a", 10.0), ("b", 100.0)], batch_size=100)
    tracker.start(200)
    tracker.batch(0)
    tracker.attack("a", 100, 10.0)
    tracker.tick(1)  # a one-row probe (the class count): not the points at work
    assert tracker.survival() == 1.0
    for passes in (101, 201, 226, 251):  # two passes over all 100 points, then over the 25 still standing
        clock.now += 1.0
        tracker.tick(passes)
    assert tracker.survival() == 0.25 and tracker.reach(1, 0, 100) == 25
    rate = 251 / 4
    # a: 1000 budgeted passes less the 251 spent, for a quarter of its points; b: 25 points x 100 passes;
    # batch 2: a on 100 points at what it spent plus its budget's rest on the quarter at work, b on 25 (a's live
    # survival)
    assert tracker.seconds_left() == pytest.approx((749 * 0.25 + 2500 + (251 + 749 * 0.25) + 2500) / rate)
    # the first run of a: the display gives a range whose low end has a break all 25 now: a ends here, having
    # spent 2.51 passes per point, and b never runs
    assert tracker.uncertain() and tracker.bounds()[0] == pytest.approx(251 / rate)
    tracker.tick(351)  # the engine's prediction of a's x_adv over all 100 points: a is done, nothing back at work
    assert tracker.at_work() == 0.25


def first_run(clock: Clock, points: int, budget: float) -> CascadeTracker:
    """Attack a (then b, 1000 passes a point) starts its first run on the first of two batches of `points`."""
    tracker = CascadeTracker(clock)
    tracker.expect([("a", budget), ("b", 1000.0)], batch_size=points)
    tracker.start(2 * points)
    tracker.batch(0)
    tracker.attack("a", points, budget)
    return tracker


def estimated_after(tracker: CascadeTracker, clock: Clock, rows: list[int]) -> list[bool]:
    """Passes over these rows, 1 ms a row: after each, whether there was an estimate."""
    shown = []
    for k in rows:
        clock.now += k / 1000
        tracker.tick(tracker.passes + k)
        shown.append(tracker.seconds_left() is not None)
    return shown


def test_a_first_run_gives_no_estimate_until_its_passes_show_what_it_leaves():
    """The rows of a standard smallcnn's first APGD-CE on MNIST (ODI's two steps, then APGD): the first
    estimates, taken while points still broke fast, said 1700 s for 31 s real."""
    clock = Clock()
    tracker = first_run(clock, 481, 100.0)
    shown = estimated_after(tracker, clock, [481, 476, 314, 272, 18, 9, 6, 4, 4, 2])
    # from the pass whose rows stopped falling fast (9 -> 6: under 1% of the points), and it stays
    assert shown == [False] * 6 + [True] * 4
    # then: b on 4 points at most; batch 2's a at 1584 passes spent + 4/481 of its budget's rest, not its budget
    rate = tracker.passes / clock.now
    spent = tracker.passes
    a_next = spent + (100 * 481 - spent) * 2 / 481
    expected = (100 * 481 - spent) * 2 / 481 + 2 * 1000 + a_next + 2 * 1000
    assert tracker.seconds_left() == pytest.approx(expected / rate, rel=1e-6)
    assert tracker.seconds_left() < 481 * 100 / rate  # less than batch 2's a at its budget alone


def test_a_robust_first_run_is_estimated_after_its_warm_up_and_a_measure_never_outlasts_a_tenth_of_its_budget():
    clock = Clock()
    # few points break: the estimate comes after the warm-up
    assert estimated_after(first_run(clock, 100, 100.0), clock, [100, 99, 97, 96]) == [False, False, True, True]
    # rows falling fast pass after pass: 100 passes, a tenth of 10 per point on 100 points, end the measuring
    assert estimated_after(first_run(clock, 100, 10.0), clock, [60, 40]) == [False, True]


def test_an_escalation_is_charged_only_once_it_has_fired():
    clock = Clock()
    tracker = CascadeTracker(clock)
    tracker.expect([("a", 10.0), ("escalation", 1e6), ("b", 10.0)], batch_size=10)
    tracker.conditional(["escalation"])
    tracker.start(40)
    tracker.batch(0)
    run_attack(tracker, clock, "a", 10, 10.0, 100.0, 10.0)  # 1 s
    run_attack(tracker, clock, "b", 6, 10.0, 100.0, 10.0)  # the escalation did not fire; 0.6 s
    tracker.update(10)
    tracker.batch(1)
    # 3 batches: 10 points into a (1 s), 6 into b (0.6 s); the escalation's million passes are not charged
    assert tracker.seconds_left() == pytest.approx(3 * 1.6)
    run_attack(tracker, clock, "a", 10, 10.0, 100.0, 10.0)
    tracker.attack("escalation", 5, 1e6)  # it fires on batch 2: it runs, and batches to come may need it
    for _ in range(3):  # its warm-up: measuring() until three passes show how many it leaves to b
        clock.now += 1.0
        tracker.tick(tracker.passes + 100)
    assert tracker.seconds_left() > 5 * 1e6 / 100


def test_at_80_columns_the_terminal_line_shows_the_time_left():
    import fcntl
    import os
    import struct
    import termios
    import time

    from robustbench_karp.cli.progress import EvalProgress

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    stream = os.fdopen(slave, "w", buffering=1)
    progress = EvalProgress(stream=stream)
    progress.expect([("apgd-ce", 101.0), ("apgd-t", 920.0), ("fab-t", 1829.0), ("square", 5003.0)], batch_size=500)
    progress.start(10000)
    progress.batch(0)
    progress.attack("apgd-ce", 480, 101.0)
    for passes in range(0, 20001, 4000):
        time.sleep(0.11)
        progress.tick(passes)
    progress.__exit__(None, None, None)
    os.set_blocking(master, False)
    out = os.read(master, 1 << 20).decode(errors="replace")
    drawn = [part for part in re.split(r"[\r\n]|\x1b\[A", out) if "apgd-ce" in part]
    assert drawn and all(len(part) <= 80 for part in drawn)
    assert re.search(r"\d+(\.\d)? (s|min|h) left", drawn[-1]), drawn[-1]
