"""A model's computation graph for bound propagation, from torch.fx tracing: never a hand-listed model class.

    graph = trace(model)          # UnsupportedOp (one line, naming the op) for anything outside OPS
    for step in graph.steps: ...  # Step(name, kind, target, inputs, constants) in topological order

Supported: the Normalize module, conv2d, linear, relu, max and average pooling (adaptive included),
flatten/view/reshape, eval-mode batch norm, dropout and identity (no-ops in eval mode), residual `add`,
and arithmetic with constants. Anything else, such as the STN's grid_sample, is refused by name.

The graph bound must be what the model computes in eager mode (issue 28), so trace also refuses, naming
the op and the module path: arguments a rule does not model (rounding_mode, return_indices, alpha, any
unknown keyword), a product or quotient of two bounded tensors, forward hooks and pre-hooks (fx drops them;
a hook marked `observes_only`, such as the engine's pass counter, changes nothing and is allowed), and an
in-place activation whose input, or an alias of it, is read after it (eager reads the mutated value, the
graph the old one). What fx cannot show at all (`x += y`, an overridden __call__) consistency.py catches by
running both.
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
    kwargs: dict[str, Any] = field(default_factory=dict)  # a function's options by name (kernel_size, ...)
    where: str = ""  # the module path the op sits in, for messages
    inplace: bool = False  # an in-place activation: its output is its input's storage


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


# A function's options after its tensor input, in its own positional order (max_pool2d and avg_pool2d differ), and
# the keywords each kind accepts besides; anything else is refused by name rather than silently ignored.
POSITIONAL = {"maxpool": ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
              "avgpool": ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
              "adaptive_avgpool": ("output_size",), "relu": ("inplace",), "flatten": ("start_dim", "end_dim")}
KEYWORDS = {"add": ("alpha",), "sub": ("alpha",), "div": ("rounding_mode",), "size": ("dim",),
            "identity": ("memory_format",), "reshape": (), "mul": ()}
ALIASES = ("reshape", "flatten", "identity")  # steps whose output may share its input's storage


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, Normalize) or super().is_leaf_module(m, qualname)


def _name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '') or ''}.{getattr(fn, '__name__', repr(fn))}".lstrip(".")


def _where(node: fx.Node) -> str:
    """The module path an op sits in: 'blocks.0 (BasicBlock)', or the model's own forward."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "the model's forward"
    path, cls = list(stack.values())[-1]
    return f"{path} ({getattr(cls, '__name__', cls)})"


def trace(model: nn.Module, example: torch.Tensor | None = None) -> Graph:
    """The steps of model's forward, or UnsupportedOp naming the first operation outside OPS.

    example (one input) names the culprit when fx cannot trace the model at all (shapes used as Python
    values, as a spatial transformer's affine_grid does): the forward runs once, watching every torch call.
    """
    _check_hooks(model)
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
            steps.append(Step(node.name, kind, module, args, where=str(node.target),
                              inplace=kind == "relu" and bool(getattr(module, "inplace", False))))
        elif node.op in ("call_function", "call_method"):
            kind = FUNCTIONS.get(node.target) if node.op == "call_function" else METHODS.get(node.target)
            called = _name(node.target) if node.op == "call_function" else f"Tensor.{node.target}"
            if kind is None:
                raise UnsupportedOp(f"certification: the model calls {called} in {_where(node)}, which bound "
                                    f"propagation does not support; supported: {', '.join(OPS)}")
            steps.append(_call(node.name, kind, called, args, dict(node.kwargs), _where(node)))
    if output is None:
        raise UnsupportedOp("certification: the model returns no single tensor")
    _check_products(steps)
    _check_inplace(steps, output)
    return Graph(steps, output)


def _check_hooks(model: nn.Module) -> None:
    """fx traces forward() alone: a forward hook or pre-hook would change eager outputs the graph never shows."""
    from torch.nn.modules import module as registry

    places = [(f"{name or 'the model'} ({type(m).__name__})", m._forward_hooks, m._forward_pre_hooks)
              for name, m in model.named_modules()]
    places.append(("every module (a global hook)", registry._global_forward_hooks,
                   registry._global_forward_pre_hooks))
    for where, hooks, pre_hooks in places:
        for kind, table in (("forward hook", hooks), ("forward pre-hook", pre_hooks)):
            for hook in table.values():
                if not getattr(hook, "observes_only", False):
                    raise UnsupportedOp(f"certification: a {kind} on {where} ({_name(hook)}) can change what the model "
                                        "computes, and the traced graph does not run it; remove it to certify")


