"""Identities that do not change when nothing that matters changed, and the conditions CPU numbers depend on.

    weights_sha256(model)     # a model is its weights: sorted keys, then name, dtype, shape and bytes
    cpu_conditions()          # threads, CPU capability, the processor, its vector ISA, deterministic algorithms:
                              # recorded, never hashed

A checkpoint file also holds training wall-clock seconds, logs and history, so its file sha256
changes between two otherwise identical trainings; the canonical state_dict hash does not.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import subprocess
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


def weights_sha256(weights: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 over the canonical state_dict: keys sorted, then each key's name, dtype, shape and raw bytes.

    Non-tensor entries (e.g. a `_metadata` attribute) are ignored; a key prefix such as DDP's
    `module.` is part of the name, so strip it before hashing if the layout should not count.
    """
    state = weights.state_dict() if isinstance(weights, nn.Module) else weights
    h = hashlib.sha256()
    for key in sorted(k for k, v in state.items() if isinstance(v, torch.Tensor)):
        t = state[key].detach().to("cpu").contiguous()
        h.update(f"{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cpu_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:  # torch < 2.1
        return "unknown"


# The flags BLAS and oneDNN kernels dispatch on: x86 `flags`, and ARM `Features` (NEON, SVE, SME, bf16, int8 mm).
X86_ISA = ("avx", "amx", "fma", "f16c")  # prefixes; not `sme`/`smep`, which are x86 security features
ARM_ISA = ("asimd", "sve", "sme", "bf16", "i8mm", "fphp")


def cpu_processor(cpuinfo: str | None = None) -> tuple[str, str]:
    """(processor, vector ISA flags) as the OS reports them: the same capability is not the same kernels.

    Measured: one ResNet-18 training gave different fp32 weights on two AVX512 machines at 2 threads,
    so the processor (vendor, family/model/stepping, name, cache) is recorded beside the capability.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux
            return platform.processor() or platform.machine(), ""
    first = dict(line.split(":", 1) for line in cpuinfo.split("\n\n")[0].splitlines() if ":" in line)
    first = {k.strip(): v.strip() for k, v in first.items()}
    if "vendor_id" in first:  # x86
        processor = (f"{first['vendor_id']} {first.get('cpu family', '?')}/{first.get('model', '?')}/"
                     f"{first.get('stepping', '?')} {first.get('model name', '?')}, cache {first.get('cache size', '?')}")
    elif "CPU implementer" in first:  # ARM
        processor = (f"ARM implementer {first['CPU implementer']} part {first.get('CPU part', '?')} "
                     f"variant {first.get('CPU variant', '?')} revision {first.get('CPU revision', '?')}")
    else:
        processor = platform.processor() or platform.machine()
    flags, prefixes = (first["flags"], X86_ISA) if "flags" in first else (first.get("Features", ""), ARM_ISA)
    return processor, " ".join(sorted(f for f in flags.split() if f.startswith(prefixes)))


def cpu_conditions() -> dict[str, object]:
    """What decides a CPU number beyond the configuration: thread count, processor and vector ISA, determinism."""
    processor, isa = cpu_processor()
    return {"threads": torch.get_num_threads(), "cpu_capability": cpu_capability(), "cpu": processor,
            "cpu_isa": isa, "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}


def cpu_differences(recorded: Mapping[str, object] | None) -> list[str]:
    """What differs between recorded CPU conditions and this machine's: capability, processor, ISA flags."""
    recorded, here, notes = recorded or {}, cpu_conditions(), []
    for key, name in (("cpu_capability", "CPU capability"), ("cpu", "processor")):
        if recorded.get(key) and recorded[key] != here[key]:
            notes.append(f"{name} differs: recorded {recorded[key]}, here {here[key]}")
    if recorded.get("cpu_isa") and recorded["cpu_isa"] != here["cpu_isa"]:
        was, now = set(str(recorded["cpu_isa"]).split()), set(str(here["cpu_isa"]).split())
        parts = [f"{label} {' '.join(sorted(flags))}" for label, flags in
                 (("lacks", was - now), ("adds", now - was)) if flags]
        notes.append(f"vector ISA differs: this machine {', '.join(parts)}")
    return notes


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist_name, key in [("torch", "torch"), ("torchvision", "torchvision"), ("torchattacks", "torchattacks"),
                           ("karp-robust", "karp_robust")]:
        try:
            out[key] = importlib.metadata.version(dist_name)
        except importlib.metadata.PackageNotFoundError:
            out[key] = "not installed"
    out["git_commit"] = git_commit()
    return out


def git_commit() -> str | None:
    """The source tree's commit (with '+dirty' for uncommitted changes), or None outside a git checkout."""
    here = Path(__file__).resolve().parent  # the package's checkout, wherever the command runs
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None
