"""Each defense's training loss against an independent computation on a fixed batch.

The contract tests (test_defenses_contract.py) check that a defense's loss is finite and reaches every
parameter; a defense that trains on clean images passes them. Here every registered defense's
`loss(model, x, y, threat, gen)` must equal the loss written out below from its paper, on a lightly trained
MLP, a batch of 16 digits and a fixed generator seed. The expected values use none of the defenses' helpers
(no `ascend`, no `ThreatModel` method); they only repeat the generator's draws in the same order (a uniform
start is `(2 * rand - 1) * eps`, TRADES' start `0.001 * randn`). A new defense must add its entry to
EXPECTED: until it does, its test fails and names it.
"""

from __future__ import annotations

import pytest
import torch
from conftest import quick_train, seeded_mlp
from torch import nn
from torch.nn import functional as F

from robustbench_karp.defenses import DEFENSES, build_defense
from robustbench_karp.threat import ThreatModel

EPS = 0.2
SEED = 7
N = 16
OPTIONS = {"defense-gan": {"base": "pgd-at"}}  # defense-gan's classifier is trained by its base's loss


class Spy(nn.Module):
    """Wraps a model and keeps the input of every forward call (the last one is the training point)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.inputs = model, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.model(x)


@pytest.fixture(scope="module")
def model(digits):
    """Four epochs on 512 digits: about 86% clean, confident enough for PGD to matter (clean CE 0.8, PGD-AT's
    2.8), not so sure that MART's (1 - p_y) weight vanishes."""
    train, _ = digits
    x, y = train.batch(torch.arange(512))
    return quick_train(seeded_mlp(0, hidden=32), x, y, epochs=4, lr=5e-3, batch_size=32)


@pytest.fixture(scope="module")
def batch(digits):
    _, test = digits
    return test.batch(torch.arange(N))


# --- the losses, written out ------------------------------------------------------------------------


def input_grad(loss_of, x_adv: torch.Tensor) -> torch.Tensor:
    x_adv = x_adv.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_of(x_adv), x_adv)
    return g


def linf_pgd_step(x_adv, g, x, eps: float, step_size: float) -> torch.Tensor:
    """Sign step, projection onto the Linf ball around x, clip to [0, 1]."""
    return (x + (x_adv.detach() + step_size * g.sign() - x).clamp(-eps, eps)).clamp(0, 1)


def uniform_start(x, eps: float, gen: torch.Generator, clip: bool = True) -> torch.Tensor:
    start = x + (2 * torch.rand(x.shape, generator=gen) - 1) * eps  # uniform in the Linf ball
    return start.clamp(0, 1) if clip else start


def summed_ce(model, y):
    return lambda x_adv: F.cross_entropy(model(x_adv), y, reduction="sum")


def pgd_point(model, x, y, eps: float, seed: int, steps: int, step_size: float | None) -> torch.Tensor:
    """Madry's PGD on the cross-entropy: a uniform random start, then `steps` sign steps."""
    step_size = step_size if step_size is not None else 2.5 * eps / steps
    x_adv = uniform_start(x, eps, torch.Generator().manual_seed(seed))
    for _ in range(steps):
        x_adv = linf_pgd_step(x_adv, input_grad(summed_ce(model, y), x_adv), x, eps, step_size)
    return x_adv


