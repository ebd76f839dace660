"""Regenerate robustbench_karp/zoo/table.json from a RobustBench checkout, reading its python with `ast`.

    git clone https://github.com/RobustBench/robustbench /tmp/rb
    python benchmarks/robustbench_zoo_table.py --robustbench-src /tmp/rb

Nothing of RobustBench is imported or run. Each zoo file (robustbench/model_zoo/{cifar10,cifar100,imagenet}.py)
is parsed; every entry's constructor expression is resolved against the definitions it names: __init__
signatures and defaults, super().__init__ arguments, mu/sigma buffers and the input transform at the top of
a subclass's forward. The result is one of our families (robustbench_karp/zoo/architectures) with its options
and mean/std, or a one-line reason why the entry is not supported.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ZOO_FILES = {"cifar10": "cifar10.py", "cifar100": "cifar100.py", "imagenet": "imagenet.py"}
THREATS = {"linf": "Linf", "l2": "L2", "common_corruptions": "corruptions"}
ARCH_PACKAGE = "robustbench.model_zoo.architectures"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "robustbench_karp" / "zoo" / "table.json"


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
    def __init__(self, root: Path):
        self.root = root
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
        return torchvision_spec(node, *evaluate_args(call_args, call_kwargs, mod, env, src))
    args, kwargs = evaluate_args(call_args, call_kwargs, mod, env, src)
    if (stem, node.name) in BUILDERS:
        init = method(node, "__init__")
        return BUILDERS[stem, node.name](bind(signature(init, True), args, kwargs, owner_mod, src))
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
        apply_forward(spec, forward, buffers, where)
    return spec


def apply_forward(spec: Spec, forward: ast.FunctionDef, buffers: dict, where: str) -> None:
    """The input transforms RobustBench subclasses put in front of their base network's forward."""
    body = [ast.unparse(s) for s in forward.body]
    calls_super = body[-1].startswith("return super(") and body[-1].endswith(".forward(x)")
    prologue = body[:-1] if calls_super else body
    if calls_super and prologue == ["x = (x - self.mu) / self.sigma"]:
        spec.mean, spec.std = buffers["mu"], buffers["sigma"]
    elif calls_super and prologue == ["x = 2.0 * x - 1.0"]:  # (x - 0.5) / 0.5
        spec.mean, spec.std = [0.5] * 3, [0.5] * 3
    elif calls_super and "std = x.std(dim=(1, 2, 3), keepdim=True)" in prologue:  # per-image standardization
        spec.options["input_standardization"] = True
    elif not calls_super and prologue[0] == "x = (x - self.mu) / self.sigma" and \
            "out = F.normalize(out, p=2, dim=1)" in prologue and spec.family == "wide_resnet":
        spec.mean, spec.std = buffers["mu"], buffers["sigma"]
        spec.options["normalized_head"] = True  # cosine logits: unit features times unit class vectors
    else:
        raise Unsupported(f"uses a custom forward ({where})")


ACTIVATIONS = {"Swish": "swish", "nn.SiLU": "silu", "nn.ReLU": "relu"}


def name_of(value, table: dict, what: str) -> str:
    if not isinstance(value, Ref) or value.name not in table:
        raise Unsupported(f"uses {what} {value}")
    return table[value.name]


def wide_resnet(a: dict) -> Spec:
    return Spec("wide_resnet", {"depth": a["depth"], "widen_factor": a["widen_factor"], "num_classes": a["num_classes"],
                                "sub_block1": a["sub_block1"], "bias_last": a["bias_last"]})


def dm_wide_resnet(a: dict) -> Spec:
    if a["num_input_channels"] != 3:
        raise Unsupported("uses DMWideResNet with num_input_channels != 3")
    no_padding(a)
    options = {"depth": a["depth"], "width": a["width"], "num_classes": a["num_classes"],
               "activation": name_of(a["activation_fn"], ACTIVATIONS, "activation")}
    return Spec("dm_wide_resnet", options, list(a["mean"]), list(a["std"]))


def dm_preact_resnet(a: dict) -> Spec:
    if a["num_input_channels"] != 3 or a["width"] != 0:
        raise Unsupported("uses DMPreActResNet with num_input_channels != 3 or width != 0")
    no_padding(a)
    options = {"depth": a["depth"], "num_classes": a["num_classes"],
               "activation": name_of(a["activation_fn"], ACTIVATIONS, "activation")}
    return Spec("dm_preact_resnet", options, list(a["mean"]), list(a["std"]))


def no_padding(a: dict) -> None:
    if a["padding"]:  # DeepMind's nets pad raw pixels before normalizing; our Normalize runs before the backbone
        raise Unsupported(f"pads its input by {a['padding']} before normalizing")


