"""A model's computation graph for bound propagation, from torch.fx tracing: never a hand-listed model class.

    graph = trace(model)          # UnsupportedOp (one line, naming the op) for anything outside OPS
    for step in graph.steps: ...  # Step(name, kind, target, inputs, constants) in topological order

Supported: the Normalize module, conv2d, linear, relu, max and average pooling (adaptive included),
flatten/view/reshape, eval-mode batch norm, dropout and identity (no-ops in eval mode), residual `add`,
and arithmetic with constants. Anything else, such as the STN's grid_sample, is refused by name.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F

from robustbench_karp.models import Normalize

MODULES = {nn.Conv2d: "conv", nn.Linear: "linear", nn.ReLU: "relu", nn.MaxPool2d: "maxpool", nn.AvgPool2d: "avgpool",
           nn.AdaptiveAvgPool2d: "adaptive_avgpool", nn.BatchNorm2d: "batchnorm", nn.Flatten: "flatten",
           Normalize: "normalize", nn.Identity: "identity", nn.Dropout: "identity"}
FUNCTIONS = {F.relu: "relu", torch.relu: "relu", operator.add: "add", torch.add: "add", operator.sub: "sub",
             torch.sub: "sub", operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div",
             torch.flatten: "flatten", F.max_pool2d: "maxpool", F.avg_pool2d: "avgpool",
             F.adaptive_avg_pool2d: "adaptive_avgpool"}
METHODS = {"view": "reshape", "reshape": "reshape", "flatten": "flatten", "relu": "relu", "add": "add", "size": "size",
           "sub": "sub", "mul": "mul", "div": "div", "contiguous": "identity", "clone": "identity",
           "detach": "identity"}  # the same values: a bound on them is a bound on their input
OPS = sorted({*MODULES.values(), *FUNCTIONS.values(), *METHODS.values()})


class UnsupportedOp(ValueError):
    """The model holds an operation bound propagation does not know; the message names it."""


@dataclass
class Step:
    name: str
    kind: str  # one of OPS, "input" or "output"
    target: Any  # the module (call_module), else None
    inputs: list[Any]  # node names (str) of tensor inputs, or constants, in call order
    kwargs: dict[str, Any] = field(default_factory=dict)  # a function's keyword arguments (kernel_size, ...)


@dataclass
class Graph:
    steps: list[Step]
    output: str  # the step whose value the model returns

    def consumers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for step in self.steps:
            for name in step.inputs:
                if isinstance(name, str):
                    out.setdefault(name, []).append(step.name)
        return out


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Normalize) or super().is_leaf_module(m, qualname)


def _name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '') or ''}.{getattr(fn, '__name__', repr(fn))}".lstrip(".")


def trace(model: nn.Module, example: torch.Tensor | None = None) -> Graph:
    """The steps of model's forward, or UnsupportedOp naming the first operation outside OPS.

    example (one input) names the culprit when fx cannot trace the model at all (shapes used as Python
    values, as a spatial transformer's affine_grid does): the forward runs once, watching every torch call.
    """
    try:
        traced = fx.GraphModule(model, _Tracer().trace(model))
    except Exception as e:  # data-dependent control flow and the like: fx cannot follow it
        culprits = _calls_outside(model, example) if example is not None else []
        what = f"uses {', '.join(culprits)}, which bound propagation does not support" if culprits else \
            f"cannot be traced by torch.fx ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        raise UnsupportedOp(f"certification: the model {what}; supported: {', '.join(OPS)}") from None
    modules = dict(traced.named_modules())
    steps, output = [], None
    for node in traced.graph.nodes:
        args = [a.name if isinstance(a, fx.Node) else a for a in node.args]
        if node.op == "placeholder":
            steps.append(Step(node.name, "input", None, []))
        elif node.op == "output":
            output = node.args[0].name if isinstance(node.args[0], fx.Node) else None
        elif node.op == "get_attr":
            steps.append(Step(node.name, "constant", _attribute(traced, node.target), []))
        elif node.op == "call_module":
            module = modules[node.target]
            kind = next((k for cls, k in MODULES.items() if type(module) is cls), None)
            if kind is None:
                raise UnsupportedOp(f"certification: the model uses {type(module).__name__} ({node.target}), which "
                                    f"bound propagation does not support; supported: {', '.join(OPS)}")
            _check_options(module, node.target)
            steps.append(Step(node.name, kind, module, args))
        elif node.op == "call_function":
            kind = FUNCTIONS.get(node.target)
            if kind is None:
                raise UnsupportedOp(f"certification: the model uses {_name(node.target)}, which bound propagation "
                                    f"does not support; supported: {', '.join(OPS)}")
            steps.append(_call(node.name, kind, _name(node.target), args, dict(node.kwargs)))
        elif node.op == "call_method":
            kind = METHODS.get(node.target)
            if kind is None:
                raise UnsupportedOp(f"certification: the model calls Tensor.{node.target}, which bound propagation "
                                    f"does not support; supported: {', '.join(OPS)}")
            steps.append(_call(node.name, kind, f"Tensor.{node.target}", args, dict(node.kwargs)))
    if output is None:
        raise UnsupportedOp("certification: the model returns no single tensor")
    return Graph(steps, output)


def _check_options(module: nn.Module, where: str) -> None:
    """Refuse the options of a supported module that its bound rules do not model."""
    problem = None
    if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
        problem = f"padding_mode={module.padding_mode!r}, padding={module.padding!r} (only explicit zero padding)"
    elif isinstance(module, nn.BatchNorm2d) and module.running_var is None:
        problem = "no running statistics (it normalizes by the batch even in eval mode)"
    elif isinstance(module, nn.AvgPool2d) and module.divisor_override is not None:
        problem = f"divisor_override={module.divisor_override}"
    if problem:
        raise UnsupportedOp(f"certification: {type(module).__name__} ({where}) with {problem} is not supported")


def _call(name: str, kind: str, called: str, args: list[Any], kwargs: dict[str, Any]) -> Step:
    """A function or method step; options the bound rules do not model are refused by name."""
    if kind == "size" and "dim" in kwargs:  # x.size(dim=1) is x.size(1)
        args, kwargs = [*args, kwargs.pop("dim")], kwargs
    if kind in ("add", "sub") and kwargs.get("alpha", 1) != 1:
        raise UnsupportedOp(f"certification: {called}(..., alpha={kwargs['alpha']}) is not supported")
    if kind == "avgpool" and (kwargs.get("divisor_override") is not None or
                              (len(args) > 6 and args[6] is not None)):
        raise UnsupportedOp(f"certification: {called} with divisor_override is not supported")
    return Step(name, kind, None, args, kwargs)


def _calls_outside(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The torch functions a forward calls that are outside the supported set, in call order."""
    from torch.overrides import TorchFunctionMode

    allowed = {*FUNCTIONS, F.conv2d, F.linear, F.batch_norm}
    seen: list[str] = []

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if func not in allowed and name not in METHODS and not name.startswith("__") and \
                    getattr(func, "__module__", "") in ("torch.nn.functional", "torch", "torch._C._nn"):
                seen.append(_name(func))
            return func(*args, **(kwargs or {}))

    try:
        with torch.no_grad(), Watch():
            model(example)
    except Exception:  # the names seen so far are what there is to say
        pass
    return list(dict.fromkeys(seen))


def _attribute(module: nn.Module, target: str) -> Any:
    for part in target.split("."):
        module = getattr(module, part)
    return module
