"""Certificates that cannot lie about a user's model (issue 28): the graph bound must be what the model computes.

Each construction below once got a point certified while an input inside its ball was misclassified. Each is
now refused in one line naming the op, or bounded soundly; and the trace-versus-eager check (consistency.py)
catches what fx hides altogether (`h += y`, an overridden __call__), so a mutant that skips it fails here.
"""

from __future__ import annotations

import copy
import itertools
import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustbench_karp.api import evaluate
from robustbench_karp.certification import UnsupportedOp, certify, margins
from robustbench_karp.evaluation.certified import certification_method
from robustbench_karp.evaluation.cost import count_passes
from robustbench_karp.threat import ThreatModel


def worst_margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return (logits.gather(1, y[:, None]) - logits).masked_fill(F.one_hot(y, logits.shape[1]).bool(), 1e9).amin(1)


def assert_sound_or_refused(model: nn.Module, x: torch.Tensor, eps: float, named: str | None = None) -> None:
    """Either certify refuses (naming `named`), or no corner nor random point of the ball breaks a certified point."""
    y = model(x).argmax(1)
    try:
        cert = certify(model, x, y, eps=eps)
    except UnsupportedOp as e:
        assert "\n" not in str(e) and (named is None or re.search(named, str(e))), str(e)
        return
    assert named is None, f"expected a refusal naming {named!r}, got certified={cert.certified.tolist()}"
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        corner = torch.randint(0, 2, x.shape, generator=gen) * 2 - 1.0
        for delta in (corner * eps, (torch.rand(x.shape, generator=gen) * 2 - 1) * eps):
            z = (x + delta).clamp(0, 1)
            assert (worst_margin(model, z, y)[cert.certified] > 0).all(), "a certified point broken inside its ball"


class Head(nn.Module):
    """Scalar input -> one hidden unit h -> the construction under test -> two logits."""

    def __init__(self, body):
        super().__init__()
        self.inner, self.out, self.body = nn.Linear(1, 1), nn.Linear(1, 2), body
        self.act = nn.ReLU(inplace=True)  # relu_module_inplace's
        with torch.no_grad():  # h = x - 0.5: negative on half of the ball around 0.5
            self.inner.weight.fill_(1.0), self.inner.bias.fill_(-0.5)
            self.out.weight.copy_(torch.tensor([[1.0], [-1.0]])), self.out.bias.fill_(0.02)

    def forward(self, x):
        return self.out(self.body(self, self.inner(x.flatten(1))))


def relu_module_inplace(m, h):
    return m.act(h) + h


def relu_function_inplace(m, h):
    return F.relu(h, inplace=True) + h


def relu_function_inplace_positional(m, h):
    return F.relu(h, True) + h


def relu_inplace_through_a_view(m, h):
    v = h.view(-1, 1)
    F.relu(h, inplace=True)
    return v * 2


def torch_relu_(m, h):
    return torch.relu_(h) + h


def tensor_relu_(m, h):
    return h.relu_() + h


def add_(m, h):
    g = h
    return h.add_(1) + g


def iadd_on_a_reused_tensor(m, h):
    g = h
    h += F.relu(h)
    return g + h


def floor_division(m, h):
    return torch.div(h, 0.25, rounding_mode="floor")


def tensor_trunc_division(m, h):
    return h.div(0.25, rounding_mode="trunc")


def operator_floordiv(m, h):
    return h // 0.25


@pytest.mark.parametrize("body,named", [
    (relu_module_inplace, r"in-place relu \(.*\) overwrites a tensor that is used again"),
    (relu_function_inplace, r"in-place relu"),
    (relu_function_inplace_positional, r"in-place relu"),
    (relu_inplace_through_a_view, r"in-place relu"),
    (torch_relu_, r"torch\.relu_"),
    (tensor_relu_, r"Tensor\.relu_"),
    (add_, r"Tensor\.add_"),
    (iadd_on_a_reused_tensor, r"traced graph differs from the model's forward.*add_"),
    (floor_division, r"rounding_mode=floor"),
    (tensor_trunc_division, r"rounding_mode=trunc"),
    (operator_floordiv, r"floordiv"),
])
def test_each_construction_is_refused_naming_its_op(body, named):
    model = Head(body).eval()
    x = torch.full((3, 1, 1, 1), 0.5) + torch.tensor([0.0, 0.05, -0.05]).view(3, 1, 1, 1)
    assert_sound_or_refused(model, x, eps=0.1, named=named)


