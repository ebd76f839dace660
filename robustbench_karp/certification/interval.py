"""Interval bound propagation (IBP; Gowal et al. 2018, https://arxiv.org/abs/1810.12715) over a traced graph.

    bounds = propagate(graph, lower, upper)       # node name -> Box(l, u), or a concrete value (sizes, constants)

An affine map W h + b of a box with center c and radius r is the box W c + b +- |W| r; monotone maps
(relu, pooling, a positive per-channel scale) take the ends to the ends. Every step works in the dtype
of the input box and keeps autograd: float64 without gradients to certify, float32 with them to train.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from robustbench_karp.certification.graph import Graph, Step, UnsupportedOp, pool_options


@dataclass
class Box:
    lower: torch.Tensor  # (B, ...) elementwise lower bound
    upper: torch.Tensor  # (B, ...) elementwise upper bound

    @property
    def shape(self) -> torch.Size:
        return self.lower.shape

    def map(self, fn) -> Box:
        """A monotone non-decreasing elementwise or pooling map: the ends go to the ends."""
        return Box(fn(self.lower), fn(self.upper))


def affine(box: Box, linear, bias: torch.Tensor | None = None) -> Box:
    """linear(h) + bias over the box: center through the map, radius through its absolute value."""
    center, radius = (box.upper + box.lower) / 2, (box.upper - box.lower) / 2
    mid = linear(center, False)
    rad = linear(radius, True)
    if bias is not None:
        mid = mid + bias
    return Box(mid - rad, mid + rad)


def _param(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.to(like.dtype)


def scale_shift(module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel, shaped (1, C, 1, 1), of an eval-mode batch norm or a Normalize."""
    if module.__class__.__name__ == "Normalize":
        std, mean = module.std.to(like.dtype), module.mean.to(like.dtype)
        return 1 / std, -mean / std
    if module.training:
        raise UnsupportedOp("certification: a batch norm in train mode normalizes by its batch; use eval mode")
    scale = module.weight.to(like.dtype) / torch.sqrt(module.running_var.to(like.dtype) + module.eps) \
        if module.affine else 1 / torch.sqrt(module.running_var.to(like.dtype) + module.eps)
    shift = (module.bias.to(like.dtype) if module.affine else 0) - module.running_mean.to(like.dtype) * scale
    return scale.view(1, -1, 1, 1), torch.as_tensor(shift, dtype=like.dtype).view(1, -1, 1, 1)


def step_box(step: Step, args: list[Any]) -> Any:
    """One step of the graph on boxes (or concrete values)."""
    kind, m = step.kind, step.target
    x = args[0] if args else None
    if kind in ("identity",):
        return x
    if kind == "conv":
        w = m.weight.to(x.lower.dtype)
        conv = lambda t, absolute: F.conv2d(t, w.abs() if absolute else w, None, m.stride, m.padding,  # noqa: E731
                                            m.dilation, m.groups)
        return affine(x, conv, None if m.bias is None else _param(m.bias, x.lower).view(1, -1, 1, 1))
    if kind == "linear":
        w = m.weight.to(x.lower.dtype)
        return affine(x, lambda t, absolute: t @ (w.abs() if absolute else w).T, _param(m.bias, x.lower))
    if kind in ("batchnorm", "normalize"):
        scale, shift = scale_shift(m, x.lower)
        return affine(x, lambda t, absolute: t * (scale.abs() if absolute else scale), shift)
    if kind == "relu":
        return x.map(F.relu)
    if kind == "maxpool":
        kw = {k: v for k, v in pool_options(step).items() if k != "return_indices"}
        return x.map(lambda t: F.max_pool2d(t, **kw))
    if kind == "avgpool":
        kw = pool_options(step)
        return x.map(lambda t: F.avg_pool2d(t, **kw))
    if kind == "adaptive_avgpool":
        size = m.output_size if m is not None else (args[1] if len(args) > 1 else step.kwargs["output_size"])
        return x.map(lambda t: F.adaptive_avg_pool2d(t, size))
    if kind in ("flatten", "reshape"):
        return _reshape(step, x, args)
    if kind == "size":
        return x.shape if len(args) == 1 else x.shape[args[1]]
    if kind in ("add", "sub", "mul", "div"):
        return _arithmetic(kind, args[0], args[1])
    raise UnsupportedOp(f"certification: no interval rule for {kind}")


def _reshape(step: Step, x: Box, args: list[Any]) -> Box:
    if step.kind == "flatten":
        start = step.target.start_dim if step.target is not None else (args[1] if len(args) > 1 else
                                                                       step.kwargs.get("start_dim", 0))
        end = step.target.end_dim if step.target is not None else (args[2] if len(args) > 2 else
                                                                   step.kwargs.get("end_dim", -1))
        if start == 0:
            raise UnsupportedOp("certification: a flatten that merges the batch dimension")
        return x.map(lambda t: t.flatten(start, end))
    shape = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list, torch.Size)) else tuple(args[1:])
    shape = tuple(int(s) for s in shape)
    if not shape or shape[0] not in (-1, x.shape[0]):
        raise UnsupportedOp("certification: a view that changes the batch dimension")
    return x.map(lambda t: t.reshape(shape))


def _arithmetic(kind: str, a: Any, b: Any) -> Any:
    if isinstance(a, Box) and isinstance(b, Box):
        if kind == "add":
            return Box(a.lower + b.lower, a.upper + b.upper)
        if kind == "sub":
            return Box(a.lower - b.upper, a.upper - b.lower)
        raise UnsupportedOp(f"certification: {kind} of two bounded tensors (only sums of them are linear)")
    if not isinstance(a, Box) and not isinstance(b, Box):
        return {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}[kind](a, b)
    box, const, box_first = (a, b, True) if isinstance(a, Box) else (b, a, False)
    c = torch.as_tensor(const, dtype=box.lower.dtype, device=box.lower.device)
    if kind == "add":
        return Box(box.lower + c, box.upper + c)
    if kind == "sub":
        return Box(box.lower - c, box.upper - c) if box_first else Box(c - box.upper, c - box.lower)
    if kind == "div" and not box_first:
        raise UnsupportedOp("certification: division by a bounded tensor")
    factor = c if kind == "mul" else 1 / c
    lo, hi = box.lower * factor, box.upper * factor
    return Box(torch.minimum(lo, hi), torch.maximum(lo, hi))


def propagate(graph: Graph, lower: torch.Tensor, upper: torch.Tensor, stop: str | None = None) -> dict[str, Any]:
    """Boxes of every step (through `stop`, when given) for inputs in [lower, upper]."""
    values: dict[str, Any] = {}
    for step in graph.steps:
        if step.kind == "input":
            values[step.name] = Box(lower, upper)
        elif step.kind == "constant":
            values[step.name] = step.target
        else:
            values[step.name] = step_box(step, [values[a] if isinstance(a, str) and a in values else a
                                                for a in step.inputs])
        if step.name == stop:
            break
    return values
