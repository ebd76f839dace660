"""Read RobustBench's model zoo with `ast`: what each entry constructs, without importing or running RobustBench.

Used by benchmarks/robustbench_zoo_table.py. An entry's 'model' (a class, a function, or a lambda around a
call) is resolved through the definitions it names: __init__ signatures and defaults, functions that return
one call (ResNet18), subclasses' super().__init__ arguments and register_buffer('mu'/'sigma', ...) values,
module constants (CIFAR10_MEAN) and imports, down to a base network the caller knows how to map (a Spec), or
an Unsupported whose message is a one-line reason (e.g. "needs timm (comp_model.py)").
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ARCH_PACKAGE = "robustbench.model_zoo.architectures"


class Unsupported(Exception):
    """An entry outside our families; the message is the table's one-line reason."""


@dataclass(frozen=True)
class Ref:
    """A name that is not a literal (a class, an activation, a module attribute)."""

    name: str


@dataclass
class Module:
    path: Path
    tree: ast.Module
    constants: dict = field(default_factory=dict)
    classes: dict = field(default_factory=dict)
    functions: dict = field(default_factory=dict)
    imports: dict = field(default_factory=dict)  # local name -> (module stem or None, name in that module)


@dataclass
class Spec:
    family: str
    options: dict
    mean: list | None = None
    std: list | None = None
    weights: str | None = None  # torchvision weights RobustBench loads instead of a download


class Source:
    """A RobustBench checkout, parsed on demand, plus how its networks map onto ours.

    builders: {("arch:<file>", class name): bound __init__ arguments -> Spec}, the base networks we implement;
    outside(dotted name, args, kwargs) -> Spec, for callables outside RobustBench (torchvision.models.*);
    forward(spec, forward FunctionDef, buffers, where) adjusts spec to a subclass's forward, or raises Unsupported.
    """

    def __init__(self, root: Path, builders: dict, outside: Callable, forward: Callable):
        self.root, self.builders, self.outside, self.forward = root, builders, outside, forward
        self.modules: dict[str, Module] = {}

    def module(self, stem: str) -> Module:
        """stem: a zoo file ('cifar10') or an architecture file ('arch:wide_resnet')."""
        if stem not in self.modules:
            sub = Path("architectures") / stem[5:] if stem.startswith("arch:") else Path(stem)
            path = self.root / "robustbench" / "model_zoo" / sub.with_suffix(".py")
            self.modules[stem] = index(Module(path, ast.parse(path.read_text(), str(path))))
        return self.modules[stem]

    def timm_reason(self, stem: str, seen: frozenset = frozenset()) -> str | None:
        """'needs timm (x.py)' when an architecture module imports timm, directly or through another one."""
        mod = self.module(stem)
        for node in ast.walk(mod.tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0] == "timm" for n in names):
                return f"needs timm ({mod.path.name})"
        for owner, _ in mod.imports.values():
            if owner and owner.startswith("arch:") and owner not in seen and owner != stem:
                if self.timm_reason(owner, seen | {stem}):
                    return f"needs timm ({mod.path.name})"
        return None


