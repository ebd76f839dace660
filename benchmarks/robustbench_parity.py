"""Golden logits of RobustBench's own networks, for the held-out parity test in tests/test_zoo.py.

    git clone https://github.com/RobustBench/robustbench /tmp/rb
    python benchmarks/robustbench_parity.py --robustbench-src /tmp/rb     # writes tests/golden/robustbench_logits.json

RobustBench's zoo files (robustbench/model_zoo/{cifar10,cifar100,imagenet}.py) are imported from the
checkout with its package __init__ files skipped and the modules that need timm, geotorch or torchdiffeq
replaced by stubs that raise when called, so only torch and torchvision are needed; RobustBench's
normalization subclasses (Wong2020FastNet, Rice2020OverfittingNetL2, ...) are its own code, not ours.

  layouts  every zoo entry that constructs without the stubs, built on the meta device: a hash of the
           sorted (key, shape) list of its state_dict, without normalization buffers (and without the
           "model." of ImageNet's Sequential(normalize, model)), exactly what our backbone must have;
  logits   for PARITY_IDS: the network built for real, filled by tests/zoo_weights.py (weights from
           (key, shape) alone), in eval mode, on torch.rand inputs from a seeded generator.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import subprocess
import sys
import types
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import torch
import torchvision
from torch import nn

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "golden" / "robustbench_logits.json"
ZOO_MODULES = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet"}
THREATS = {"linf": "Linf", "l2": "L2", "common_corruptions": "corruptions"}
# Modules that need packages we do not install; nothing we build touches them.
STUBS = ["timm", "geotorch", "torchdiffeq"] + [f"robustbench.model_zoo.architectures.{m}" for m in (
    "xcit", "deit", "alexnet", "comp_model", "sparsified_model", "convstem_models", "MIMIR_swin_transformer",
    "sodef_layers")]
# (dataset, threat, model ID, input shape): at least one ID per family and per forward variant.
PARITY_IDS = [
    ("cifar10", "Linf", "Standard", (2, 3, 32, 32)),  # wide_resnet 28-10
    ("cifar10", "Linf", "Carmon2019Unlabeled", (2, 3, 32, 32)),  # wide_resnet with sub_block1
    ("cifar10", "Linf", "Hendrycks2019Using", (2, 3, 32, 32)),  # wide_resnet behind 2x - 1
    ("cifar10", "Linf", "Ding2020MMA", (4, 3, 32, 32)),  # wide_resnet 28-4, per-image standardization
    ("cifar10", "Linf", "Pang2020Boosting", (1, 3, 32, 32)),  # wide_resnet 34-20, normalized head, mu/sigma
    ("cifar10", "Linf", "Gowal2020Uncovering_28_10_extra", (2, 3, 32, 32)),  # dm_wide_resnet, Swish
    ("cifar10", "Linf", "Rebuffi2021Fixing_R18_ddpm", (4, 3, 32, 32)),  # dm_preact_resnet
    ("cifar10", "Linf", "Wong2020Fast", (4, 3, 32, 32)),  # preact_resnet PreActBlock, mu/sigma
    ("cifar10", "L2", "Rice2020Overfitting", (4, 3, 32, 32)),  # preact_resnet PreActBlockV2, bn_before_fc
    ("cifar100", "Linf", "Rice2020Overfitting", (2, 3, 32, 32)),  # preact_resnet out_shortcut, 100 classes
    ("cifar10", "Linf", "Sehwag2021Proxy_R18", (4, 3, 32, 32)),  # resnet basic (ResNet-18)
    ("cifar10", "L2", "Engstrom2019Robustness", (2, 3, 32, 32)),  # resnet bottleneck (ResNet-50), mu/sigma
    ("imagenet", "Linf", "Standard_R50", (1, 3, 224, 224)),  # torchvision resnet50
    ("imagenet", "Linf", "Salman2020Do_50_2", (1, 3, 128, 128)),  # torchvision wide_resnet50_2 (any size: adaptive pool)
    ("imagenet", "Linf", "Chen2024Data_WRN_50_2", (1, 3, 64, 64)),  # resnet50 width 128, raw pixels
]
INPUT_SEED = 0


def load_by_path(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


zoo_weights = load_by_path("zoo_weights", REPO / "tests" / "zoo_weights.py")


class Stub(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"{self.__name__}.{name} is stubbed out")

        return unavailable


def import_zoo(root: Path) -> dict:
    """{dataset: {threat: {model ID: constructor}}} from RobustBench's own zoo files."""
    packages = {"robustbench": root / "robustbench", "robustbench.model_zoo": root / "robustbench" / "model_zoo",
                "robustbench.model_zoo.architectures": root / "robustbench" / "model_zoo" / "architectures"}
    for name, path in packages.items():  # skip the __init__ files, which import timm, requests, gdown
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        sys.modules[name] = package
    for name in STUBS:
        sys.modules[name] = Stub(name)
    zoo = {}
    for dataset, module_name in ZOO_MODULES.items():
        module = importlib.import_module(f"robustbench.model_zoo.{module_name}")
        zoo[dataset] = {THREATS[attr]: {k: v["model"] for k, v in getattr(module, attr).items()}
                        for attr in THREATS if hasattr(module, attr)}
    return zoo