def kl(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """(B,) KL(p || q) for probabilities p and log-probabilities log_q."""
    return (torch.xlogy(p, p) - p * log_q).sum(dim=1)


def standard_loss(model, x, y, eps, seed, config):
    return F.cross_entropy(model(x), y), x


def pgd_at_loss(model, x, y, eps, seed, config):
    x_adv = pgd_point(model, x, y, eps, seed, config["steps"], config["step_size"])
    return F.cross_entropy(model(x_adv), y), x_adv


def trades_point(model, x, eps, seed, steps: int, step_size: float | None, objective: str = "kl") -> torch.Tensor:
    """TRADES' inner maximization: from x + 0.001 N(0, I), sign steps on KL(p(x) || p(x_adv)) ("ce": on the CE
    of the clean prediction instead, the mistake the loss must not make)."""
    step_size = step_size if step_size is not None else 2.5 * eps / steps
    with torch.no_grad():
        p_clean = F.softmax(model(x), dim=1)  # (B, classes)
    x_adv = x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    if objective == "kl":
        loss_of = lambda x_adv: kl(p_clean, F.log_softmax(model(x_adv), dim=1)).sum()
    else:
        loss_of = summed_ce(model, p_clean.argmax(1))
    for _ in range(steps):
        x_adv = linf_pgd_step(x_adv, input_grad(loss_of, x_adv), x, eps, step_size)
    return x_adv


def trades_loss(model, x, y, eps, seed, config, objective: str = "kl"):
    """CE(f(x), y) + beta * KL(p(x) || p(x_adv)), batch mean (Zhang et al. 2019, eq. 5)."""
    x_adv = trades_point(model, x, eps, seed, config["steps"], config["step_size"], objective)
    logits = model(x)
    robust = kl(F.softmax(logits, dim=1), F.log_softmax(model(x_adv), dim=1)).mean()
    return F.cross_entropy(logits, y) + config["beta"] * robust, x_adv


def mart_terms(model, x, y, eps, seed, config):
    """(boosted CE, weighted KL, x_adv) of MART (Wang et al. 2020, eq. 9) at its PGD point, with the
    reference implementation's guards (1.0001, 1e-12) against log(0)."""
    x_adv = pgd_point(model, x, y, eps, seed, config["steps"], config["step_size"])
    logits_adv = model(x_adv)
    p_adv, p_clean = F.softmax(logits_adv, dim=1), F.softmax(model(x), dim=1)
    p_wrong = p_adv.masked_fill(F.one_hot(y, p_adv.shape[1]).bool(), -1.0).amax(dim=1)  # strongest wrong class
    boosted_ce = F.cross_entropy(logits_adv, y) - torch.log(1.0001 - p_wrong + 1e-12).mean()
    p_true = p_clean.gather(1, y[:, None]).squeeze(1)
    weighted_kl = (kl(p_clean, torch.log(p_adv + 1e-12)) * (1 - p_true)).mean()
    return boosted_ce, weighted_kl, x_adv


def mart_loss(model, x, y, eps, seed, config):
    boosted_ce, weighted_kl, x_adv = mart_terms(model, x, y, eps, seed, config)
    return boosted_ce + config["beta"] * weighted_kl, x_adv


def fgsm_at_loss(model, x, y, eps, seed, config):
    """Fast AT (Wong et al. 2020): one step of step_scale * eps from a uniform start, projected to the ball."""
    assert config["init"] == "uniform"
    start = uniform_start(x, eps, torch.Generator().manual_seed(seed), clip=config["clip_start"])
    x_adv = linf_pgd_step(start, input_grad(summed_ce(model, y), start), x, eps, config["step_scale"] * eps)
    return F.cross_entropy(model(x_adv), y), x_adv


def n_fgsm_loss(model, x, y, eps, seed, config):
    """N-FGSM (de Jorge et al. 2022): noise U[-2 eps, 2 eps], a step of eps, no projection, clip to [0, 1]."""
    start = uniform_start(x, config["noise_scale"] * eps, torch.Generator().manual_seed(seed), clip=config["clip_start"])
    g = input_grad(summed_ce(model, y), start)
    x_adv = (start + config["step_scale"] * eps * g.sign()).clamp(0, 1)
    return F.cross_entropy(model(x_adv), y), x_adv


def ibp_worst(model, x, y, eps):
    """IBP's worst-case logits -(z_y - z_k lower bounds), interval bounds through Flatten -> Linear -> ReLU -> Linear
    over [x - eps, x + eps] cut to [0, 1], the margin z_y - z_k folded into the last layer (written out here with no
    bound-propagation helper); row y is 0."""
    first, last = model[1], model[3]
    lower, upper = (x - eps).clamp(0, 1).flatten(1), (x + eps).clamp(0, 1).flatten(1)
    center, radius = (lower + upper) / 2, (upper - lower) / 2
    hidden_c = center @ first.weight.T + first.bias
    hidden_r = radius @ first.weight.abs().T
    h_lo, h_hi = (hidden_c - hidden_r).relu(), (hidden_c + hidden_r).relu()
    h_c, h_r = (h_lo + h_hi) / 2, (h_hi - h_lo) / 2
    w = last.weight[y].unsqueeze(1) - last.weight.unsqueeze(0)  # (B, K, hidden): w_y - w_k
    b = last.bias[y].unsqueeze(1) - last.bias.unsqueeze(0)
    return -((w * h_c.unsqueeze(1)).sum(-1) + b - (w.abs() * h_r.unsqueeze(1)).sum(-1))


def ibp_loss(model, x, y, eps, seed, config):
    """IBP (Gowal et al. 2018) at the end of its ramp: kappa * CE(z(x), y) + (1 - kappa) * CE(z_worst, y)."""
    kappa = config["kappa_end"]
    return kappa * F.cross_entropy(model(x), y) + (1 - kappa) * F.cross_entropy(ibp_worst(model, x, y, eps), y), x


EXPECTED = {
    "standard": standard_loss,
    "pgd-at": pgd_at_loss,
    "trades": trades_loss,
    "mart": mart_loss,
    "fgsm-at": fgsm_at_loss,
    "n-fgsm": n_fgsm_loss,
    "defense-gan": pgd_at_loss,  # with base=pgd-at (OPTIONS)
    "ibp": ibp_loss,
    "crown-ibp": ibp_loss,  # at the end of its ramp beta is 0: CROWN-IBP's bound is IBP's
}


def run_defense(name: str, model, x, y):
    """(loss, training point, config) of the registered defense: the training point is its model's last input,
    the config that of the defense whose loss trains the classifier (defense-gan's base)."""
    defense = build_defense(name, OPTIONS.get(name, {}))
    spy = Spy(model)
    loss, _ = defense.loss(spy, x, y, ThreatModel("linf", EPS), torch.Generator().manual_seed(SEED))
    inputs = [t for t in spy.inputs if isinstance(t, torch.Tensor)]  # not the proxies of a torch.fx trace (IBP)
    return loss, inputs[-1], defense.classifier_defense().config()


def clean_ce(model, x, y) -> float:
    with torch.no_grad():
        return F.cross_entropy(model(x), y).item()


@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_loss_matches_an_independent_computation(name, model, batch):
    if name not in EXPECTED:
        pytest.fail(f"defense {name!r} is registered but has no independent loss: add it to EXPECTED in {__file__}")
    x, y = batch
    loss, point, config = run_defense(name, model, x, y)
    expected, expected_point = EXPECTED[name](model, x, y, EPS, SEED, config)
    assert torch.allclose(point, expected_point, atol=1e-5), f"{name}: trains on another point than expected"
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6), f"{name}: loss {loss.item():.6f}, expected {expected.item():.6f}"
    if name != "standard":  # the batch tells adversarial training from clean training
        assert abs(expected.item() - clean_ce(model, x, y)) > 0.05


