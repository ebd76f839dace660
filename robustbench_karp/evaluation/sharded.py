"""Evaluation in fixed logical batches: results that do not depend on how the work was split.

    torchrun --standalone --nproc_per_node=4 -m robustbench_karp evaluate --model smallcnn --dataset mnist ...
    torchrun --nnodes=2 --node_rank=R --rdzv_endpoint=HOST:PORT --nproc_per_node=8 -m robustbench_karp evaluate ...

- The test points are cut into logical batches of `batch_size` (part of the EvalConfig). Batch b
  draws its randomness only from (seed, b): its own generator, and a randomized defense reseeded
  with the same number. A batch's result is the same whichever process runs it, and when.
- Under torchrun, rank r takes the batches b = r (mod world size); rank 0 gathers every batch's
  outcome (gloo on CPU, NCCL on GPUs: `all_gather_object`) and writes the one record, identical to
  the single-process record: masks, numbers and id.
- Every finished batch is kept under KARP_HOME/partial/results/<record id>/ (partial results, not records).
  An interrupted evaluation (Ctrl-C, a killed job, a lost node) started again with the same config
  skips them; its record is identical to an uninterrupted run's, and the partial results are
  removed once the record lands.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from robustbench_karp.devices import setup_distributed
from robustbench_karp.evaluation.engine import (
    BatchOutcome,
    EvalResult,
    attack_batches,
    batch_seed,
    combine,
    expand,
    reseed_randomized,
)
from robustbench_karp.store import atomic_write_bytes

log = logging.getLogger(__name__)
RNG = "per-batch/1"  # EvalConfig.rng of evaluations made here: batch b's randomness from (seed, b) alone


class PartialResults:
    """The finished batches of one evaluation config, one JSON file each, written atomically."""

    def __init__(self, store_path: Path, config_id: str, sizes: list[int]):
        # beside the results database they belong to: a re-run in a scratch store never resumes the user's
        self.dir = Path(store_path).parent / "partial" / Path(store_path).stem / config_id
        self.sizes = sizes  # points per logical batch: a file that does not match is ignored

    def path(self, b: int) -> Path:
        return self.dir / f"batch-{b:06d}.json"

    def load(self) -> dict[int, BatchOutcome]:
        found = {}
        for b, size in enumerate(self.sizes):
            path = self.path(b)
            if not path.is_file():
                continue
            try:
                outcome = BatchOutcome(**json.loads(path.read_text()))
            except (ValueError, TypeError):  # a file from another version: recompute the batch
                log.warning("ignoring unreadable partial result %s", path)
                continue
            if len(outcome.clean) == size:
                found[b] = outcome
        return found

    def save(self, b: int, outcome: BatchOutcome) -> None:
        text = json.dumps(asdict(outcome), sort_keys=True).encode()
        atomic_write_bytes(self.path(b), lambda f: f.write(text))

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        for parent in (self.dir.parent, self.dir.parent.parent):  # partial/results/, partial/ once empty
            try:
                parent.rmdir()
            except OSError:
                break


def evaluate_batches(model: nn.Module, plan, seed: int, batch_size: int, device: torch.device, store_path: Path,
                     on_batch: Callable[[int], None] | None = None, reporter=None) -> EvalResult | None:
    """Run plan's logical batches (this rank's share under torchrun), resuming from partial results.

    Returns the combined result on rank 0 (every batch present), None on the other ranks.
    """
    dist = setup_distributed(device)
    logical = list(plan.indices.split(batch_size))
    partial = PartialResults(store_path, plan.id, [len(idx) for idx in logical])
    outcomes = partial.load()
    if outcomes:
        log.info("resuming %s: %d of %d batches already done", plan.id, len(outcomes), len(logical))
        if on_batch is not None and dist.main:
            on_batch(sum(len(o.clean) for o in outcomes.values()))
    mine = [b for b in range(len(logical)) if b % dist.world == dist.rank and b not in outcomes]
    start = time.perf_counter()

    def keep(b: int, outcome: BatchOutcome) -> None:
        outcomes[b] = outcome
        partial.save(b, outcome)
        if on_batch is not None:
            on_batch(len(outcome.clean))

    def generator(b: int) -> torch.Generator:
        reseed_randomized(model, batch_seed(seed, b))
        return torch.Generator(device=device).manual_seed(batch_seed(seed, b))

    batches = ((b, *plan.test.batch(logical[b])) for b in mine)
    warnings = attack_batches(model, batches, plan.attacks, plan.threat, generator, device, keep, reporter)
    if dist.world > 1:
        import torch.distributed as tdist

        gathered = [None] * dist.world
        tdist.all_gather_object(gathered, (outcomes, warnings))
        for theirs, their_warnings in gathered:
            outcomes.update(theirs)
            warnings += [w for w in their_warnings if w not in warnings]
    if not dist.main:
        return None
    missing = [b for b in range(len(logical)) if b not in outcomes]
    if missing:
        raise RuntimeError(f"batches {missing[:5]} of {plan.id} have no result")
    names = [name for name, _ in expand(plan.attacks)]
    return combine([outcomes[b] for b in range(len(logical))], names, time.perf_counter() - start, device, warnings)
