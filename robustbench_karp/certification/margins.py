"""Certified lower bounds of the worst margin, min over k != y of z_y - z_k, over a threat model's set.

    cert = certify(model, x, y, norm="linf", eps=0.3, method="crown-ibp")
    cert.certified          # (B,) bool: no point of the ball cut to [0, 1] changes the prediction away from y
    cert.margin             # (B,) float64 lower bound of the worst margin (> the safety margin: certified)

The specification z_y - z_k is folded into the last linear layer, as IBP and CROWN-IBP do: on a
Flatten -> Linear model both are then exact. Certificates are computed in float64 and must clear a
safety margin, so that they hold for the float32 model as evaluated (its rounding moves a logit by far
less: about 1e-6 relative on these networks). `margins` is the same computation in the input's dtype
with autograd, for certified training.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from robustbench_karp.certification.consistency import check_consistent
from robustbench_karp.certification.graph import Graph, UnsupportedOp, trace
from robustbench_karp.certification.interval import Box, propagate
from robustbench_karp.certification.linear import InputSet, backward
from robustbench_karp.threat import Norm, ThreatModel, budget_tolerance

METHODS = ("ibp", "crown-ibp")
SAFETY_ABSOLUTE, SAFETY_RELATIVE = 1e-4, 1e-5  # certified iff lower bound > 1e-4 + 1e-5 * max |logit at x|
PREFLIGHT_POINTS = 8  # points of the whole [0, 1] box at which preflight runs the model against its graph
PRECISION = {"bounds": "float64", "safety_margin": f"{SAFETY_ABSOLUTE:g} + {SAFETY_RELATIVE:g} * max|logit|"}


@dataclass
class Certificate:
    certified: torch.Tensor  # (B,) bool
    margin: torch.Tensor  # (B,) float64 lower bound of min_{k != y} z_y - z_k over the set


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"unknown certification method {method!r}; valid: {', '.join(METHODS)}")
    return method


def input_set(x: torch.Tensor, threat: ThreatModel) -> InputSet:
    """The threat model's set: the Linf ball cut to [0, 1] is a box; an L2 ball is bounded by its dual norm (and,
    for IBP, by the box that holds it)."""
    box = Box((x - threat.eps).clamp(0, 1), (x + threat.eps).clamp(0, 1))
    return InputSet(box) if threat.norm is Norm.LINF else InputSet(box, center=x, eps=threat.eps)


def specification(y: torch.Tensor, classes: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, K, K) rows e_y - e_k: row k is the margin of y over class k (row y is zero)."""
    eye = torch.eye(classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, method: str = "ibp",
            graph: Graph | None = None, mix: float | None = None) -> torch.Tensor:
    """(B, K) lower bounds of z_y - z_k over the set, in x's dtype, differentiable (row y is +inf).

    mix (crown-ibp only): None (certifying) takes the larger of the CROWN and IBP bounds, each sound; a number
    is CROWN-IBP training's beta, mix * CROWN + (1 - mix) * IBP (Zhang et al. 2020; 1 is CROWN alone).
    """
    check_method(method)
    graph = graph or trace(model, x[:1].float())
    inputs = input_set(x, threat)
    values = propagate(graph, inputs.box.lower, inputs.box.upper)
    out_step = next(s for s in graph.steps if s.name == graph.output)
    classes = values[graph.output].shape[1]
    spec = specification(y, classes, x.dtype)
    bound = _ibp_margins(out_step, values, spec)
    if method == "crown-ibp" and (mix is None or mix > 0):
        crown = backward(graph, values, spec, inputs)
        # Both are sound lower bounds, so certification takes the larger: CROWN's relaxation over IBP's boxes can
        # be looser than IBP itself on a network trained by IBP. Training mixes them (CROWN-IBP's beta).
        bound = torch.maximum(crown, bound) if mix is None else mix * crown + (1 - mix) * bound
    return bound.masked_fill(F.one_hot(y, classes).bool(), float("inf"))


