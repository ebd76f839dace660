"""The gradient-masking sanity checks, each made to fire on a model or result built to trip it."""

import pytest
import torch
from conftest import Softmaxed
from torch import nn

from robustbench_karp.api import evaluate
from robustbench_karp.attacks import build_attack
from robustbench_karp.evaluation import checks
from robustbench_karp.evaluation.engine import EvalResult
from robustbench_karp.threat import ThreatModel


def result(clean, per_attack):
    return EvalResult(n_examples=100, clean_accuracy=clean, robust_accuracy=list(per_attack.values())[-1],
                      per_attack=per_attack, clean=[], robust=[], elapsed_seconds=0.0)


def test_single_step_beating_multi_step_is_flagged_only_in_that_order():
    pgd, fgsm = build_attack("pgd"), build_attack("fgsm")
    fired = checks.cascade_checks(result(0.9, {"pgd": 0.5, "fgsm": 0.4}), [pgd, fgsm], ["pgd", "fgsm"])
    assert len(fired) == 1 and "single-step fgsm" in fired[0] and "10.0%" in fired[0]
    assert checks.cascade_checks(result(0.9, {"pgd": 0.5, "fgsm": 0.5}), [pgd, fgsm], ["pgd", "fgsm"]) == []
    assert checks.cascade_checks(result(0.9, {"fgsm": 0.6, "pgd": 0.5}), [fgsm, pgd], ["fgsm", "pgd"]) == []


def test_black_box_beating_white_box_is_flagged():
    attacks = [build_attack("pgd"), build_attack("square")]
    fired = checks.cascade_checks(result(0.9, {"pgd": 0.5, "square": 0.45}), attacks, ["pgd", "square"])
    assert len(fired) == 1 and "black-box square" in fired[0]


def test_accuracy_rising_with_eps_is_flagged():
    sweep = [{"config": {"eps": 0.1}, "robust_accuracy": 0.40}, {"config": {"eps": 0.2}, "robust_accuracy": 0.30}]
    fired = checks.sweep_checks(result(0.9, {"pgd": 0.35}), ThreatModel("linf", 0.3), sweep)
    assert len(fired) == 1 and "rose from 0.3000 at eps 0.2" in fired[0]
    assert checks.sweep_checks(result(0.9, {"pgd": 0.25}), ThreatModel("linf", 0.3), sweep) == []


class Quantized(nn.Module):
    """Rounds its input to 0/1 before a classifier: zero input gradients, robust to small steps."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(torch.round(x))  # round's gradient is zero everywhere


class Noisy(nn.Module):
    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(x + 0.05 * torch.randn_like(x))


@pytest.fixture
def sample(digits):
    return digits[1].batch(torch.arange(100))


def test_a_plain_model_passes_the_model_checks(digits_model, sample):
    x, y = sample
    assert checks.model_checks(digits_model, x, y, [build_attack("pgd")]) == []
    assert checks.unbounded_check(digits_model, x, y, torch.device("cpu")) == []


def test_masked_gradients_fire_zero_gradient_and_unbounded_checks(digits_model, sample):
    x, y = sample
    masked = Quantized(digits_model).eval()
    assert any("zero or non-finite input gradients" in w for w in checks.model_checks(masked, x, y, []))
    assert any("unbounded attack" in w for w in checks.unbounded_check(masked, x, y, torch.device("cpu")))


def test_randomness_without_eot_and_probabilities_fire(digits_model, sample):
    x, y = sample
    with torch.random.fork_rng():
        fired = checks.model_checks(Noisy(digits_model).eval(), x, y, [build_attack("pgd")])
        assert any("differ on the same input" in w for w in fired)
        assert not any("differ" in w for w in checks.model_checks(Noisy(digits_model), x, y, [build_attack("eot-pgd")]))
    assert any("probabilities instead of logits" in w for w in checks.model_checks(Softmaxed(digits_model), x, y, []))


def test_obfuscated_gradients_warning_and_non_adaptive_figure():
    attacks = [build_attack("pgd"), build_attack("bpda-pgd")]
    fake = result(0.95, {"pgd": 0.80, "bpda-pgd": 0.20})
    assert checks.non_adaptive_accuracy(fake, attacks, ["pgd", "bpda-pgd"]) == 0.80
    assert checks.non_adaptive_accuracy(fake, [build_attack("bpda-pgd")], ["bpda-pgd"]) is None


def test_run_checks_collects_every_check_that_applies(digits_model, sample):
    x, y = sample
    masked = Quantized(digits_model).eval()
    out = evaluate(masked, x, y, attacks=[("pgd", {"steps": 5})], eps=0.1, device="cpu")
    fired = checks.run_checks(masked, x, y, out, [build_attack("pgd", {"steps": 5})], ["pgd"], ThreatModel("linf", 0.1),
                              torch.device("cpu"), [])
    assert any("unbounded" in w for w in fired) and any("zero or non-finite" in w for w in fired)


def test_entry_flags_compare_attacks_across_records():
    from robustbench_karp.boards.entries import entry_flags

    flags = entry_flags({"pgd": 0.6, "fgsm": 0.5, "autoattack": 0.4, "square": 0.7})  # square is black-box: no flag
    assert len(flags) == 1 and flags[0].startswith("single-step-beats-multi-step: pgd accuracy 0.6000 is above fgsm")


class OtherDevice(torch.Tensor):
    """CPU data that reports the meta device and, like a CUDA tensor, refuses to meet a CPU tensor in one op.

    Factory calls asked for the meta device (`torch.ones(n, device=x.device)`) are served by OnOtherDevice.
    """

    @staticmethod
    def __new__(cls, elem):
        return torch.Tensor._make_wrapper_subclass(cls, elem.shape, dtype=elem.dtype, device="meta")

    def __init__(self, elem):
        self.elem = elem

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        if any(type(t) is torch.Tensor and t.dim() > 0 for t in leaves):  # 0-dim CPU tensors mix, as with CUDA
            raise RuntimeError(f"{func}: expected all tensors to be on the same device, found a CPU tensor")
        unwrap = lambda t: t.elem if isinstance(t, OtherDevice) else t
        out = func(*torch.utils._pytree.tree_map(unwrap, args), **torch.utils._pytree.tree_map(unwrap, kwargs or {}))
        return torch.utils._pytree.tree_map(lambda t: OtherDevice(t) if type(t) is torch.Tensor else t, out)


class OnOtherDevice(torch.overrides.TorchFunctionMode):
    """Tensors created with device=meta get CPU data wrapped in OtherDevice."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.device(kwargs.get("device") or "cpu").type == "meta":
            return OtherDevice(func(*args, **{**kwargs, "device": "cpu"}))
        return func(*args, **kwargs)


def _probabilities_on(device):
    x, y = torch.rand(8, 1, 4, 4), torch.arange(8) % 4
    model = Softmaxed(nn.Flatten()).eval()  # (B, 16) probabilities, no parameters to move
    if device == "other":
        with OnOtherDevice():
            return checks.model_checks(model, OtherDevice(x), OtherDevice(y), [])
    return checks.model_checks(model, x.to(device), y.to(device), [])


@pytest.mark.parametrize("device", ["other", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_model_checks_build_their_tensors_on_the_outputs_device(device):
    assert OtherDevice(torch.ones(2)).device.type == "meta"
    with pytest.raises(RuntimeError, match="same device"):  # the simulated device catches a stray CPU tensor
        OtherDevice(torch.ones(2)) + torch.ones(2)
    assert any("probabilities instead of logits" in w for w in _probabilities_on(device))
