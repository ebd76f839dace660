"""Joining torchrun's process group: DistributedDataParallel is PyTorch's, we only read its environment.

    torchrun --standalone --nproc_per_node=N -m robustbench_karp train ...
    torchrun --nnodes=2 --node_rank=R --rdzv_endpoint=HOST:PORT --nproc_per_node=N -m robustbench_karp train ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


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
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
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
