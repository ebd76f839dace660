"""Physical chunks: a logical batch run through the network in smaller pieces, with the same numbers.

    with physical_rows(125):                        # at most 125 rows per forward/backward
        outcome = attack_batch(model, x, y, ...)    # a logical batch of 500: identical results

The logical batch (EvalConfig.batch_size) decides the randomness: batch b draws from (seed, b), and
an attack draws its random starts for the whole logical batch at once. Physical chunking only cuts
the passes through the network (`loss_and_grad` in the ascent loop, `forward_rows` for predictions):
rows are independent in eval mode, so each row's loss and input gradient are what they would be in
one pass, and no random draw moves. That is the same independence the ascent loop's compaction
already relies on (its batches shrink as points break).

The engine halves the physical size when a batch runs out of GPU memory (`--batch-size auto` on the
CLI) and reruns the batch from its own generator state. An attack whose passes are not ours to cut
(torchattacks' classes, AutoAttack's components, AdvGAN) sets `splits = False`, and a model with
its own randomness (a Defense-GAN purifier draws per row of its input) cannot be cut either: out of
memory there is a clear error that says to pass a smaller --batch-size, a new config with its own id.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch

_ROWS: contextvars.ContextVar[int | None] = contextvars.ContextVar("karp_physical_rows", default=None)


# torch.OutOfMemoryError exists from torch 2.5; torch.cuda.OutOfMemoryError (its alias since) from 1.13. Looked
# up once here: an `except torch.OutOfMemoryError` evaluated on torch 2.4 would itself raise AttributeError.
OutOfMemoryError: type[BaseException] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class OutOfMemory(RuntimeError):
    """Out of device memory where a smaller physical batch cannot help without changing a number."""


@contextlib.contextmanager
def physical_rows(rows: int | None) -> Iterator[None]:
    """At most `rows` rows per pass through the network inside the block (None: the whole batch)."""
    if rows is not None and rows < 1:
        raise ValueError(f"physical rows must be >= 1, got {rows}")
    token = _ROWS.set(rows)
    try:
        yield
    finally:
        _ROWS.reset(token)


def row_limit() -> int | None:
    return _ROWS.get()


def pieces(n: int) -> list[slice]:
    """Row slices of a batch of n: one, or pieces of at most the physical size."""
    limit = _ROWS.get()
    if limit is None or n <= limit:
        return [slice(0, n)]
    return [slice(s, min(s + limit, n)) for s in range(0, n, limit)]


def loss_and_grad(objective: Callable, x_adv: torch.Tensor, idx: torch.Tensor
                  ) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(done, d loss.sum() / d x_adv) of objective(x_adv, idx) -> (loss (b,), done (b,) or None), piece by piece."""
    dones, grads = [], []
    for piece in pieces(len(x_adv)):
        rows = x_adv[piece].detach().requires_grad_(True)
        loss, done = objective(rows, idx[piece])
        (g,) = torch.autograd.grad(loss.sum(), rows)
        dones.append(done)
        grads.append(g)
    if len(grads) == 1:
        return dones[0], grads[0]
    return (None if dones[0] is None else torch.cat(dones)), torch.cat(grads)


def forward_rows(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """fn(x) for a row-wise fn (logits, predictions, done flags), piece by piece."""
    cut = pieces(len(x))
    if len(cut) == 1:
        return fn(x)
    return torch.cat([fn(x[piece]) for piece in cut])


def is_randomized(model: torch.nn.Module) -> bool:
    """Whether a module of model draws its own randomness (it can be reseeded): its draws follow its input's rows."""
    return any(callable(getattr(m, "reseed", None)) for m in model.modules())