def index(mod: Module) -> Module:
    for node in mod.tree.body:
        if isinstance(node, ast.ClassDef):
            mod.classes[node.name] = node
        elif isinstance(node, ast.FunctionDef):
            mod.functions[node.name] = node
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                mod.imports[alias.asname or alias.name] = import_owner(node, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                mod.imports[alias.asname or alias.name] = (None, alias.name)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                mod.constants[node.targets[0].id] = literal(node.value, mod, None)
            except Unsupported:
                pass
    return mod


def import_owner(node: ast.ImportFrom, name: str) -> tuple[str | None, str]:
    """Where an imported name lives: ('arch:<file>', name) for RobustBench's architecture files."""
    source = node.module or ""
    if node.level == 1:  # `from .wide_resnet import X` inside the architectures package
        source = f"{ARCH_PACKAGE}.{source}" if source else ARCH_PACKAGE
    if source == ARCH_PACKAGE:  # `from ...architectures import xcit` imports a module
        return f"arch:{name}", ""
    if source.startswith(ARCH_PACKAGE + "."):
        return f"arch:{source.rsplit('.', 1)[1]}", name
    return None, f"{source}.{name}"


def dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    raise Unsupported(f"unexpected expression {ast.unparse(node)}")


def literal(node: ast.AST, mod: Module, env: dict | None, src: Source | None = None):
    """A literal value; names resolve through env (call arguments), module constants, then imports."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [literal(e, mod, env, src) for e in node.elts]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -literal(node.operand, mod, env, src)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):  # [0.5] * 3, 64 * 2
        return literal(node.left, mod, env, src) * literal(node.right, mod, env, src)
    if isinstance(node, ast.Name):
        if env is not None and node.id in env:
            return env[node.id]
        if node.id in mod.constants:
            return mod.constants[node.id]
        owner, name = mod.imports.get(node.id, (None, None))
        if src is not None and owner and name and name in src.module(owner).constants:
            return src.module(owner).constants[name]
        return Ref(node.id)
    if isinstance(node, ast.Attribute):
        return Ref(dotted(node))
    raise Unsupported(f"not a literal: {ast.unparse(node)}")


def signature(fn: ast.FunctionDef, skip_self: bool) -> list[tuple[str, ast.AST | None]]:
    args = fn.args.args[1:] if skip_self else fn.args.args
    defaults = [None] * (len(args) - len(fn.args.defaults)) + list(fn.args.defaults)
    return [(a.arg, d) for a, d in zip(args, defaults)]


def bind(params, args: list, kwargs: dict, mod: Module, src: Source) -> dict:
    """Call arguments (already evaluated) bound to params; missing ones take their defaults."""
    bound = dict(zip((p for p, _ in params), args))
    bound.update(kwargs)
    for name, default in params:
        if name not in bound:
            if default is None:
                raise Unsupported(f"no value for argument {name}")
            bound[name] = literal(default, mod, None, src)
    return bound


def method(cls: ast.ClassDef, name: str) -> ast.FunctionDef | None:
    return next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == name), None)


def evaluate_args(call_args, call_kwargs, mod, env, src) -> tuple[list, dict]:
    args = [literal(a, mod, env, src) for a in call_args]
    kwargs = {k.arg: literal(k.value, mod, env, src) for k in call_kwargs}
    return args, kwargs


def resolve(src: Source, mod: Module, node: ast.AST, env: dict | None) -> Spec:
    """The family spec of a zoo entry's 'model' value: a class, a function, or a lambda around a call."""
    if isinstance(node, ast.Lambda):
        node = node.body
    if isinstance(node, ast.Call):
        return call(src, mod, dotted(node.func), node.args, node.keywords, env)
    return call(src, mod, dotted(node), [], [], env)


def call(src: Source, mod: Module, name: str, call_args, call_kwargs, env) -> Spec:
    if name == "normalize_model":  # RobustBench's (normalize, model) Sequential
        spec = resolve(src, mod, call_args[0], env)
        spec.mean, spec.std = (literal(a, mod, env, src) for a in call_args[1:3])
        return spec
    if name == "timm.create_model":
        raise Unsupported(f"needs timm ({literal(call_args[0], mod, env, src)})")
    owner_mod, stem, node = locate(src, mod, name)
    if isinstance(node, str):  # outside RobustBench, e.g. torchvision.models.resnet50
        return src.outside(node, *evaluate_args(call_args, call_kwargs, mod, env, src))
    args, kwargs = evaluate_args(call_args, call_kwargs, mod, env, src)
    if (stem, node.name) in src.builders:
        init = method(node, "__init__")
        return src.builders[stem, node.name](bind(signature(init, True), args, kwargs, owner_mod, src))
    if isinstance(node, ast.FunctionDef):
        body = [s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        if len(body) == 1 and isinstance(body[0], ast.Return) and isinstance(body[0].value, ast.Call):
            inner_env = bind(signature(node, False), args, kwargs, owner_mod, src)
            return resolve(src, owner_mod, body[0].value, inner_env)
        raise Unsupported(f"uses {node.name} in {owner_mod.path.name}")
    return subclass(src, owner_mod, node, args, kwargs)


def locate(src: Source, mod: Module, name: str):
    """(module, stem, ClassDef/FunctionDef) defining name, or the dotted name of an outside callable."""
    stem = next(k for k, v in src.modules.items() if v is mod)
    if name in mod.classes or name in mod.functions:
        return mod, stem, mod.classes.get(name) or mod.functions[name]
    head, _, rest = name.partition(".")
    if head not in mod.imports:
        raise Unsupported(f"uses {name}, defined outside the files this script reads")
    owner, original = mod.imports[head]
    if owner is None:
        return mod, stem, original + (f".{rest}" if rest else "")
    reason = src.timm_reason(owner)
    if reason:
        raise Unsupported(reason)
    return locate(src, src.module(owner), rest if original == "" else original)


def subclass(src: Source, mod: Module, cls: ast.ClassDef, args: list, kwargs: dict) -> Spec:
    """A RobustBench subclass of a base network: its super().__init__ arguments, mu/sigma and forward prologue."""
    where = f"{cls.name} in {mod.path.name}"
    if "updated from weights" in (ast.get_source_segment(mod.path.read_text(), cls) or ""):
        raise Unsupported(f"keeps its mean/std only in the checkpoint ({where})")
    init = method(cls, "__init__")
    env = bind(signature(init, True), args, kwargs, mod, src)
    supers = [n for n in ast.walk(init) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
              and n.func.attr == "__init__" and isinstance(n.func.value, ast.Call)]
    bases = [dotted(b) for b in cls.bases]
    if not supers or bases in (["nn.Module"], ["torch.nn.Module"]):
        raise Unsupported(f"uses {where}")
    spec = call(src, mod, bases[0], supers[0].args, supers[0].keywords, env)
    buffers = {}
    for node in ast.walk(init):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register_buffer":
            tensor = node.args[1].func.value  # torch.tensor(values).view(1, 3, 1, 1)
            buffers[literal(node.args[0], mod, env, src)] = literal(tensor.args[0], mod, env, src)
    forward = method(cls, "forward")
    if forward is not None:
        src.forward(spec, forward, buffers, where)
    return spec
