"""Datasets: scikit-learn's embedded digits, torchvision's MNIST, Fashion-MNIST, CIFAR-10/100, SVHN, and ImageNet.

Loaders only turn images into tensors in [0, 1]; normalization lives in the model. Each dataset
carries its conventional threat model (default eps per norm) and its normalization statistics.

Fixed splits and subsets (documented in docs/datasets.md):
- digits: the 1797 images of `sklearn.datasets.load_digits`; every fifth image (index % 5 == 4)
  is the test split (359 images), the other 1438 are the training split.
- torchvision datasets use their official train/test splits.
- imagenet (imagenet.py): RobustBench's fixed 5,000 ILSVRC-2012 validation images, decoded per batch; no training split.
- `n_examples=N` is always the first N images of the test split in its canonical order.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustbench_karp.registry import Registry

log = logging.getLogger(__name__)


class DataUnavailable(RuntimeError):
    """The dataset is not on disk and could not be downloaded; the message says where to put it.

    .advice is the message's tail naming `--data-dir` and `karp-robust data download` (the command
    that downloads drops it: it would name itself).
    """

    def __init__(self, message: str, advice: str = ""):
        super().__init__(message + advice)
        self.advice = advice


@dataclass
class ImageSet:
    """Images (N, C, H, W), uint8 in [0, 255] or float in [0, 1], with labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[idx]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return x, self.labels[idx]

    def batches(self, indices: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yields (idx, x, y) in order; memory is bounded by batch_size, not len(indices)."""
        for idx in indices.split(batch_size):
            x, y = self.batch(idx)
            yield idx, x, y

    def identity(self, indices: torch.Tensor) -> str:
        """sha256 of exactly the test points evaluated: the stored images and labels at indices, in order.

        A record keeps it, so `reproduce` can say before it runs that the data on disk is not the data
        the record measured (another copy of the dataset, a corrupted file, another split).
        """
        h = hashlib.sha256(f"imageset/1|{self.images.dtype}|{tuple(self.images.shape[1:])}|".encode())
        for idx in indices.split(4096):
            h.update(self.images[idx].contiguous().numpy().tobytes())
            h.update(self.labels[idx].to(torch.int64).contiguous().numpy().tobytes())
        return h.hexdigest()


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    in_channels: int
    num_classes: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_eps: dict  # norm name -> eps in pixel units
    load: Callable[[DatasetSpec, Path, bool, bool], ImageSet]  # (spec, data_dir, train, download)
    expected_files: str  # what to put where, "{root}" is the data directory; for the offline error
    default_n_examples: int = 1000  # evaluated when n_examples is not given (capped at the test split's size)


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def default_data_dir() -> Path:
    from robustbench_karp.store import karp_home

    return Path(os.environ.get("KARP_DATA_DIR") or karp_home() / "data")


def load_split(spec: DatasetSpec, train: bool, data_dir: Path | None = None, download: bool = True) -> ImageSet:
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    return spec.load(spec, data_dir, train, download)


def subset_indices(n_test: int, n_examples: int | None) -> torch.Tensor:
    """The first n_examples points of the test split: the same N always gives the same points."""
    if n_examples is None:
        n_examples = n_test
    if n_examples < 1:
        raise ValueError(f"n_examples must be >= 1, got {n_examples}")
    if n_examples > n_test:
        raise ValueError(f"n_examples={n_examples} but the test split has only {n_test} points")
    return torch.arange(n_examples)


def load_dataset(name: str, split: str = "test", n: int | None = None,
                 data_dir: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (N, C, H, W) float in [0, 1], y (N,) int64): the first n points of a split, the CLI's fixed subset.

    >>> x, y = load_dataset("digits", split="test", n=200)
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data = load_split(DATASETS.get(name), train=split == "train", data_dir=data_dir)
    return data.batch(subset_indices(len(data), n))


# --- digits: embedded in scikit-learn, works offline ------------------------------------------


def _load_digits(spec: DatasetSpec, root: Path, train: bool, download: bool) -> ImageSet:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    index = np.arange(len(bunch.target))
    keep = index % 5 != 4 if train else index % 5 == 4
    images = torch.from_numpy(bunch.images[keep] / 16.0).float().unsqueeze(1)  # (N, 1, 8, 8)
    return ImageSet(images, torch.from_numpy(bunch.target[keep]).long())


DATASETS.register("digits")(DatasetSpec(
    "digits", 1, 10, 8, (0.3053,), (0.3760,), {"linf": 0.1, "l2": 1.0}, _load_digits,
    "nothing: digits ship inside scikit-learn",
))


# --- torchvision datasets ---------------------------------------------------------------------


def _open_torchvision(spec: DatasetSpec, cls, root: Path, kwargs: dict, download: bool):
    """torchvision's own loader: on disk if present, else its download, else a clear DataUnavailable."""
    where = spec.expected_files.format(root=root)
    advice = (f", give --data-dir DIR where they are, or run `karp-robust data download {spec.name} "
              f"--data-dir DIR` on a machine with network")
    try:
        return cls(str(root), download=False, **kwargs)
    except RuntimeError:
        if not download:
            raise DataUnavailable(f"{spec.name} not found under {root} (download disabled); put {where}",
                                  advice) from None
    log.info("%s not found under %s; downloading it through torchvision", spec.name, root)
    made = _missing_dirs(root)
    try:
        return cls(str(root), download=True, **kwargs)
    except Exception as e:  # network failures come as URLError, RuntimeError, OSError, ...
        _remove_empty(root, made)
        raise DataUnavailable(f"{spec.name} not found under {root} and the download failed "
                              f"({download_reason(e)}); put {where}", advice) from None


def download_reason(e: Exception) -> str:
    """One line from a failed download: torchvision's 'Error downloading X:' is followed by each mirror's reason."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    reasons = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.startswith("Tried ") and line.endswith("got:")]
    if reasons:
        head = lines[0].rstrip(":")
        tried = len(reasons)
        return f"{head}: {'; '.join(dict.fromkeys(reasons))}" + (f" (from {tried} mirrors)" if tried > 1 else "")
    text = " ".join(lines)
    return text if len(text) <= 300 else text[:297] + "..."


def _missing_dirs(root: Path) -> tuple[set[Path], list[Path]]:
    """(the folders under root now, root and its parents that do not exist yet): what a failed download may leave."""
    return _dirs_under(root), [p for p in (root, *root.parents) if not p.exists()]


def _dirs_under(root: Path, depth: int = 3) -> set[Path]:
    found, level = set(), [root] if root.is_dir() else []
    for _ in range(depth):
        level = [d for p in level for d in p.iterdir() if d.is_dir()]
        found.update(level)
    return found


def _remove_empty(root: Path, made: tuple[set[Path], list[Path]]) -> None:
    """Delete the empty folders a failed download created (torchvision makes <root>/MNIST/raw before it fetches)."""
    before, missing = made
    new = sorted(_dirs_under(root) - before, key=lambda p: len(p.parts), reverse=True)
    for folder in [*new, *missing]:  # deepest first; a folder that holds anything stays
        with contextlib.suppress(OSError):
            folder.rmdir()


def _idx_loader(cls_name: str):
    def load(spec: DatasetSpec, root: Path, train: bool, download: bool) -> ImageSet:
        import torchvision

        ds = _open_torchvision(spec, getattr(torchvision.datasets, cls_name), root, {"train": train}, download)
        return ImageSet(ds.data.unsqueeze(1).contiguous(), torch.as_tensor(ds.targets).long())  # (N, 1, 28, 28) uint8

    return load


def _cifar_loader(cls_name: str):
    def load(spec: DatasetSpec, root: Path, train: bool, download: bool) -> ImageSet:
        import torchvision

        ds = _open_torchvision(spec, getattr(torchvision.datasets, cls_name), root, {"train": train}, download)
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        return ImageSet(images, torch.as_tensor(ds.targets).long())

    return load


def _load_svhn(spec: DatasetSpec, root: Path, train: bool, download: bool) -> ImageSet:
    import torchvision

    kwargs = {"split": "train" if train else "test"}
    ds = _open_torchvision(spec, torchvision.datasets.SVHN, root / "SVHN", kwargs, download)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(ds.data)), torch.as_tensor(ds.labels).long())  # (N, 3, 32, 32)


_MNIST_EPS = {"linf": 0.3, "l2": 2.0}
_CIFAR_EPS = {"linf": 8 / 255, "l2": 0.5}
for _spec in [
    DatasetSpec("mnist", 1, 10, 28, (0.1307,), (0.3081,), _MNIST_EPS, _idx_loader("MNIST"),
                "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
                " in {root}/MNIST/raw/"),
    DatasetSpec("fashion-mnist", 1, 10, 28, (0.2860,), (0.3530,), _MNIST_EPS, _idx_loader("FashionMNIST"),
                "the four Fashion-MNIST idx files (train-images-idx3-ubyte, ...) in {root}/FashionMNIST/raw/"),
    DatasetSpec("cifar10", 3, 10, 32, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), _CIFAR_EPS, _cifar_loader("CIFAR10"),
                "the extracted cifar-10-batches-py/ folder (data_batch_1..5, test_batch, batches.meta) in {root}/"),
    DatasetSpec("cifar100", 3, 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), _CIFAR_EPS, _cifar_loader("CIFAR100"),
                "the extracted cifar-100-python/ folder (train, test, meta) in {root}/"),
    DatasetSpec("svhn", 3, 10, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), _CIFAR_EPS, _load_svhn,
                "train_32x32.mat and test_32x32.mat in {root}/SVHN/"),
]:
    DATASETS.register(_spec.name)(_spec)
