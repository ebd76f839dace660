"""Checkpoint files: written atomically, read with weights_only=True (a checkpoint is data, never code).

    save_checkpoint(path, {"state_dict": model.state_dict(), "config": {...}})
    payload = load_checkpoint(path)            # CheckpointError: missing, truncated, HTML, pickled code
    state = state_dict_in(payload, path)       # the state_dict inside {"state_dict": ...}, {"model": ...} or plain
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from robustbench_karp.store.files import atomic_write_bytes


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save, atomically. payload holds only tensors and plain types (weights_only-loadable)."""
    import torch  # here: the store's records and paths must not import torch (karp-robust list, leaderboard build)

    atomic_write_bytes(path, lambda f: torch.save(payload, f))


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, not loadable without code, or of another model."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True: a checkpoint is data, never code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")):
        raise CheckpointError(f"checkpoint {path} is an HTML page, not a PyTorch file (a failed download, such as "
                              "Google Drive's confirmation page): download it again")
    import torch

    try:
        with warnings.catch_warnings():  # garbage can look like an odd pickle protocol: no warning, one line
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes (any exception the unpickler trips on), a class
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if found:  # a well-formed file with a class in it: data-only loading refuses it, rightly
            raise CheckpointError(f"checkpoint {path} holds Python objects besides tensors ({found.group(1)}), and "
                                  "karp-robust loads checkpoints as data only (weights_only=True): re-save it with "
                                  "torch.save(model.state_dict(), path)") from None
        first = (str(e).strip().splitlines() or [""])[0]
        detail = type(e).__name__ + ("" if not first or "weights only load failed" in first.lower() else f": {first[:120]}")
        raise CheckpointError(f"checkpoint {path} is not a PyTorch file: its bytes are corrupted, truncated or of "
                              f"another format ({detail}); download or save it again") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a state dict")
    return payload


WRAPPERS = ("state_dict", "model_state_dict", "model", "last")  # "last": RobustBench's {"last": sd, "best": sd}


def state_dict_in(payload: Any, path: Path | str, wrappers: tuple[str, ...] = WRAPPERS) -> dict[str, Any]:
    """The state_dict inside a loaded checkpoint: the payload itself, or under one of `wrappers`, nested.

    The only unwrapping of checkpoints: karp-robust's own ({"state_dict": ..., "config": ...}), plain
    state_dicts, {"model": ...} and RobustBench's {"state_dict": ...} / {"last": ..., "best": ...}.
    Key prefixes (DataParallel's "module.") are the caller's to strip: what they mean depends on the model.
    """
    import torch

    def tensors_only(d: Any) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())

    while isinstance(payload, dict) and not tensors_only(payload):
        key = next((k for k in wrappers if isinstance(payload.get(k), dict)), None)
        if key is None:
            shown = ", ".join(map(str, list(payload)[:6]))
            raise CheckpointError(f"checkpoint {path} holds no state_dict of tensors: it is neither a state_dict nor "
                                  f"wrapped in {' or '.join(wrappers)}; top-level keys: {shown or 'none'}")
        payload = payload[key]
    if not tensors_only(payload):
        raise CheckpointError(f"checkpoint {path} holds no state_dict of tensors")
    return dict(payload)
