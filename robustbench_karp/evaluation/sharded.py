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
- Partial results keep the conditions they ran under (versions, device type, threads, processor).
  A resume under other conditions would make one record of two runs that claims the last one's
  conditions: it is refused with one line saying what differs (`--restart` discards them). The
  record's elapsed time adds up every part: each batch file holds its part's time when it finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_karp.devices import setup_distributed
from robustbench_karp.evaluation.engine import (
    BatchOutcome,
    CertificationConflict,
    EvalResult,
    attack_batches,
    combine,
    expand,
)
from robustbench_karp.store import atomic_write_bytes

log = logging.getLogger(__name__)
RNG = "per-batch/1"  # EvalConfig.rng of evaluations made here: batch b's randomness from (seed, b) alone


def batch_seed(seed: int, b: int) -> int:
    """A 63-bit seed for batch b of an evaluation seeded with seed (independent streams, not seed + b)."""
    return int.from_bytes(hashlib.sha256(f"karp-batch:{seed}:{b}".encode()).digest()[:8], "little") >> 1


def reseed_randomized(model: nn.Module, seed: int) -> None:
    """Give every randomized module of model (a Defense-GAN purifier, ...) its batch's own random state."""
    for module in model.modules():
        reseed = getattr(module, "reseed", None)
        if callable(reseed):
            reseed(seed)


class ResumeRefused(ValueError):
    """Partial results made under other conditions than this run's: resuming would mix two runs in one record."""


class PartialResults:
    """The finished batches of one evaluation config, one JSON file each, written atomically, and their conditions."""

    def __init__(self, store_path: Path, config_id: str, sizes: list[int]):
        # beside the results database they belong to: a re-run in a scratch store never resumes the user's
        self.dir = Path(store_path).parent / "partial" / Path(store_path).stem / config_id
        self.sizes = sizes  # points per logical batch: a file that does not match is ignored
        self.part, self.started = uuid.uuid4().hex[:12], time.perf_counter()  # this process's part of the run
        self.earlier: dict[str, float] = {}  # earlier parts -> their time when their last kept batch finished

    def check_conditions(self, conditions: dict[str, Any]) -> None:
        """Refuse (ResumeRefused) to resume batches that ran under other conditions; record ours for later parts."""
        path = self.dir / "conditions.json"
        has_batches = self.dir.is_dir() and any(self.dir.glob("batch-*.json"))
        if has_batches:
            try:
                before = json.loads(path.read_text())
            except (OSError, ValueError):
                before = None
            differ = ["they were made by an older version, which did not record them"] if before is None else \
                [f"{k} {before.get(k, 'unrecorded')} then, {v} now" for k, v in sorted(conditions.items())
                 if before.get(k) != v]
            if differ:
                raise ResumeRefused(f"{len(list(self.dir.glob('batch-*.json')))} batches of {self.dir.name} were "
                                    f"evaluated under other conditions ({'; '.join(differ)}); resuming would mix two "
                                    "runs in one record: run again with --restart to discard them")
        else:
            atomic_write_bytes(path, lambda f: f.write(json.dumps(conditions, sort_keys=True).encode()))

    def path(self, b: int) -> Path:
        return self.dir / f"batch-{b:06d}.json"

    def load(self) -> dict[int, BatchOutcome]:
        found = {}
        for b, size in enumerate(self.sizes):
            path = self.path(b)
            if not path.is_file():
                continue
            try:
                saved = json.loads(path.read_text())
                part, seconds = saved.pop("part"), float(saved.pop("part_seconds"))
                outcome = BatchOutcome(**saved)
            except (ValueError, TypeError, KeyError, AttributeError):  # a file from another version: recompute the batch
                log.warning("ignoring unreadable partial result %s", path)
                continue
            if len(outcome.clean) == size:
                found[b] = outcome
                self.earlier[part] = max(self.earlier.get(part, 0.0), seconds)
        return found

    def save(self, b: int, outcome: BatchOutcome) -> None:
        saved = {**asdict(outcome), "part": self.part, "part_seconds": time.perf_counter() - self.started}
        text = json.dumps(saved, sort_keys=True).encode()
        atomic_write_bytes(self.path(b), lambda f: f.write(text))

    def elapsed(self) -> float:
        """Every part's time: the earlier parts' (to their last kept batch) and this one's so far."""
        return sum(seconds for part, seconds in self.earlier.items() if part != self.part) + \
            time.perf_counter() - self.started

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        for parent in (self.dir.parent, self.dir.parent.parent):  # partial/results/, partial/ once empty
            try:
                parent.rmdir()
            except OSError:
                break


def evaluate_batches(model: nn.Module, plan, seed: int, batch_size: int, device: torch.device, store_path: Path,
                     on_batch: Callable[[int], None] | None = None, reporter=None, restart: bool = False,
                     conditions: dict[str, Any] | None = None) -> EvalResult | None:
    """Run plan's logical batches (this rank's share under torchrun), resuming from partial results.

    restart discards partial results first; conditions (what the numbers depend on beyond the config)
    must match those the partial results were made under, else ResumeRefused.
    Returns the combined result on rank 0 (every batch present), None on the other ranks.
    """
    dist = setup_distributed(device)
    logical = list(plan.indices.split(batch_size))
    partial = PartialResults(store_path, plan.id, [len(idx) for idx in logical])
    if restart and dist.main:
        partial.clear()
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()  # every rank sees the cleared folder
        shared = [partial.part]  # one part per launch: its ranks run side by side, so the part's time is their max
        tdist.broadcast_object_list(shared, src=0)
        partial.part = shared[0]
    partial.check_conditions(conditions or {})
    outcomes = partial.load()
    if outcomes:
        log.info("resuming %s: %d of %d batches already done", plan.id, len(outcomes), len(logical))
        if on_batch is not None and dist.main:
            on_batch(sum(len(o.clean) for o in outcomes.values()))
    mine = [b for b in range(len(logical)) if b % dist.world == dist.rank and b not in outcomes]

    def keep(b: int, outcome: BatchOutcome) -> None:
        outcomes[b] = outcome
        partial.save(b, outcome)
        if on_batch is not None:
            on_batch(len(outcome.clean))

    def generator(b: int) -> torch.Generator:
        reseed_randomized(model, batch_seed(seed, b))
        return torch.Generator(device=device).manual_seed(batch_seed(seed, b))

    batches = ((b, *plan.test.batch(logical[b])) for b in mine)
    try:
        warnings = attack_batches(model, batches, plan.attacks, plan.threat, generator, device, keep, reporter,
                                  probes=plan.probes, certifier=plan.certifier, method=plan.config.certify,
                                  check_certified=plan.check_certified)
    except CertificationConflict as e:  # name the test point
        raise e.at(e.batch, int(logical[e.batch][e.position])) from None
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
    return combine([outcomes[b] for b in range(len(logical))], names, partial.elapsed(), device, warnings)