def construct(constructor) -> nn.Module:
    """RobustBench's constructor, with torchvision's pretrained=True (Standard_R50) not downloading anything."""
    with ExitStack() as stack:
        for arch in ("resnet18", "resnet50", "wide_resnet50_2"):
            original = getattr(torchvision.models, arch)

            def no_download(*args, _original=original, pretrained=False, **kwargs):
                return _original(*args, **kwargs)

            stack.enter_context(mock.patch.object(torchvision.models, arch, no_download))
        return constructor()


def key_prefix(model: nn.Module) -> str:
    """ImageNet's Sequential(normalize, model) names the network's tensors model.<key>."""
    return "model." if isinstance(model, nn.Sequential) and hasattr(model, "normalize") else ""


def layout(model: nn.Module) -> dict[str, tuple[int, ...]]:
    prefix = key_prefix(model)
    return {k.removeprefix(prefix): tuple(v.shape) for k, v in model.state_dict().items()
            if k.removeprefix(prefix) not in zoo_weights.NORMALIZATION_KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robustbench-src", type=Path, required=True, help="a RobustBench checkout")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    root = args.robustbench_src.resolve()
    zoo = import_zoo(root)
    layouts, skipped = {}, []
    for dataset, threats in zoo.items():
        for threat, models in threats.items():
            for model_id, constructor in models.items():
                try:
                    with torch.device("meta"):
                        layouts[f"{dataset}/{threat}/{model_id}"] = zoo_weights.layout_hash(layout(construct(constructor)))
                except Exception as e:  # stubbed (timm, ...) or not buildable on meta: not ours to compare
                    skipped.append(f"{dataset}/{threat}/{model_id}: {type(e).__name__}")
    logits = {}
    for dataset, threat, model_id, shape in PARITY_IDS:
        torch.manual_seed(0)  # RobustBench's own initialization, before our fill overwrites it
        model = construct(zoo[dataset][threat][model_id]).eval()
        zoo_weights.fill_deterministic(model, key_prefix(model))
        x = torch.rand(shape, generator=torch.Generator().manual_seed(INPUT_SEED))
        with torch.no_grad():
            out = model(x)
        logits[f"{dataset}/{threat}/{model_id}"] = {
            "input_seed": INPUT_SEED, "input_shape": list(shape), "layout": zoo_weights.layout_hash(layout(model)),
            "logits": out.tolist()}
        print(f"{dataset}/{threat}/{model_id}: logits {tuple(out.shape)}, max |logit| {out.abs().max():.3g}")
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    about = {"robustbench_commit": commit or None, "torch": torch.__version__, "torchvision": torchvision.__version__,
             "script": "benchmarks/robustbench_parity.py", "skipped": skipped}
    sections = {"_about": about, "layouts": layouts, "logits": logits}
    args.out.write_text("{\n" + ",\n".join(  # one line per ID, so a regeneration diffs ID by ID
        f" {json.dumps(name)}: {{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in items.items()) + "\n }"
        for name, items in sections.items()) + "\n}\n")
    print(f"{len(layouts)} layouts, {len(logits)} logit sets, {len(skipped)} skipped -> {args.out}")


if __name__ == "__main__":
    main()
