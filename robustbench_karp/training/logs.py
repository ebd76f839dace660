"""Where the training loop reports: callbacks (the CLI's progress bar), JSONL/CSV logs, TensorBoard."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Protocol

from robustbench_karp.store import atomic_write_text


class Callback(Protocol):
    def on_step(self, epoch: int, step: int, steps: int, loss: float, accuracy: float) -> None: ...
    def on_epoch(self, metrics: dict[str, Any]) -> None: ...


def write_logs(path_stem: Path, history: list[dict[str, Any]]) -> None:
    """The per-epoch history as JSONL and CSV next to the checkpoint, rewritten atomically."""
    atomic_write_text(path_stem.with_suffix(".log.jsonl"), "".join(json.dumps(h, sort_keys=True) + "\n" for h in history))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(history[0]) if history else ["epoch"])
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path_stem.with_suffix(".log.csv"), out.getvalue())


class TensorBoardCallback:
    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(str(log_dir))

    def on_step(self, epoch, step, steps, loss, accuracy):
        pass

    def on_epoch(self, metrics):
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and key != "epoch":
                self.writer.add_scalar(key, value, metrics["epoch"])
        self.writer.flush()