def _ibp_margins(out_step, values: dict[str, Any], spec: torch.Tensor) -> torch.Tensor:
    """IBP's margins with the specification folded into the last linear layer (exact for one affine map)."""
    if out_step.kind == "linear":
        m, box = out_step.target, values[out_step.inputs[0]]
        w = spec @ m.weight.to(spec.dtype)  # (B, K, in)
        b = spec @ m.bias.to(spec.dtype) if m.bias is not None else 0
        center, radius = (box.upper + box.lower) / 2, (box.upper - box.lower) / 2
        return (w @ center.unsqueeze(-1)).squeeze(-1) + b - (w.abs() @ radius.unsqueeze(-1)).squeeze(-1)
    logits = values[out_step.name]  # no last linear layer: the logits' box, each margin from its ends
    lower_y = (spec.clamp(min=0) * logits.lower.unsqueeze(1)).sum(-1)
    return lower_y + (spec.clamp(max=0) * logits.upper.unsqueeze(1)).sum(-1)


@contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off for cuDNN convolutions and CUDA matmuls (cuDNN's is on by default): a certificate's safety margin
    covers float32 rounding, not TF32's 10-bit mantissa. The engine evaluates a certified run inside it."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@torch.no_grad()
def certify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str = "linf", eps: float = 0.3,
            method: str = "crown-ibp", batch_size: int = 200) -> Certificate:
    """Which points are certified, and the lower bound of each one's worst margin (see the module docstring).

    model must be deterministic; a model in train mode is certified in eval mode, with a warning, as the engine
    evaluates it (its mode is restored after). x (B, C, H, W) in [0, 1]. The set bounded is the ball an attack may
    reach: eps plus the budget check's rounding tolerance. On a GPU, the certificate holds for the model evaluated
    without TF32 (exact_float32). Before any bound, the traced graph is checked against the model's own forward at
    the points and in their box (consistency.py).
    UnsupportedOp (a ValueError) names an operation outside the supported set, or the mismatch.
    """
    check_method(method)
    asked = ThreatModel(norm, eps)
    threat = ThreatModel(norm, eps + budget_tolerance(asked))
    bounds, certified = [torch.zeros(0, dtype=torch.float64, device=x.device)], [torch.zeros(0, dtype=torch.bool,
                                                                                             device=x.device)]
    with in_eval_mode(model), exact_float32():
        graph = trace(model, x[:1])
        for b, (xb, yb) in enumerate(zip(x.split(batch_size), y.split(batch_size))):
            logits = check_consistent(model, graph, xb, input_set(xb.double(), threat).box, method == "crown-ibp",
                                      seed=b)  # the float32 model at x: its largest logit is its rounding's scale
            bound = margins(model, xb.double(), yb, threat, method, graph).amin(1)  # (b,) float64
            bounds.append(bound)
            certified.append(bound > SAFETY_ABSOLUTE + SAFETY_RELATIVE * logits.abs().amax(1).double())
    return Certificate(torch.cat(certified), torch.cat(bounds))


def preflight(model: nn.Module, example: torch.Tensor, method: str) -> None:
    """UnsupportedOp now, before any attack runs, where certify would refuse this model mid-evaluation: the trace,
    and its consistency with the model over the whole [0, 1] box, which runs every interval rule once (CROWN's
    rules refuse nothing: an op without one stops the backward pass at its box)."""
    with torch.no_grad(), in_eval_mode(model, warn=False), exact_float32():
        graph = trace(model, example[:1])
        shape = (PREFLIGHT_POINTS, *example.shape[1:])
        whole = Box(example.new_zeros(shape, dtype=torch.float64), example.new_ones(shape, dtype=torch.float64))
        check_consistent(model, graph, example[:1], whole, method == "crown-ibp")  # every interval rule runs


@contextmanager
def in_eval_mode(model: nn.Module, warn: bool = True) -> Iterator[None]:
    """Eval mode for every module while certifying (a train-mode dropout is no identity); restored in finally."""
    modes = {m: m.training for m in model.modules()}
    if warn and any(modes.values()):
        warnings.warn("certify: the model was in train mode; it is certified in eval mode, as the engine evaluates it",
                      stacklevel=3)
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


__all__ = ["METHODS", "PRECISION", "Certificate", "UnsupportedOp", "certify", "check_method", "exact_float32", "margins",
           "preflight"]
