"""The threat model: projection, random start, budget check and the shared ascent loop."""

import pytest
import torch

from robustbench_karp.threat import BudgetViolation, ThreatModel, ascend, check_budget


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 1.5)])
def test_project_lands_in_ball_and_box(norm, eps):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8, generator=g)
    threat = ThreatModel(norm, eps)
    far = x + 5 * torch.randn(16, 1, 8, 8, generator=g)
    p = threat.project(far, x)
    assert (threat.distance(p, x) <= eps + 1e-6).all()
    assert p.min() >= 0 and p.max() <= 1
    inside = threat.random_point(x, g)
    assert torch.equal(threat.project(inside, x), inside)  # points already inside stay put


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_random_point_is_random_and_inside(norm, eps):
    x = torch.full((64, 3, 4, 4), 0.5)
    threat = ThreatModel(norm, eps)
    a = threat.random_point(x, torch.Generator().manual_seed(1))
    b = threat.random_point(x, torch.Generator().manual_seed(1))
    c = threat.random_point(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    d = threat.distance(a, x)
    assert (d <= eps + 1e-6).all() and (d > 0.5 * eps).all()  # uniform in a high-dimensional ball: near the sphere


def test_check_budget_raises_on_each_violation():
    x = torch.full((2, 1, 2, 2), 0.5)
    threat = ThreatModel("linf", 0.1)
    check_budget(x + 0.1, x, threat)
    with pytest.raises(BudgetViolation, match="exceeds"):
        check_budget(x + 0.1 + 1e-4, x, threat)
    with pytest.raises(BudgetViolation, match=r"\[0, 1\]"):
        check_budget(torch.full_like(x, 1.05), torch.full_like(x, 1.0), threat)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(BudgetViolation, match="non-finite"):
        check_budget(bad, x, threat)
    l2 = ThreatModel("l2", 0.5)
    with pytest.raises(BudgetViolation):
        check_budget(x + 0.26, x, l2)  # ||0.26 * ones(4)|| = 0.52


def test_our_own_l2_projection_passes_the_budget_check_at_imagenet_scale():
    """ImageNet's L2 radius is 3 over 3x224x224 pixels: float32 rounding of the norm put projected points up to
    4.6e-6 above eps, past an absolute 1e-6. The check's L2 tolerance grows with eps; a real excess still fails."""
    g = torch.Generator().manual_seed(0)
    x = 0.25 + 0.5 * torch.rand(8, 3, 224, 224, generator=g)
    threat = ThreatModel("l2", 3.0)
    projected = threat.project(x + 0.1 * torch.randn(x.shape, generator=g), x)
    check_budget(projected, x, threat)
    delta = projected - x
    with pytest.raises(BudgetViolation, match="exceeds"):
        check_budget(x + delta * 1.001, x, threat)  # 0.1% outside: 3e-3 above eps
    with pytest.raises(BudgetViolation, match="exceeds"):
        check_budget(x + 0.1 + 2e-6, x, ThreatModel("linf", 0.1))  # Linf keeps its absolute 1e-6


def test_negative_or_nan_eps_is_rejected():
    with pytest.raises(ValueError):
        ThreatModel("linf", -0.1)
    with pytest.raises(ValueError):
        ThreatModel("linf", float("nan"))
    with pytest.raises(ValueError):
        ThreatModel("l3", 0.1)


def test_ascend_early_stop_keeps_first_adversarial_iterate():
    """A point that is 'done' at some step keeps that iterate and is no longer updated."""
    x = torch.zeros(3, 1, 1, 1) + 0.5
    threat = ThreatModel("linf", 0.3)
    calls = []

    def objective(x_adv, idx):  # ascent on the pixel value; point i is done once it exceeds 0.5 + 0.1 * (i + 1)
        calls.append(idx.tolist())
        v = x_adv.flatten(1)[:, 0]
        return v, v > 0.5 + 0.1 * (idx + 1).float() - 1e-4

    out, done = ascend(x, objective, threat, steps=5, step_size=0.1, random_start=False,
                       gen=torch.Generator(), stop_when_done=True)
    assert done.tolist() == [True, True, True]
    assert torch.allclose(out.flatten(), torch.tensor([0.6, 0.7, 0.8]))
    assert calls[0] == [0, 1, 2] and calls[2] == [1, 2] and calls[3] == [2]
    assert torch.equal(x, torch.zeros(3, 1, 1, 1) + 0.5)  # input untouched
