"""Where a model comes from, behind the one `--model` flag: its architecture, its normalization, its weights.

    --model resnet18                                  registered: trained on demand, or --checkpoint
    --model robustbench:Carmon2019Unlabeled           RobustBench's zoo: --dataset/--norm name its threat model;
                                                      weights from --checkpoint or <robustbench-dir>/<dataset>/<Linf|L2>/<ID>.pt
    --model path/to/my_net.py:build                   a user's module file and the function in it that returns
                                                      the nn.Module; --normalize none|MEAN,STD, --checkpoint
    --model torchvision:resnet50                      torchvision's classifiers; ImageNet normalization by default

Every source becomes the same `Classifier(Normalize, backbone)`, so attacks, records and identities
(the canonical state_dict hash) work the same for all. A module file is imported as Python code:
only the file the user names on the command line, and `reproduce` imports it only when its sha256
is the recorded one. Checkpoints are data (weights_only=True), never code.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_karp.data import DatasetSpec
from robustbench_karp.models import MODELS, Classifier, Normalize
from robustbench_karp.store import CheckpointError, file_sha256, load_checkpoint, state_dict_in

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
KINDS = ("registered", "robustbench", "file", "torchvision")


@dataclass(frozen=True)
class ModelSource:
    kind: str  # one of KINDS
    target: str  # the registered name, zoo ID, factory function or torchvision name
    path: Path | None = None  # the module file (kind "file")

    @property
    def external(self) -> bool:
        """True when the weights come from outside (nothing to train on demand)."""
        return self.kind != "registered"


def parse_model(text: str) -> ModelSource:
    """The source named by --model; a one-line ValueError (or UnknownName) for anything else."""
    if text.startswith("robustbench:"):
        target = text.split(":", 1)[1]
        if not target:
            raise ValueError("--model robustbench: needs a model ID, e.g. robustbench:Carmon2019Unlabeled")
        return ModelSource("robustbench", target)
    if text.startswith("torchvision:"):
        return ModelSource("torchvision", text.split(":", 1)[1])
    file, sep, factory = text.rpartition(":")
    if sep and file.endswith(".py"):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", factory):
            raise ValueError(f"--model {text}: {factory!r} is not a Python function name")
        return ModelSource("file", factory, Path(file))
    if text.endswith(".py"):
        raise ValueError(f"--model {text}: name the function that builds the model, e.g. {text}:build")
    MODELS.get(text)  # unknown names raise with the list of registered ones
    return ModelSource("registered", text)


def parse_normalize(text: str | None, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """--normalize: 'none' (the model takes [0, 1] pixels) or C means then C stds for a C-channel dataset."""
    if text is None or text.strip().lower() == "none":
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--normalize {text}: expected 'none' or comma-separated numbers") from None
    if len(values) != 2 * channels:
        example = "0.1307,0.3081" if channels == 1 else "0.4914,0.4822,0.4465,0.2471,0.2435,0.2616"
        raise ValueError(f"--normalize takes {channels} mean(s) then {channels} std(s) for this {channels}-channel "
                         f"dataset ({2 * channels} numbers, e.g. {example}); got {len(values)}")
    mean, std = tuple(values[:channels]), tuple(values[channels:])
    if any(s <= 0 for s in std):
        raise ValueError(f"--normalize {text}: every std must be > 0")
    return mean, std


def make_normalize(normalization: tuple | None, channels: int) -> Normalize:
    mean, std = normalization or ((0.0,) * channels, (1.0,) * channels)
    return Normalize(mean, std)


# --- loading weights strictly, with errors that say what is wrong ---------------------------------


def model_state(payload: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The state_dict inside a checkpoint (store.state_dict_in), with DataParallel's 'module.' removed."""
    state = state_dict_in(payload, path)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel / DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def mismatch(module: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """What keeps state from loading strictly into module (up to 5 of each kind), or None when it fits."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch (file vs model)", shapes)):
        if items:
            more = f" and {len(items) - 5} more" if len(items) > 5 else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
    return "; ".join(parts) or None


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    problem = mismatch(module, state)
    if problem:
        raise CheckpointError(f"checkpoint {path} does not fit this model ({problem})")
    module.load_state_dict(state, strict=True)


# --- building each kind ---------------------------------------------------------------------------


def import_factory(path: Path, factory: str, expected_sha256: str | None = None):
    """The function `factory` from the module file at path (imported as Python code, once per call)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if expected_sha256 and file_sha256(path) != expected_sha256:
        raise CheckpointError(f"model file {path} has changed since the record was made (sha256 differs)")
    name = f"karp_user_model_{file_sha256(path)[:16]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"model file {path} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling inside the user's module look themselves up here
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ValueError(f"model file {path} fails to import ({type(e).__name__}: {e})") from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        raise ValueError(f"model file {path} has no function {factory!r}")
    return fn


def build_from_file(source: ModelSource, expected_sha256: str | None = None) -> nn.Module:
    net = import_factory(source.path, source.target, expected_sha256)()
    if not isinstance(net, nn.Module):
        raise ValueError(f"{source.path}:{source.target}() returned a {type(net).__name__}, not a torch.nn.Module")
    return net


def build_torchvision(name: str, num_classes: int) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)  # classification models only
    if name not in known:
        raise ValueError(f"unknown torchvision classifier {name!r}; e.g. {', '.join(sorted(known)[:8])}, ...")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