def _check_options(module: nn.Module, where: str) -> None:
    """Refuse the options of a supported module that its bound rules do not model."""
    problem = None
    if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
        problem = f"padding_mode={module.padding_mode!r}, padding={module.padding!r} (only explicit zero padding)"
    elif isinstance(module, nn.BatchNorm2d) and module.running_var is None:
        problem = "no running statistics (it normalizes by the batch even in eval mode)"
    elif isinstance(module, nn.AvgPool2d) and module.divisor_override is not None:
        problem = f"divisor_override={module.divisor_override}"
    elif isinstance(module, nn.MaxPool2d) and module.return_indices:
        problem = "return_indices=True"
    if problem:
        raise UnsupportedOp(f"certification: {type(module).__name__} ({where}) with {problem} is not supported")


def _call(name: str, kind: str, called: str, args: list[Any], kwargs: dict[str, Any], where: str) -> Step:
    """A function or method step, its options named in the called function's own order; options the bound
    rules do not model are refused by name."""
    names = POSITIONAL.get(kind)
    if names is not None:  # the tensor input stays positional; every option goes by name
        if len(args) - 1 > len(names):
            raise UnsupportedOp(f"certification: {called} in {where} with {len(args) - 1} positional options")
        kwargs = {**dict(zip(names, args[1:])), **kwargs}
        args = args[:1]
    if kind == "size" and "dim" in kwargs:  # x.size(dim=1) is x.size(1)
        args = [*args, kwargs.pop("dim")]
    allowed = (*(names or ()), *KEYWORDS.get(kind, ()))
    for key, value in kwargs.items():
        refused = key not in allowed or (key == "alpha" and value != 1) or (
            key in ("rounding_mode", "divisor_override") and value is not None) or (key == "return_indices" and value)
        if refused:
            raise UnsupportedOp(f"certification: {called}(..., {key}={value}) in {where} is not supported")
    return Step(name, kind, None, args, kwargs, where=where, inplace=kind == "relu" and bool(kwargs.get("inplace")))


def _check_products(steps: list[Step]) -> None:
    """A product or quotient of two tensors that both depend on the input has no linear bound here: refused when
    traced, so that an evaluation learns it before any attack runs."""
    bounded: set[str] = set()
    for step in steps:
        tensors = [a for a in step.inputs if isinstance(a, str) and a in bounded]
        if step.kind == "input" or (step.kind not in ("constant", "size") and tensors):
            bounded.add(step.name)
        if step.kind in ("mul", "div") and len(tensors) == 2:
            raise UnsupportedOp(f"certification: a {step.kind} of two input-dependent tensors ({step.name} in "
                                f"{step.where}) has no linear bound; supported: products with constants")


def _check_inplace(steps: list[Step], output: str) -> None:
    """An in-place activation overwrites its input: every alias of that storage read after it (or returned) reads the
    new value in eager mode, while the graph would bound the old one. Refused, naming the op; a plain
    conv -> ReLU(inplace=True) has no such reader and passes."""
    parent: dict[str, str] = {}

    def root(n: str) -> str:
        while parent.get(n, n) != n:
            n = parent[n]
        return n

    for step in steps:  # storage classes: an alias or an in-place step shares its input's storage
        if (step.kind in ALIASES or step.inplace) and step.inputs and isinstance(step.inputs[0], str):
            parent[root(step.name)] = root(step.inputs[0])
    kinds = {s.name: s.kind for s in steps}
    for i, step in enumerate(steps):
        if not step.inplace:
            continue
        shared = {s.name for s in steps if root(s.name) == root(step.name)}
        fresh = {step.name}  # what is derived from the new value, by aliasing, after the mutation
        for later in steps[i + 1:]:
            if (later.kind in ALIASES or later.inplace) and later.inputs and later.inputs[0] in fresh:
                fresh.add(later.name)
        stale = shared - fresh
        readers = [s for s in steps[i + 1:] if any(isinstance(a, str) and a in stale for a in s.inputs)]
        outside = any(kinds[n] in ("input", "constant") for n in stale)  # the caller's images, or a parameter
        if outside or readers or output in stale:
            what = "the model's input or a parameter" if outside else readers[0].name if readers else "the output"
            raise UnsupportedOp(f"certification: an in-place relu ({step.name} in {step.where}) overwrites a tensor "
                                f"that is used again ({what}); eager mode reads the new value, the graph the old one: "
                                "use inplace=False")


def pool_options(step: Step) -> dict[str, Any]:
    """A pooling step's options by name, from its module or from the function's normalized arguments."""
    if step.target is None:
        return dict(step.kwargs)
    names = POSITIONAL["maxpool" if step.kind == "maxpool" else "avgpool"]
    return {n: getattr(step.target, n) for n in names if hasattr(step.target, n)}


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
