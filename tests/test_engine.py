"""The engine's worst-case aggregation, pinned down with fake attacks."""

import sys
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from robustbench_karp.api import evaluate
from robustbench_karp.attacks.base import Attack
from robustbench_karp.evaluation import engine
from robustbench_karp.evaluation.engine import run_attacks
from robustbench_karp.threat import BudgetViolation, ThreatModel


class PixelClassifier(nn.Module):
    """Predicts class 1 where pixel 0 > 0.5, else class 0: attacks act on one known pixel."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(10.0))

    def forward(self, x):
        v = x.flatten(1)[:, 0]
        return torch.stack([self.w * (0.5 - v), self.w * (v - 0.5)], dim=1)


@dataclass(frozen=True)
class FlipSet(Attack):
    """Flips the points whose id (pixel 1 * 100) is in `ids`; records which ids it was shown."""

    name = "flip"
    ids: tuple = ()
    seen: list = None

    def __call__(self, model, x, y, threat, gen):
        ids = (x.flatten(1)[:, 1] * 100).round().long()
        self.seen.append(sorted(ids.tolist()))
        x_adv = x.clone()
        flip = torch.tensor([int(i) in self.ids for i in ids])
        x_adv[flip, 0, 0, 0] = torch.where(x[flip, 0, 0, 0] > 0.5, 0.45, 0.55)
        return x_adv


def data(n=8):
    x = torch.zeros(n, 1, 2, 2)
    x[:, 0, 0, 0] = torch.tensor([0.45, 0.55] * (n // 2))  # label = class of pixel 0
    x[:, 0, 0, 1] = torch.arange(n) / 100.0  # an id the fake attacks can read
    y = torch.tensor([0, 1] * (n // 2))
    y[7] = 0  # point 7 starts misclassified
    return x, y


def test_worst_case_over_attacks_and_cascade():
    x, y = data()
    a = FlipSet(ids=(0, 1), seen=[])
    b = FlipSet(ids=(1, 2, 7), seen=[])
    result = run_attacks(PixelClassifier(), [(x, y)], [a, b], ThreatModel("linf", 0.1), torch.Generator(),
                         torch.device("cpu"))
    assert result.clean == [True] * 7 + [False]
    assert result.robust == [False, False, False, True, True, True, True, False]
    assert a.seen == [[0, 1, 2, 3, 4, 5, 6]]  # misclassified point 7 is never attacked
    assert b.seen == [[2, 3, 4, 5, 6]]  # only points still robust are attacked again
    assert result.clean_accuracy == pytest.approx(7 / 8)
    assert result.per_attack == {"flip": pytest.approx(5 / 8), "flip#2": pytest.approx(4 / 8)}
    assert result.robust_accuracy == pytest.approx(4 / 8)


def test_batches_give_the_same_result_as_one_batch():
    x, y = data(8)
    one = run_attacks(PixelClassifier(), [(x, y)], [FlipSet(ids=(2, 5), seen=[])], ThreatModel("linf", 0.1),
                      torch.Generator(), torch.device("cpu"))
    split = run_attacks(PixelClassifier(), zip(x.split(3), y.split(3)), [FlipSet(ids=(2, 5), seen=[])],
                        ThreatModel("linf", 0.1), torch.Generator(), torch.device("cpu"))
    assert one.robust == split.robust and one.per_attack == split.per_attack


def test_eps_zero_runs_no_attack_and_robust_equals_clean():
    x, y = data(8)
    flip = FlipSet(ids=(2, 5), seen=[])
    result = run_attacks(PixelClassifier(), [(x, y)], [flip], ThreatModel("linf", 0.0), torch.Generator(),
                         torch.device("cpu"))
    assert flip.seen == [] and result.robust == result.clean and result.robust_accuracy == result.clean_accuracy


def test_freed_heap_pages_go_back_to_the_os_after_every_batch(monkeypatch):
    """Peak RSS stays bounded by the batch size (benchmarks/pgd_vs_torchattacks.py --memory measures it)."""
    if sys.platform.startswith("linux"):
        assert engine._malloc_trim() is not None  # glibc: the trim is really there
    calls = []
    monkeypatch.setattr(engine, "release_memory", lambda: calls.append(1))
    x, y = data(8)
    run_attacks(PixelClassifier(), zip(x.split(3), y.split(3)), [FlipSet(ids=(2, 5), seen=[])],
                ThreatModel("linf", 0.1), torch.Generator(), torch.device("cpu"))
    assert len(calls) == 3


@dataclass(frozen=True)
class Cheat(Attack):
    delta: float = 0.5

    def __call__(self, model, x, y, threat, gen):
        return (x + self.delta).clamp(0, 1) if self.delta == self.delta else x * float("nan")


@pytest.mark.parametrize("delta", [0.5, float("nan")])
def test_attack_outside_threat_model_is_a_hard_error(delta):
    x, y = data()
    with pytest.raises(BudgetViolation):
        run_attacks(PixelClassifier(), [(x, y)], [Cheat(delta)], ThreatModel("linf", 0.1), torch.Generator(),
                    torch.device("cpu"))


def test_train_mode_model_is_evaluated_in_eval_mode_and_restored():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.Dropout(0.9)).train()
    x, y = torch.rand(16, 1, 2, 2), torch.randint(0, 2, (16,))
    seen = []

    @dataclass(frozen=True)
    class Spy(Attack):
        def __call__(self, m, x, y, threat, gen):
            seen.append(m.training)
            return x

    result = evaluate(model, x, y, attacks=[Spy()], eps=0.1, device="cpu")
    assert seen == [False] and model.training
    assert any("train mode" in w for w in result.warnings)


def test_evaluate_rejects_unnormalized_images():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate(PixelClassifier(), torch.rand(4, 1, 2, 2) * 255, torch.zeros(4, dtype=torch.long), device="cpu")