@dataclass
class Loaded:
    """A built classifier with its weights, and what the record says about where it came from."""

    classifier: Classifier
    checkpoint: Path | None
    source: dict[str, Any]  # the EvalConfig's `source`: kind, identity and normalization


def load_external(source: ModelSource, spec: DatasetSpec, *, norm: str, normalize: str | None,
                  checkpoint: Path | None, robustbench_dir: Path | None,
                  file_sha: str | None = None) -> Loaded:
    """Build a zoo, file or torchvision model, strictly load its weights, and check it on one input."""
    if source.kind == "robustbench":
        if normalize is not None:
            raise ValueError("--normalize does not apply to RobustBench models: the zoo table fixes their normalization")
        loaded = _load_robustbench(source, spec, norm, checkpoint, robustbench_dir)
    else:
        if source.kind == "file":
            file_sha = file_sha or file_sha256(source.path) if source.path.is_file() else None
            backbone = build_from_file(source, file_sha)
            normalization = parse_normalize(normalize, spec.in_channels)
            info = {"kind": "file", "file": source.path.name, "factory": source.target, "sha256": file_sha}
        else:
            backbone = build_torchvision(source.target, spec.num_classes)
            normalization = parse_normalize(normalize, spec.in_channels) if normalize else (IMAGENET_MEAN, IMAGENET_STD)
            info = {"kind": "torchvision", "name": source.target}
        classifier = Classifier(make_normalize(normalization, spec.in_channels), backbone)
        if checkpoint is not None:
            payload = load_checkpoint(checkpoint)
            state = model_state(payload, checkpoint)
            load_strict(classifier if any(k.startswith("backbone.") for k in state) else backbone, state, checkpoint)
        info["normalization"] = _normalization_dict(normalization)
        loaded = Loaded(classifier, checkpoint, info)
    check_forward(loaded.classifier, spec, source)
    return loaded


def _load_robustbench(source: ModelSource, spec: DatasetSpec, norm: str, checkpoint: Path | None,
                      robustbench_dir: Path | None) -> Loaded:
    from robustbench_karp import zoo
    from robustbench_karp.store import karp_home

    entry = zoo.lookup(source.target, spec.name, norm)
    if entry.preprocessing not in (None, "Res256Crop224"):  # the only ImageNet preprocessing our loader does
        raise zoo.ZooError(f"{entry.model_id} needs RobustBench's {entry.preprocessing} preprocessing; karp-robust's "
                           f"{spec.name} loader does Res256Crop224 only")
    if checkpoint is None:
        root = robustbench_dir or karp_home() / "robustbench"
        checkpoint = zoo.checkpoint_location(root, entry)
        if not checkpoint.is_file():
            raise CheckpointError(f"no weights for {entry.model_id}: put RobustBench's {entry.model_id}.pt at "
                                  f"{checkpoint} (or pass --checkpoint FILE, or --robustbench-dir DIR)")
    backbone = zoo.build_backbone(entry)
    normalization = (tuple(entry.mean), tuple(entry.std)) if entry.mean is not None else None
    classifier = Classifier(make_normalize(normalization, spec.in_channels), backbone)
    state = zoo.convert_state_dict(entry, load_checkpoint(checkpoint))
    load_strict(backbone, state, checkpoint)
    info = {"kind": "robustbench", "id": entry.model_id, "threat": entry.threat, "family": entry.family,
            "normalization": _normalization_dict(normalization)}
    return Loaded(classifier, checkpoint, info)


def _normalization_dict(normalization: tuple | None) -> dict[str, list[float]] | None:
    return None if normalization is None else {"mean": list(normalization[0]), "std": list(normalization[1])}


def check_forward(classifier: nn.Module, spec: DatasetSpec, source: ModelSource) -> None:
    """One zero image through the model: a wrong channel count or class count is named now, in one line."""
    shape = (1, spec.in_channels, spec.input_size, spec.input_size)
    was_training = classifier.training
    classifier.eval()
    try:
        with torch.no_grad():
            out = classifier(torch.zeros(shape))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"model {describe(source)} fails on a {spec.name} input of shape {shape} ({first[:200]})") from None
    finally:
        classifier.train(was_training)
    if not isinstance(out, torch.Tensor) or out.shape != (1, spec.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model {describe(source)} returns {got} for one {spec.name} image; "
                         f"expected logits of shape (1, {spec.num_classes})")


def describe(source: ModelSource) -> str:
    if source.kind == "file":
        return f"{source.path}:{source.target}"
    return source.target if source.kind == "registered" else f"{source.kind}:{source.target}"