def test_pgd_at_parameter_gradient_is_that_of_ce_at_its_point(model, batch):
    """The inner attack is a constant of the training step: the parameter gradient is the CE's at x_adv."""
    x, y = batch
    loss, _, config = run_defense("pgd-at", model, x, y)
    got = torch.autograd.grad(loss, list(model.parameters()))
    expected = torch.autograd.grad(pgd_at_loss(model, x, y, EPS, SEED, config)[0], list(model.parameters()))
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(got, expected))


def test_trades_maximizes_kl_not_cross_entropy(model, batch):
    """The KL maximizer and the CE maximizer give losses far apart on this batch, and TRADES is the first."""
    x, y = batch
    loss, _, config = run_defense("trades", model, x, y)
    with_kl = trades_loss(model, x, y, EPS, SEED, config)[0].item()
    with_ce = trades_loss(model, x, y, EPS, SEED, config, objective="ce")[0].item()
    assert abs(with_kl - with_ce) > 0.01
    assert abs(loss.item() - with_kl) < 1e-4 < abs(loss.item() - with_ce)


def test_mart_counts_its_weighted_kl_term(model, batch):
    x, y = batch
    loss, _, config = run_defense("mart", model, x, y)
    boosted_ce, weighted_kl, _ = mart_terms(model, x, y, EPS, SEED, config)
    assert config["beta"] * weighted_kl > 0.05  # large enough that a MART without it is caught
    assert torch.allclose(loss, boosted_ce + config["beta"] * weighted_kl, rtol=1e-5)


def test_n_fgsm_trains_outside_the_eps_ball_but_inside_0_1(model, batch):
    x, y = batch
    _, point, config = run_defense("n-fgsm", model, x, y)
    assert (config["noise_scale"], config["step_scale"]) == (2.0, 1.0)  # the paper's defaults
    distance = (point - x).flatten(1).abs().amax(dim=1)  # (B,) Linf
    assert (distance > EPS + 1e-3).any(), "n-fgsm projected its training point onto the eps-ball"
    assert (distance <= 3 * EPS + 1e-6).all() and point.min() >= 0 and point.max() <= 1



