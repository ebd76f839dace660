"""`karp-robust data download NAME`: put a dataset where karp-robust (and the tests) read it.

    karp-robust data download mnist --data-dir ../shared/data     # -> ../shared/data/MNIST/raw/

torchvision datasets (mnist, fashion-mnist, cifar10, cifar100, svhn) go through torchvision's own
download when they are not on disk yet. Offline, or when the download fails, the command exits with
code 2 and one line naming the exact files to put where (DatasetSpec.expected_files). digits ship inside
scikit-learn; ImageNet is never downloaded (its licence), so the command only checks that it is in place.
"""

from __future__ import annotations

from pathlib import Path

from robustbench_karp.data import DATASETS, DataUnavailable, default_data_dir, load_split


def download(name: str, data_dir: Path | None) -> str:
    """Make dataset `name` available under data_dir; returns a line saying what is there (DataUnavailable if not)."""
    spec = DATASETS.get(name)
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if name == "digits":
        return "digits: nothing to download, they ship inside scikit-learn"
    if name == "imagenet":
        try:
            test = load_split(spec, train=False, data_dir=root, download=False)
        except DataUnavailable as e:
            raise DataUnavailable(f"imagenet is never downloaded (ILSVRC-2012's licence): {e}") from None
        return f"imagenet: ready under {root} ({len(test)} evaluation images)"
    sizes = [len(load_split(spec, train=train, data_dir=root, download=True)) for train in (True, False)]
    return f"{name}: ready under {root} (train {sizes[0]}, test {sizes[1]} images)"


def cmd_data(args) -> int:
    try:
        print(download(args.dataset, args.data_dir))
    except DataUnavailable as e:  # without the advice to run this very command
        raise DataUnavailable(str(e).removesuffix(e.advice) + ", or give --data-dir DIR where they are") from None
    return 0
