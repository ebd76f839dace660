"""CROWN's backward linear bounds (Zhang et al. 2018, https://arxiv.org/abs/1811.00866), with IBP boxes for every
intermediate relaxation: the final margins of CROWN-IBP (Zhang et al. 2020, https://arxiv.org/abs/1906.06316).

    lower = backward(graph, boxes, spec, input_set)     # (B, K): spec . output >= lower over the input set

Starting from the margin specification at the output, each step maps the linear coefficients A of its
output to its inputs: affine layers exactly (A W), ReLU by its relaxation over its input box (a line
through the box's corners above, slope 0 or 1 below, whichever leaves the smaller area), max-pooling
by the window's largest lower bound below and its largest upper bound above (the same input when one
input dominates its window). Constants collect in the bias, and the input set concretizes the rest:
the box's corners (Linf, the ball cut to [0, 1]) or the dual norm (L2). An op without a linear rule
stops the pass there: its IBP box concretizes what reached it (sound, looser).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from robustbench_karp.certification.graph import Graph, Step, pool_options
from robustbench_karp.certification.interval import Box, scale_shift


@dataclass
class InputSet:
    box: Box  # the ball cut to [0, 1] (Linf), or a box holding it (L2)
    center: torch.Tensor | None = None  # (B, C, H, W): L2 concretizes over the ball around it by its dual norm
    eps: float = 0.0


def _sum(t: torch.Tensor) -> torch.Tensor:
    """(B, K, ...) -> (B, K): a linear form applied to a constant."""
    return t.flatten(2).sum(-1)


def _concretize(a: torch.Tensor, box: Box) -> torch.Tensor:
    """min of a . h over h in box: a+ at the lower corner, a- at the upper one."""
    return _sum(a.clamp(min=0) * box.lower.unsqueeze(1) + a.clamp(max=0) * box.upper.unsqueeze(1))


def _relu(a: torch.Tensor, box: Box) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = box.lower.unsqueeze(1), box.upper.unsqueeze(1)
    active, unstable = lo >= 0, (lo < 0) & (hi > 0)
    upper_slope = torch.where(unstable, hi / (hi - lo).clamp_min(1e-30), active.to(a.dtype))
    upper_bias = torch.where(unstable, -upper_slope * lo, torch.zeros_like(lo))
    lower_slope = torch.where(unstable, (hi > -lo).to(a.dtype), active.to(a.dtype))
    pos, neg = a.clamp(min=0), a.clamp(max=0)
    return pos * lower_slope + neg * upper_slope, _sum(neg * upper_bias)


def _conv(a: torch.Tensor, m, in_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    b, k = a.shape[:2]
    flat = a.reshape(b * k, *a.shape[2:])  # (B*K, C_out, H', W')
    w = m.weight.to(a.dtype)
    sizes = [(o - 1) * s - 2 * p + d * (kk - 1) + 1 for o, s, p, d, kk in
             zip(flat.shape[2:], m.stride, m.padding, m.dilation, m.kernel_size)]
    extra = tuple(int(i - s) for i, s in zip(in_shape[2:], sizes))  # output_padding: the rows a stride dropped
    back = F.conv_transpose2d(flat, w, None, m.stride, m.padding, extra, m.groups, m.dilation)
    bias = _sum(a.flatten(3).sum(-1, keepdim=True) * m.bias.to(a.dtype).view(1, 1, -1, 1)) if m.bias is not None \
        else a.new_zeros(b, k)
    return back.reshape(b, k, *in_shape[1:]), bias


def _maxpool(a: torch.Tensor, box: Box, kw: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """None where windows are padded, dilated or ceil-rounded: the pass stops at the pool (its box concretizes)."""
    kernel = kw["kernel_size"]
    stride = kw.get("stride") or kernel
    if kw.get("padding", 0) not in (0, (0, 0)) or kw.get("dilation", 1) not in (1, (1, 1)) or kw.get("ceil_mode"):
        return None
    b, k, c, h, w = a.shape
    unfold = lambda t: F.unfold(t, kernel, stride=stride).view(t.shape[0], c, -1, a.shape[3] * a.shape[4])  # noqa
    lo, hi = unfold(box.lower), unfold(box.upper)  # (B, C, window, L)
    pick = lo.argmax(2, keepdim=True)  # the input with the largest lower bound: y >= x_pick always
    lo_pick = lo.gather(2, pick)
    others = hi.scatter(2, pick, float("-inf")).amax(2, keepdim=True)
    dominated = lo_pick >= others  # then y = x_pick exactly
    top = hi.amax(2, keepdim=True)  # y <= the largest upper bound, always
    flat = a.reshape(b, k, c, 1, -1)  # (B, K, C, 1, L)
    pos, neg = flat.clamp(min=0), flat.clamp(max=0)
    on_pick = pos + torch.where(dominated.unsqueeze(1), neg, torch.zeros_like(neg))
    bias = _sum(torch.where(dominated.unsqueeze(1), torch.zeros_like(neg), neg * top.unsqueeze(1)))
    windows = torch.zeros(b, k, c, lo.shape[2], flat.shape[-1], dtype=a.dtype, device=a.device)
    windows = windows.scatter(3, pick.unsqueeze(1).expand(b, k, c, 1, flat.shape[-1]), on_pick)
    back = F.fold(windows.reshape(b * k, c * lo.shape[2], -1), box.lower.shape[2:], kernel, stride=stride)
    return back.reshape(b, k, *box.lower.shape[1:]), bias


def _linear_map(a: torch.Tensor, fn, in_shape: torch.Size) -> torch.Tensor:
    """The transpose of a linear, bias-free map fn (pooling) applied to a, by one vector-Jacobian product."""
    b, k = a.shape[:2]
    with torch.enable_grad():
        h = torch.zeros(b * k, *in_shape[1:], dtype=a.dtype, device=a.device, requires_grad=True)
        (back,) = torch.autograd.grad(fn(h), h, a.reshape(b * k, *a.shape[2:]), create_graph=a.requires_grad)
    return back.reshape(b, k, *in_shape[1:])


def _step_back(step: Step, a: torch.Tensor, values: dict[str, Any]) -> tuple[list[tuple[str, torch.Tensor]], Any]:
    """[(input node, its coefficients)], bias (B, K); or ([], None) where the pass must stop at this step."""
    kind, m = step.kind, step.target
    x = step.inputs[0] if step.inputs else None
    box = values.get(x) if isinstance(x, str) else None
    if kind == "identity":
        return [(x, a)], 0
    if kind == "linear":
        bias = a @ m.bias.to(a.dtype) if m.bias is not None else 0
        return [(x, a @ m.weight.to(a.dtype))], bias
    if kind == "conv":
        back, bias = _conv(a, m, box.shape)
        return [(x, back)], bias
    if kind in ("batchnorm", "normalize"):
        scale, shift = scale_shift(m, a)
        return [(x, a * scale.unsqueeze(0))], _sum(a * shift.unsqueeze(0))
    if kind == "relu":
        back, bias = _relu(a, box)
        return [(x, back)], bias
    if kind == "maxpool":
        out = _maxpool(a, box, pool_options(step))
        return ([(x, out[0])], out[1]) if out is not None else ([], None)
    if kind == "avgpool":
        kw = pool_options(step)
        return [(x, _linear_map(a, lambda h: F.avg_pool2d(h, **kw), box.shape))], 0
    if kind == "adaptive_avgpool":
        size = m.output_size if m is not None else values.get(step.inputs[1], step.inputs[1]) if len(step.inputs) > 1 \
            else step.kwargs["output_size"]
        return [(x, _linear_map(a, lambda h: F.adaptive_avg_pool2d(h, size), box.shape))], 0
    if kind in ("flatten", "reshape"):
        return [(x, a.reshape(*a.shape[:2], *box.shape[1:]))], 0
    if kind in ("add", "sub", "mul", "div"):
        return _arithmetic_back(kind, step, a, values)
    return [], None


def _arithmetic_back(kind: str, step: Step, a: torch.Tensor, values: dict[str, Any]):
    first, second = (values.get(i, i) if isinstance(i, str) else i for i in step.inputs[:2])
    names = [i if isinstance(i, str) and isinstance(values.get(i), Box) else None for i in step.inputs[:2]]
    if names[0] and names[1]:  # box (op) box: only sums and differences are linear
        return ([(names[0], a), (names[1], a if kind == "add" else -a)], 0) if kind in ("add", "sub") else ([], None)
    box_name = names[0] or names[1]
    const = torch.as_tensor(second if names[0] else first, dtype=a.dtype, device=a.device)
    if kind == "add":
        return [(box_name, a)], _sum(a * const)
    if kind == "sub":
        return ([(box_name, a)], _sum(-a * const)) if names[0] else ([(box_name, -a)], _sum(a * const))
    if kind == "mul":
        return [(box_name, a * const)], 0
    return ([(box_name, a / const)], 0) if names[0] else ([], None)


def backward(graph: Graph, values: dict[str, Any], spec: torch.Tensor, inputs: InputSet) -> torch.Tensor:
    """Lower bounds (B, K) of spec . output over the input set; values: the IBP boxes of every step."""
    coefficients: dict[str, torch.Tensor] = {graph.output: spec}
    bias = spec.new_zeros(spec.shape[:2])
    for step in reversed(graph.steps):
        a = coefficients.pop(step.name, None)
        if a is None:
            continue
        if step.kind == "input":
            if inputs.center is None:
                bias = bias + _concretize(a, inputs.box)
            else:  # min over the L2 ball of a . x = a . center - eps ||a||_2 (the dual norm)
                bias = bias + _sum(a * inputs.center.unsqueeze(1)) - inputs.eps * a.flatten(2).norm(dim=2)
            continue
        flows, const = _step_back(step, a, values)
        if const is None:  # no linear rule here: what reached this step is bounded by its box
            bias = bias + _concretize(a, values[step.name])
            continue
        bias = bias + const
        for name, back in flows:
            shape = values[name].shape  # an input broadcast up to this step's shape: its coefficients sum back
            if back.shape[2:] != shape[1:]:
                back = back.sum_to_size(*back.shape[:2], *shape[1:])
            coefficients[name] = coefficients[name] + back if name in coefficients else back
    return bias
