"""Per-example memory across epochs: what a defense remembers about each training example.

Prior-guided initialization (fgsm-at's `init="prior"`) starts each FGSM step from the example's
perturbation of the previous epoch, so one step per epoch accumulates into a multi-step attack.
Defenses stay stateless: the training loop owns the memory, hands a defense the rows of the
current batch, checkpoints it with --resume's state and, under torchrun, gathers every rank's
updates so that all ranks hold the same memory whichever rank sees an example next epoch.

    memory = ExampleMemory(len(data), (1, 28, 28), device)
    rows = memory.rows(idx)                       # rows.previous: (B, C, H, W), zeros if never stored
    loss, logits = defense.loss(model, x, y, threat, gen, memory=rows)   # the defense calls rows.store(delta)
    memory.update(idx, rows)                      # all-gathered across DDP ranks
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class BatchMemory:
    """The current batch's rows of an ExampleMemory; a defense reads `previous` and may `store` new rows."""

    previous: torch.Tensor  # (B, C, H, W) float32
    stored: torch.Tensor | None = None

    def store(self, value: torch.Tensor) -> None:
        if value.shape != self.previous.shape:
            raise ValueError(f"memory rows have shape {tuple(self.previous.shape)}, got {tuple(value.shape)}")
        self.stored = value.detach()


class ExampleMemory:
    """One float16 tensor per training example (the whole dataset's index space), zeros until stored."""

    def __init__(self, n: int, shape: tuple[int, ...], device: torch.device):
        self.values = torch.zeros(n, *shape, dtype=torch.float16, device=device)  # (N, C, H, W)

    def rows(self, idx: torch.Tensor) -> BatchMemory:
        return BatchMemory(self.values[idx.to(self.values.device)].float())

    def update(self, idx: torch.Tensor, batch: BatchMemory) -> None:
        """Write the stored rows (no-op if the defense stored none); every DDP rank receives every rank's rows."""
        if batch.stored is None:
            return
        idx = idx.to(self.values.device)
        value = batch.stored.to(self.values.device, torch.float16)
        if dist.is_initialized() and dist.get_world_size() > 1:
            # torchrun's DistributedSampler pads every rank to the same number of equal batches
            idxs, values = [torch.empty_like(idx) for _ in range(dist.get_world_size())], \
                [torch.empty_like(value) for _ in range(dist.get_world_size())]
            dist.all_gather(idxs, idx)
            dist.all_gather(values, value)
            idx, value = torch.cat(idxs), torch.cat(values)
        self.values[idx] = value

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"values": self.values}

    def load_state_dict(self, saved: dict[str, torch.Tensor]) -> None:
        if saved["values"].shape != self.values.shape:
            raise ValueError(f"saved memory has shape {tuple(saved['values'].shape)}, "
                             f"expected {tuple(self.values.shape)}")
        self.values.copy_(saved["values"])
