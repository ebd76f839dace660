"""Datasets: the images, their splits and their threat models; loaders only turn images into [0, 1] tensors.

    test = load_split(DATASETS.get("mnist"), train=False, data_dir=Path("../shared/data"))
    x, y = load_dataset("digits", split="test", n=200)     # (200, 1, 8, 8) in [0, 1]: the CLI's fixed points

    datasets.py     DatasetSpec and ImageSet; digits (scikit-learn), MNIST, Fashion-MNIST, CIFAR-10/100, SVHN
    imagenet.py     RobustBench's fixed 5,000 ILSVRC-2012 validation images (its id list in data_files/)

Adding a dataset: register a DatasetSpec in its own file, plus one import line here.
Layer: imports the registry and the store (the default data directory); never models or anything above.
"""

from robustbench_karp.data import imagenet  # noqa: F401  (registration)
from robustbench_karp.data.datasets import (
    DATASETS,
    DatasetSpec,
    DataUnavailable,
    ImageSet,
    default_data_dir,
    load_dataset,
    load_split,
    subset_indices,
)

__all__ = ["DATASETS", "DataUnavailable", "DatasetSpec", "ImageSet", "default_data_dir", "load_dataset", "load_split",
           "subset_indices"]
