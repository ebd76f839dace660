"""The graph bound must be the model that runs: a trace-versus-eager check before any certificate is issued.

    check_consistent(model, graph, x, box)   # UnsupportedOp when the traced graph differs from model(x)

torch.fx traces forward() alone and turns some eager semantics into others: `h += y` becomes a new tensor
(eager mutates h, and every alias of it), a hook or an overridden __call__ never appears. Refusing each
known case by name (graph.py) cannot cover the ones nobody thought of, so certify also runs both: the
model in eager mode, watched for in-place aten ops the graph does not hold, and the graph's own rules on
zero-width boxes (exactly the function they bound), at up to 16 clean points and as many corners and
uniform draws of their boxes. The CROWN rules are checked the same way at a point, where their
relaxations are exact. It costs two forward passes and an IBP pass on 32 points per batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from robustbench_karp.certification.graph import Graph, UnsupportedOp
from robustbench_karp.certification.interval import Box, propagate
from robustbench_karp.certification.linear import InputSet, backward

CHECK_POINTS = 16  # clean points, and as many points of their boxes, run both ways per batch
TOLERANCE = 1e-4  # |graph - model| <= TOLERANCE * max(1, |largest logit|): float32 rounding is far below it
MISMATCH = "the traced graph differs from the model's forward (in-place op? hook? overridden __call__?)"


class _InPlaceWatch(TorchDispatchMode):
    """Records the in-place aten ops (add_, relu_, ...) a forward runs."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if (name.endswith("_") and not name.startswith("_")) or func._overloadname == "out":
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def eager_logits(model: nn.Module, graph: Graph, x: torch.Tensor) -> torch.Tensor:
    """model(x), refusing an in-place op the graph does not hold (the graph's own in-place relus run as relu_)."""
    watch = _InPlaceWatch()
    with torch.no_grad(), watch:
        out = model(x)
    allowed = sum(step.inplace for step in graph.steps)
    unseen = [n for n in watch.seen if n != "relu_"] + [n for n in watch.seen if n == "relu_"][allowed:]
    if unseen:
        raise UnsupportedOp(f"certification: {MISMATCH}: the forward runs the in-place op {unseen[0]} that the "
                            "traced graph does not hold (x += y on a tensor used again?)")
    if not torch.is_tensor(out):
        raise UnsupportedOp("certification: the model returns no single tensor")
    return out


def probe_points(box: Box, gen: torch.Generator) -> torch.Tensor:
    """Corners of the box for the first half of the points, uniform draws for the rest (float32, like the model)."""
    u = torch.rand(box.lower.shape, generator=gen, dtype=torch.float64, device="cpu").to(box.lower.device)
    half = (box.lower.shape[0] + 1) // 2
    u[:half] = (u[:half] > 0.5).to(u.dtype)
    return (box.lower + (box.upper - box.lower) * u).float()


def check_consistent(model: nn.Module, graph: Graph, x: torch.Tensor, box: Box, crown: bool,
                     seed: int = 0) -> torch.Tensor:
    """Raise UnsupportedOp when the graph's rules and the eager model disagree at x or at points of the box (up to
    CHECK_POINTS of each: the mismatches are structural); returns the model's float32 logits at every point of x
    (the certificate's rounding scale)."""
    gen = torch.Generator().manual_seed(seed)
    clean, k = x[:CHECK_POINTS].float(), min(len(box.lower), CHECK_POINTS)
    points = torch.cat([clean, probe_points(Box(box.lower[:k], box.upper[:k]), gen)])
    eager = eager_logits(model, graph, points)
    exact = points.double()
    traced = propagate(graph, exact, exact)[graph.output]
    traced = traced.lower if isinstance(traced, Box) else traced
    scale = eager.double().abs().amax(1, keepdim=True).clamp_min(1)
    if traced.shape != eager.shape or ((traced - eager.double()).abs() > TOLERANCE * scale).any():
        raise UnsupportedOp(f"certification: {MISMATCH}; certification refuses it")
    if crown:  # CROWN's rules at a point (zero-width boxes): exact when every rule reads its layer right
        few = exact[:2]
        values = propagate(graph, few, few)
        logits = eager.double()[:2]
        classes = logits.shape[1]
        spec = torch.eye(classes, dtype=torch.float64, device=x.device).unsqueeze(0).expand(len(few), -1, -1)
        bound = backward(graph, values, spec, InputSet(Box(few, few)))
        if ((bound - logits).abs() > TOLERANCE * scale[:2]).any():
            raise UnsupportedOp(f"certification: CROWN's linear bounds at a point differ from the model's forward "
                                f"({MISMATCH}); certification refuses it")
    if len(x) <= CHECK_POINTS:
        return eager[: len(x)]
    with torch.no_grad():
        return model(x)