def test_a_plain_inplace_relu_after_a_layer_still_certifies_exactly_like_the_out_of_place_one():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10)).eval()
    inplace = copy.deepcopy(plain)
    inplace[1] = nn.ReLU(inplace=True).eval()
    x = torch.rand(6, 1, 8, 8)
    y = plain(x).argmax(1)
    a, b = certify(plain, x, y, eps=0.01), certify(inplace, x, y, eps=0.01)
    assert torch.equal(a.margin, b.margin) and torch.equal(a.certified, b.certified) and a.certified.any()


class AvgPoolPositional(nn.Module):
    """F.avg_pool2d(x, 3, 1, 1, False, False): ceil_mode, then count_include_pad (max_pool2d has dilation there)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(F.avg_pool2d(x, 3, 1, 1, False, False).flatten(1))


def test_avg_pool_positional_arguments_are_bounded_in_its_own_order():
    """The model is affine in x, so CROWN is exact: its bound must equal the closed-form worst margin over the box."""
    model = AvgPoolPositional().eval()
    x = torch.full((1, 1, 4, 4), 0.5)
    y = model(x).argmax(1)
    exact_model = copy.deepcopy(model).double()
    jacobian = torch.autograd.functional.jacobian(lambda z: exact_model(z.view(1, 1, 4, 4))[0], x.double().flatten())
    direction = jacobian[y] - jacobian[1 - y]  # (1, 16): margin(z) = direction . z + offset
    offset = worst_margin(exact_model, x.double(), y) - direction @ x.double().flatten()
    for eps in (0.1, 0.5):  # 0.5: the whole [0, 1] box, where the all-ones input decides
        lo, hi = (x.double() - eps).clamp(0, 1).flatten(), (x.double() + eps).clamp(0, 1).flatten()
        exact = offset + (direction.clamp(min=0) * lo + direction.clamp(max=0) * hi).sum()
        crown = margins(model, x.double(), y, ThreatModel("linf", eps), "crown-ibp", mix=1.0).amin(1)
        assert (crown - exact).abs().max() < 1e-9
        cert = certify(model, x, y, eps=eps)
        assert bool(cert.certified[0]) == bool(exact[0] > 1e-3) or abs(float(exact[0])) < 1e-3
    assert_sound_or_refused(model, x, eps=0.5)


def test_max_pool_positional_arguments_are_exact_at_a_point_and_sound_around_it():
    class MaxPoolPositional(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(4)
            self.head = nn.Linear(9, 3)

        def forward(self, x):  # kernel 2, stride 2, padding 1, dilation 1, ceil_mode False
            return self.head(F.max_pool2d(x, 2, 2, 1, 1, False).flatten(1))

    model = MaxPoolPositional().eval()
    x = torch.rand(8, 1, 4, 4)
    y = model(x).argmax(1)
    exact_model = copy.deepcopy(model).double()
    for method in ("ibp", "crown-ibp"):
        at_zero = margins(model, x.double(), y, ThreatModel("linf", 0.0), method, mix=1.0 if method != "ibp" else None)
        assert (at_zero.amin(1) - worst_margin(exact_model, x.double(), y)).abs().max() < 1e-9
    assert_sound_or_refused(model, x, eps=0.05)


@pytest.mark.parametrize("where", ["leaf", "root", "global"])
@pytest.mark.parametrize("kind", ["forward", "pre"])
def test_a_hook_is_refused_but_the_engines_pass_counter_is_not(where, kind):
    model = Head(lambda m, h: F.relu(h)).eval()
    x = torch.full((2, 1, 1, 1), 0.5)
    y = model(x).argmax(1)
    flip = (lambda m, i, o: -o) if kind == "forward" else (lambda m, i: (i[0] * 0 + 1,))
    target = model.out if where == "leaf" else model
    register = {"forward": nn.modules.module.register_module_forward_hook,
                "pre": nn.modules.module.register_module_forward_pre_hook} if where == "global" else {
        "forward": target.register_forward_hook, "pre": target.register_forward_pre_hook}
    handle = register[kind](flip)
    try:
        with pytest.raises(UnsupportedOp, match="hook") as caught:
            certify(model, x, y, eps=0.1)
        assert "\n" not in str(caught.value)
    finally:
        handle.remove()
    with count_passes(model) as passes:  # ours observes only: allowed, and counted
        cert = certify(model, x, y, eps=0.1)
    assert passes.forward > 0 and torch.equal(cert.margin, certify(model, x, y, eps=0.1).margin)


class Flipped(nn.Module):
    """A __call__ override fx never sees: the trace-versus-eager check is the only thing that catches it."""

    def __init__(self):
        super().__init__()
        self.inner = Head(lambda m, h: F.relu(h))

    def forward(self, x):
        return self.inner(x)

    def __call__(self, x):
        return -super().__call__(x)


def test_what_the_trace_cannot_see_is_caught_by_running_the_model():
    model = Flipped().eval()
    x = torch.full((2, 1, 1, 1), 0.5)
    with pytest.raises(UnsupportedOp, match=re.escape("the traced graph differs from the model's forward")):
        certify(model, x, model(x).argmax(1), eps=0.1)


def test_a_train_mode_model_is_certified_in_eval_mode_with_a_warning_and_its_mode_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    x = torch.rand(5, 1, 4, 4)
    y = model.eval()(x).argmax(1)
    reference = certify(model, x, y, eps=0.01)
    model.train()
    model[3].eval()  # a mixed state comes back as it was
    with pytest.warns(UserWarning, match="train mode"):
        cert = certify(model, x, y, eps=0.01)
    assert torch.equal(cert.margin, reference.margin)
    assert [m.training for m in model.modules()] == [True, True, True, True, False, True]


class SquareModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        f = x.flatten(1)
        return self.head(f * f)


def test_a_product_of_bounded_tensors_is_known_before_any_attack_runs():
    model = SquareModel().eval()
    x = torch.rand(4, 1, 2, 2)
    with pytest.raises(UnsupportedOp, match=r"mul of two input-dependent tensors"):
        certify(model, x, model(x).argmax(1), eps=0.1)
    # the protocol learns it up front and goes on without certification; asked for by name, it is refused
    assert certification_method(None, "standard", model, None, x[:1]) is None
    with pytest.raises(ValueError, match="input-dependent"):
        certification_method("crown-ibp", None, model, None, x[:1])


def test_the_inplace_construction_end_to_end_is_refused_not_certified():
    """Issue 28's case 2: robust accuracy went from 0.0 to 1.0 through the certified skip."""
    model = Head(relu_module_inplace).eval()
    x = torch.full((4, 1, 1, 1), 0.5)
    y = model(x).argmax(1)
    with pytest.raises(ValueError, match="in-place relu"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluate(model, x, y, attacks=["fgsm"], eps=0.1, certify="crown-ibp")


def test_every_point_of_the_box_agrees_with_the_graph_on_a_model_that_passes():
    """The check itself: on a supported model it refuses nothing, over the box's corners."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 2), nn.ReLU(inplace=True), nn.AvgPool2d(2, 1), nn.Flatten(),
                          nn.Linear(2, 3)).eval()
    x = torch.rand(1, 1, 3, 3)
    y = model(x).argmax(1)
    cert = certify(model, x, y, eps=0.3)
    corners = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=9))).view(-1, 1, 3, 3)
    z = (x + 0.3 * corners).clamp(0, 1)
    assert (worst_margin(model, z, y.expand(len(z))).min() >= cert.margin[0] - 1e-6)
