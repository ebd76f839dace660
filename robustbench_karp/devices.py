"""Where a run computes: the device, chosen once, and torchrun's process group.

    device = resolve_device("auto")      # cuda (this process's GPU under torchrun: LOCAL_RANK) or cpu
    env = setup_distributed(device)      # rank, world size; NCCL on GPUs, gloo on CPU
    torchrun --standalone --nproc_per_node=N -m robustbench_karp train ...
    torchrun --nnodes=2 --node_rank=R --rdzv_endpoint=HOST:PORT --nproc_per_node=N -m robustbench_karp train ...

DistributedDataParallel and the process group are PyTorch's; we only read torchrun's environment.
Layer: imports torch only; everything that places a tensor may import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


def resolve_device(device: str | torch.device = "auto", *, env: Mapping[str, str] | None = None,
                   cuda_available: bool | None = None) -> torch.device:
    """'auto' -> cuda when available, else cpu. Resolved once, at the entry point, before any model is placed.

    Under torchrun (LOCAL_RANK set) a CUDA device without an index is this process's own GPU, cuda:LOCAL_RANK:
    every rank placing its model on cuda:0 would fail on the first collective (or share one GPU).
    env and cuda_available default to the process's; tests pass their own.
    """
    env = os.environ if env is None else env
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if isinstance(device, torch.device):
        chosen = device
    elif device == "auto":
        chosen = torch.device("cuda" if available else "cpu")
    elif device in ("cpu", "cuda") or device.startswith("cuda:"):
        if device.startswith("cuda") and not available:
            raise ValueError("device 'cuda' requested but CUDA is not available")
        chosen = torch.device(device)
    else:
        raise ValueError(f"unknown device {device!r}; valid: auto, cpu, cuda")
    if chosen.type == "cuda" and chosen.index is None and env.get("LOCAL_RANK") is not None:
        chosen = torch.device("cuda", int(env["LOCAL_RANK"]))
    return chosen


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def any_rank(self, flag: bool | torch.Tensor) -> bool:
        """Whether flag holds on any rank, the same answer on every rank (one all_reduce with MAX).

        Every decision to leave the loop goes through this: a rank that stopped alone would leave
        the others waiting forever in DDP's next gradient all_reduce.
        """
        vote = torch.as_tensor(flag, device=self.device).float().reshape(1)
        if dist.is_initialized():
            dist.all_reduce(vote, op=dist.ReduceOp.MAX)
        return bool(vote.item())


def setup_distributed(device: torch.device) -> Distributed:
    """Join torchrun's process group when launched by torchrun (NCCL on CUDA, gloo on CPU).

    Under torchrun the model is wrapped in DDP even with one process, so a one-GPU machine
    exercises the same path as many.
    """
    if not {"RANK", "WORLD_SIZE", "MASTER_ADDR"} <= set(os.environ):
        return Distributed(0, 1, device)
    if device.type == "cuda":
        device = resolve_device(device if device.index is not None else "cuda")  # cuda:LOCAL_RANK
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), device)


def leave_process_group(ok: bool) -> None:
    """Leave torchrun's process group before exiting, after the others when all went well.

    Without it a rank that finishes first exits with gloo's threads still running (SIGABRT); after
    an error there is no barrier: the failed rank would never reach it, and torchrun stops the rest.
    """
    if not dist.is_initialized():
        return
    if ok:
        dist.barrier()
    dist.destroy_process_group()