def preact_resnet(a: dict) -> Spec:
    block = name_of(a["block"], {"PreActBlock": "PreActBlock", "PreActBlockV2": "PreActBlockV2"}, "PreActResNet block")
    return Spec("preact_resnet", {"block": block, "num_blocks": a["num_blocks"], "num_classes": a["num_classes"],
                                  "bn_before_fc": a["bn_before_fc"], "out_shortcut": a["out_shortcut"]})


def resnet(a: dict) -> Spec:
    block = name_of(a["block"], {"BasicBlock": "basic", "Bottleneck": "bottleneck"}, "ResNet block")
    return Spec("resnet", {"block": block, "num_blocks": a["num_blocks"], "num_classes": a["num_classes"]})


TORCHVISION_ARCHS = {"resnet18", "resnet50", "wide_resnet50_2"}


def torchvision_spec(name: str, args: list, kwargs: dict) -> Spec:
    prefix, _, arch = name.rpartition(".")
    if prefix != "torchvision.models" or arch not in TORCHVISION_ARCHS or args:
        raise Unsupported(f"uses {name}")
    weights = "IMAGENET1K_V1" if kwargs.pop("pretrained", False) else None  # what pretrained=True loads
    return Spec("torchvision", {"arch": arch, **kwargs}, weights=weights)


BUILDERS = {
    ("arch:wide_resnet", "WideResNet"): wide_resnet,
    ("arch:dm_wide_resnet", "DMWideResNet"): dm_wide_resnet,
    ("arch:dm_wide_resnet", "DMPreActResNet"): dm_preact_resnet,
    ("arch:resnet", "PreActResNet"): preact_resnet,
    ("arch:resnet", "ResNet"): resnet,
}


def zoo_entries(mod: Module):
    """(threat, model_id, {'model': node, 'gdrive_id': node, ...}) in RobustBench's order."""
    for node in mod.tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in THREATS:
            for item in node.value.args[0].elts:  # OrderedDict([(id, {...}), ...])
                model_id, info = item.elts
                yield THREATS[node.targets[0].id], model_id.value, dict(zip((k.value for k in info.keys), info.values))


def table_entry(src: Source, mod: Module, info: dict) -> dict:
    gdrive = literal(info["gdrive_id"], mod, None)
    try:
        spec = resolve(src, mod, info["model"], None)
    except Unsupported as e:
        reason = str(e)
        if isinstance(gdrive, list):
            reason += f" and loads {len(gdrive)} checkpoints"
        return {"unsupported": reason}
    if isinstance(gdrive, list):
        return {"unsupported": f"loads {len(gdrive)} checkpoints into one {spec.family} ensemble"}
    entry = {"family": spec.family, "options": spec.options,
             "mean": [float(v) for v in spec.mean] if spec.mean is not None else None,
             "std": [float(v) for v in spec.std] if spec.std is not None else None,
             "source": f"torchvision:{spec.weights}" if spec.weights else f"gdrive:{gdrive}"}
    if "preprocessing" in info:
        entry["preprocessing"] = literal(info["preprocessing"], mod, None)
    return entry


def build_table(root: Path) -> dict:
    src = Source(root)
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    table: dict = {"_generated_from": {"repository": "https://github.com/RobustBench/robustbench",
                                       "commit": commit or None, "script": "benchmarks/robustbench_zoo_table.py"}}
    for dataset, stem in ZOO_FILES.items():
        mod = src.module(Path(stem).stem)
        for threat, model_id, info in zoo_entries(mod):
            table.setdefault(dataset, {}).setdefault(threat, {})[model_id] = table_entry(src, mod, info)
    return table


def dump(table: dict) -> str:
    """JSON with one line per model entry, so a diff of two regenerations reads entry by entry."""
    blocks = []
    for dataset, threats in table.items():
        if dataset.startswith("_"):
            blocks.append(f" {json.dumps(dataset)}: {json.dumps(threats)}")
            continue
        inner = []
        for threat, models in threats.items():
            rows = ",\n".join(f"   {json.dumps(i)}: {json.dumps(e)}" for i, e in models.items())
            inner.append(f"  {json.dumps(threat)}: {{\n{rows}\n  }}")
        blocks.append(f" {json.dumps(dataset)}: {{\n" + ",\n".join(inner) + "\n }")
    return "{\n" + ",\n".join(blocks) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robustbench-src", type=Path, required=True, help="a RobustBench checkout")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    table = build_table(args.robustbench_src.resolve())
    args.out.write_text(dump(table))
    for dataset, threats in table.items():
        for threat, models in threats.items() if not dataset.startswith("_") else ():
            ok = sum("family" in e for e in models.values())
            print(f"{dataset:9s} {threat:12s} {ok:3d} of {len(models):3d} supported")


if __name__ == "__main__":
    main()
