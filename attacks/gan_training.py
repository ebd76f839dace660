"""Training helpers shared by the networks attacks and defenses train for themselves (AdvGAN, Defense-GAN).

    net = seeded(lambda: Generator(...), seed)               # reproducible init, global RNG untouched
    for x, y in training_batches(data, n, 64, epochs, seed, desc="advgan"):
        gradient_step(optimizer, loss, net)                  # only net's parameters get a .grad

Where the trained networks are kept (sha256-verified, under a file lock) is store/networks.py's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from robustbench_karp.data import ImageSet
from robustbench_karp.progress import progress


def seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """build() on the CPU with the CPU RNG seeded, then restored: reproducible initialization, global RNG untouched.

    Only the CPU generator is seeded (torch.manual_seed would also reseed every CUDA generator,
    which fork_rng(devices=[]) does not restore).
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return build()


def gradient_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, module: nn.Module) -> None:
    """A step on module's parameters only: autograd.grad, so no other network's .grad is touched."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p, g in zip(params, torch.autograd.grad(loss, params)):
        p.grad = g
    optimizer.step()


def training_batches(data: ImageSet, n: int, batch_size: int, epochs: int, seed: int,
                     desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of the first n images, reshuffled each epoch by a private generator, under a progress bar."""
    gen = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(n / batch_size)
    orders = (torch.randperm(n, generator=gen).split(batch_size) for _ in range(epochs))
    flat = (idx for order in orders for idx in order)
    for idx in progress(flat, total=epochs * per_epoch, desc=desc):
        yield data.batch(idx)
