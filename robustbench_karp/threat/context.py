"""What an attack or defense may need to know about the run it is part of, beyond (model, x, y).

Most attacks ignore it. An attack that trains something of its own (AdvGAN's generator) needs the
training data; a purifier defense (Defense-GAN) needs the data and the device to build its GAN.
The harness passes a RunContext to `Attack.bind` and `Defense.wrap`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from robustbench_karp.threat.ball import ThreatModel


@dataclass(frozen=True)
class RunContext:
    dataset: str  # registered dataset name
    model: str  # registered model name
    data_dir: Path | None = None  # None: $KARP_DATA_DIR or $KARP_HOME/data
    download: bool = True
    device: torch.device = torch.device("cpu")
    seed: int = 0
    checkpoint_sha256: str | None = None  # the classifier's weights identity (identity.weights_sha256)
    threat: ThreatModel | None = None  # the evaluation's threat model (None while only building the model)