class Sure(nn.Module):
    """The model with its logits scaled up: confident, so that softmax probabilities sit at 1 in bf16."""

    def __init__(self, model: nn.Module, scale: float):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        return self.scale * self.model(x)


def test_mart_loss_keeps_float32_precision_under_bf16_autocast(model, batch):
    """MART's MNIST recipe trains in bf16 autocast. Its boosted CE takes log(1.0001 - p): in bf16, 1.0001 is 1,
    and on confidently wrong points the loss grew by 8% here (a real MNIST run fell to chance in one epoch)."""
    x, _ = batch
    sure = Sure(model, 30.0)
    with torch.no_grad():
        wrong = (sure(x).argmax(1) + 1) % 10  # every point confidently misclassified
    defense = build_defense("mart", {})
    losses = []
    for bf16 in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = defense.loss(sure, x, wrong, ThreatModel("linf", EPS), torch.Generator().manual_seed(SEED))
        losses.append(loss.float().item())
    assert abs(losses[1] - losses[0]) <= 0.01 * abs(losses[0]), losses


def crown_margins(model, x, y, eps):
    """CROWN's margin lower bounds z_y - z_k for Flatten -> Linear -> ReLU -> Linear over [x - eps, x + eps] cut
    to [0, 1] (Zhang et al. 2018), written out: an unstable ReLU is bounded above by the chord through its
    pre-activation box's ends and below by slope 1 if u > -l else 0, each side chosen by the sign of its
    coefficient; the bound is then linear in x and minimized over the box."""
    first, last = model[1], model[3]
    lower, upper = (x - eps).clamp(0, 1).flatten(1), (x + eps).clamp(0, 1).flatten(1)
    center, radius = (lower + upper) / 2, (upper - lower) / 2
    hidden_c, hidden_r = center @ first.weight.T + first.bias, radius @ first.weight.abs().T
    lo, hi = hidden_c - hidden_r, hidden_c + hidden_r  # (B, H): IBP's pre-activation box
    unstable = (lo < 0) & (hi > 0)
    up_slope = torch.where(unstable, hi / (hi - lo).clamp_min(1e-30), (lo >= 0).float())
    up_bias = torch.where(unstable, -up_slope * lo, torch.zeros_like(lo))
    low_slope = torch.where(unstable, (hi > -lo).float(), (lo >= 0).float())
    c = last.weight[y].unsqueeze(1) - last.weight.unsqueeze(0)  # (B, K, H): w_y - w_k
    b = last.bias[y].unsqueeze(1) - last.bias.unsqueeze(0)
    slope = torch.where(c >= 0, low_slope.unsqueeze(1), up_slope.unsqueeze(1))
    relax_bias = torch.where(c >= 0, torch.zeros_like(c), up_bias.unsqueeze(1))
    a = c * slope  # (B, K, H): coefficients of the pre-activations
    lam = a @ first.weight  # (B, K, D): linear in x
    const = (a * first.bias).sum(-1) + (c * relax_bias).sum(-1) + b
    return (lam * center.unsqueeze(1)).sum(-1) - (lam.abs() * radius.unsqueeze(1)).sum(-1) + const


def test_crown_ibp_training_mixes_the_crown_and_ibp_bounds_by_beta_while_eps_ramps(model, batch):
    """Halfway through the ramp: kappa = 0.75 and beta = 0.5, so the worst-case logits are -(CROWN + IBP) / 2."""
    x, y = batch
    ramp = 0.5
    loss, _ = build_defense("crown-ibp", {}).loss(model, x, y, ThreatModel("linf", EPS), None, ramp=ramp)
    worst = ibp_worst(model, x, y, EPS)
    mixed = -0.5 * crown_margins(model, x, y, EPS) + 0.5 * worst  # row y: 0 in both
    mixed = mixed.masked_fill(F.one_hot(y, mixed.shape[1]).bool(), 0.0)
    expected = 0.75 * F.cross_entropy(model(x), y) + 0.25 * F.cross_entropy(mixed, y)
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6)
    ibp_only = 0.75 * F.cross_entropy(model(x), y) + 0.25 * F.cross_entropy(worst, y)
    assert abs(expected.item() - ibp_only.item()) > 1e-3  # the CROWN half matters on this batch
