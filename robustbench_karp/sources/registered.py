"""A registered model's weights: a fresh network for a dataset, and a checkpoint loaded strictly into it.

    model = new_model("smallcnn", "mnist")     # Normalize(MNIST's mean, std) then the backbone
    payload = load_weights(model, path)        # karp-robust checkpoint or plain state_dict; CheckpointError naming keys

Which checkpoint a recipe trains into, and training it on demand, is training/checkpoints.py's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robustbench_karp.data import DATASETS
from robustbench_karp.models import Classifier, create_model
from robustbench_karp.sources.external import load_strict, model_state
from robustbench_karp.store import load_checkpoint


def new_model(name: str, dataset: str) -> Classifier:
    spec = DATASETS.get(dataset)
    return create_model(name, in_channels=spec.in_channels, num_classes=spec.num_classes,
                        input_size=spec.input_size, mean=spec.mean, std=spec.std)


def load_weights(model: Classifier, path: Path) -> dict[str, Any]:
    """Strictly load a karp-robust checkpoint (or a plain state_dict) into model; errors name the file and keys."""
    payload = load_checkpoint(path)
    state = model_state(payload, path)
    # A plain state_dict of the backbone alone (no "backbone." prefix) is accepted as well.
    load_strict(model if any(k.startswith("backbone.") for k in state) else model.backbone, state, path)
    return payload
