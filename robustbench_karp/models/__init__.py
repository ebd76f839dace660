"""Model registry. Adding a model: one file that registers a factory, plus one import line here."""

from robustbench_karp.models import certcnn, preact_resnet, resnet, smallcnn, stn, wide_resnet  # noqa: F401  (registration)
from robustbench_karp.models.base import MODELS, Classifier, Normalize, create_model

__all__ = ["MODELS", "Classifier", "Normalize", "create_model"]
