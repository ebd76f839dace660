"""ImageNet (ILSVRC-2012 validation) as RobustBench evaluates it: a fixed 5,000-image subset, decoded per batch.

    karp-robust evaluate --dataset imagenet --model ... --checkpoint weights.pt --data-dir /data

The test split is exactly RobustBench's: the 5,000 images of `data_files/imagenet_test_image_ids.txt`
(paths relative to the val folder) in that file's order, labelled by `data_files/imagenet_class_to_id_map.json`
(wnid -> label, the sorted-wnid index that torchvision's ImageFolder and RobustBench's loader also give).
Both files are copied byte for byte from RobustBench (robustbench/helper_files/, MIT licence, unchanged since
commit 8aca095, Aug 2022). Preprocessing is RobustBench's `Res256Crop224`: Resize(256) on the shorter side
(PIL bilinear), CenterCrop(224), ToTensor; images are converted to RGB first (some are grayscale or CMYK).

On disk (never downloaded: ImageNet's licence needs a sign-up at image-net.org), one folder per class:
    <data_dir>/imagenet/val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG
RobustBench's own layout, <data_dir>/val/<wnid>/..., is accepted too. Only the 5,000 listed files are read.

There is no training split: karp-robust evaluates ImageNet models, it does not train them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from robustbench_karp.data.datasets import DATASETS, DatasetSpec, DataUnavailable, ImageSet

log = logging.getLogger(__name__)

DATA_FILES = Path(__file__).parent / "data_files"
SUBSET_IDS_FILE = DATA_FILES / "imagenet_test_image_ids.txt"
CLASS_MAP_FILE = DATA_FILES / "imagenet_class_to_id_map.json"
LAYOUT = "{val}/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG"


def subset_ids() -> list[str]:
    """RobustBench's 5,000 evaluation images, '<wnid>/<file>.JPEG' relative to the val folder, in its order."""
    return SUBSET_IDS_FILE.read_text().split()


def class_labels() -> dict[str, int]:
    """wnid -> label in [0, 1000)."""
    return json.loads(CLASS_MAP_FILE.read_text())


def res256_crop224() -> Callable:
    """RobustBench's PREPROCESSINGS['Res256Crop224']: PIL image -> float (3, 224, 224) in [0, 1]."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()])


class ImageFileSet:
    """Image files with labels (N,) int64, decoded per batch: ImageSet's interface without the images in memory.

    5,000 decoded 224x224 images would take 750 MB, so only one batch is ever held.
    """

    def __init__(self, paths: list[Path], labels: torch.Tensor, transform: Callable):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = list(paths)
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def _decode(self, path: Path) -> torch.Tensor:
        from PIL import Image

        try:
            with Image.open(path) as img:
                return self.transform(img.convert("RGB"))  # (3, H, W) float in [0, 1]
        except (OSError, ValueError) as e:  # UnidentifiedImageError, truncated file, vanished file, ...
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataUnavailable(f"imagenet: cannot read image {path} ({reason}); "
                                  "replace it with the original ILSVRC-2012 validation file") from None

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([self._decode(self.paths[i]) for i in idx.tolist()])  # (B, 3, 224, 224)
        return x, self.labels[idx]

    batches = ImageSet.batches  # (idx, x, y) in order, through this class's batch(): one image file at a time

    def identity(self, indices: torch.Tensor) -> str:
        """sha256 of exactly the test points evaluated: each file's bytes and label, in order (decoding is the
        fixed Res256Crop224 of these bytes, so the bytes decide the tensors)."""
        h = hashlib.sha256(b"imagefileset/1|")
        for i in indices.tolist():
            h.update(f"{int(self.labels[i])}|".encode())
            with open(self.paths[i], "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        return h.hexdigest()


def find_val_folder(root: Path) -> Path:
    """<root>/imagenet/val (ours), else <root>/val (RobustBench's data_dir layout)."""
    for val in (root / "imagenet" / "val", root / "val"):
        if val.is_dir():
            return val
    raise DataUnavailable(f"imagenet: no validation folder under {root} (looked for {root}/imagenet/val and {root}/val); "
                          f"put the ILSVRC-2012 validation images, one folder per class, as "
                          f"{LAYOUT.format(val=root / 'imagenet' / 'val')}; ImageNet is never downloaded automatically "
                          "(sign up at https://image-net.org/download.php)")


def open_subset(val: Path, ids: list[str], labels_of: dict[str, int]) -> ImageFileSet:
    """The listed images under val, checked to exist (not decoded) so a gap fails before any model runs."""
    wnids = sorted({i.split("/")[0] for i in ids})
    unknown = [w for w in wnids if w not in labels_of]
    if unknown:
        raise ValueError(f"imagenet: the subset list names {len(unknown)} wnids missing from the class map: {unknown[:5]}")
    missing = [w for w in wnids if not (val / w).is_dir()]
    if missing:
        first = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DataUnavailable(f"imagenet: {len(missing)} of the {len(wnids)} classes of the evaluation subset have no folder "
                              f"in {val} ({first}); sort the ILSVRC-2012 validation images into one folder per class: "
                              f"{LAYOUT.format(val=val)}")
    paths = [val / i for i in ids]
    absent = [i for i, p in zip(ids, paths) if not p.is_file()]
    if absent:
        raise DataUnavailable(f"imagenet: {len(absent)} of the {len(ids)} images of the evaluation subset are missing "
                              f"(first: {val / absent[0]}); put the original ILSVRC-2012 validation files at "
                              f"{LAYOUT.format(val=val)}")
    labels = torch.tensor([labels_of[i.split("/")[0]] for i in ids], dtype=torch.long)
    return ImageFileSet(paths, labels, res256_crop224())


def load_imagenet(spec: DatasetSpec, root: Path, train: bool, download: bool) -> ImageFileSet:
    """The DatasetSpec loader; download is ignored (ImageNet is never downloaded)."""
    if train:
        raise DataUnavailable("karp-robust does not train on ImageNet; evaluate your own weights with --checkpoint PATH")
    val = find_val_folder(Path(root))
    log.info("imagenet: RobustBench's evaluation subset from %s", val)
    return open_subset(val, subset_ids(), class_labels())


IMAGENET = DATASETS.register("imagenet")(DatasetSpec(
    "imagenet", 3, 1000, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
    {"linf": 4 / 255, "l2": 3.0},  # RobustBench's ImageNet Linf board; it has no L2 board, 3.0 is the usual ImageNet L2
    load_imagenet,
    "the ILSVRC-2012 validation images, one folder per class, as {root}/imagenet/val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG"
    " (RobustBench's {root}/val/<wnid>/... also works; only the 5,000 files listed in"
    " robustbench_karp/data/data_files/imagenet_test_image_ids.txt are read)",
    default_n_examples=5000,
))
