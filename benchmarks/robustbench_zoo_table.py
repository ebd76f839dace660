"""Regenerate robustbench_karp/zoo/table.json from a RobustBench checkout, reading its python with `ast`.

    git clone https://github.com/RobustBench/robustbench /tmp/rb
    python benchmarks/robustbench_zoo_table.py --robustbench-src /tmp/rb

Nothing of RobustBench is imported or run. Each zoo file (robustbench/model_zoo/{cifar10,cifar100,imagenet}.py)
is parsed and every entry's constructor resolved by benchmarks/robustbench_source.py; this file maps
RobustBench's base networks, forward prologues and torchvision calls onto our families
(robustbench_karp/zoo/architectures) with their options and mean/std, or a one-line reason why not.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
from pathlib import Path

from robustbench_source import Module, Ref, Source, Spec, Unsupported, literal, resolve  # benchmarks/ is on sys.path

ZOO_FILES = {"cifar10": "cifar10.py", "cifar100": "cifar100.py", "imagenet": "imagenet.py"}
THREATS = {"linf": "Linf", "l2": "L2", "common_corruptions": "corruptions"}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "robustbench_karp" / "zoo" / "table.json"


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
    src = Source(root, BUILDERS, torchvision_spec, apply_forward)
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
