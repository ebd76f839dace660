"""ImageNet: RobustBench's 5,000-image subset on a tiny val tree of real JPEGs, checked against PIL by hand."""

import fnmatch
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_karp.data import DATASETS, DataUnavailable, imagenet, load_split

SPEC = DATASETS.get("imagenet")
IDS = imagenet.subset_ids()[:4]  # real ids: labels come from the real class map
SIZES = [(400, 300, "RGB"), (333, 500, "RGB"), (256, 256, "L"), (301, 225, "CMYK")]  # (W, H, mode)


def write_jpeg(path: Path, size: tuple[int, int], mode: str, seed: int) -> None:
    w, h = size
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(h, w, len(mode)), dtype=np.uint8)
    pixels = np.cumsum(pixels, axis=1, dtype=np.uint16).astype(np.uint8)  # structure, so resampling matters
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(2) if mode == "L" else pixels, mode).save(path, "JPEG", quality=90)


def write_tree(val: Path, ids=IDS) -> list[Path]:
    paths = [val / i for i in ids]
    for k, (path, (w, h, mode)) in enumerate(zip(paths, SIZES * len(ids))):
        write_jpeg(path, (w, h), mode, k)
    return paths


def res256_crop224_by_hand(path: Path) -> torch.Tensor:
    """Resize the shorter side to 256 (the longer one truncated, as torchvision does), bilinear; center 224 crop."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if w <= h:
        size = (256, int(256 * h / w))
    else:
        size = (int(256 * w / h), 256)
    img = img.resize(size, Image.BILINEAR)
    left, top = int(round((size[0] - 224) / 2)), int(round((size[1] - 224) / 2))
    pixels = np.asarray(img.crop((left, top, left + 224, top + 224)), dtype=np.uint8)  # (224, 224, 3)
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255


@pytest.fixture
def short_subset(monkeypatch):
    """The loader reads the first four ids of the real list instead of all 5,000."""
    monkeypatch.setattr(imagenet, "subset_ids", lambda: list(IDS))


def load(root: Path):
    return load_split(SPEC, train=False, data_dir=root, download=False)


def test_images_labels_and_order_match_robustbench(tmp_path, short_subset):
    paths = write_tree(tmp_path / "imagenet" / "val")
    test = load(tmp_path)
    assert len(test) == 4
    wnids = sorted(json.loads(imagenet.CLASS_MAP_FILE.read_text()))  # label = index of the wnid in sorted order
    assert test.labels.dtype == torch.int64
    assert test.labels.tolist() == [wnids.index(i.split("/")[0]) for i in IDS]
    x, y = test.batch(torch.arange(4))
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    for k, path in enumerate(paths):
        assert torch.equal(x[k], res256_crop224_by_hand(path)), f"image {k} ({SIZES[k]})"
    assert torch.equal(x[2, 0], x[2, 1]) and torch.equal(x[2, 0], x[2, 2])  # grayscale -> three equal channels
    assert torch.equal(y, test.labels)
    x_rev, y_rev = test.batch(torch.tensor([3, 1]))  # any order of indices
    assert torch.equal(x_rev, x[[3, 1]]) and y_rev.tolist() == [y[3], y[1]]


def test_batches_decode_lazily_and_in_order(tmp_path, short_subset):
    write_tree(tmp_path / "imagenet" / "val")
    test = load(tmp_path)
    decoded = []
    decode = test._decode
    test._decode = lambda path: decoded.append(path.name) or decode(path)
    assert decoded == []  # loading decodes nothing
    out = list(test.batches(torch.tensor([0, 1, 2]), batch_size=2))
    assert [idx.tolist() for idx, _, _ in out] == [[0, 1], [2]]
    assert [x.shape[0] for _, x, _ in out] == [2, 1] and torch.equal(out[1][2], test.labels[2:3])
    assert decoded == [Path(i).name for i in IDS[:3]]  # only what was asked for, in order
    (tmp_path / "imagenet" / "val" / IDS[3]).unlink()
    test.batch(torch.tensor([0]))  # a vanished image is only noticed when it is needed


def test_robustbench_layout_is_accepted(tmp_path, short_subset):
    write_tree(tmp_path / "val")
    assert len(load(tmp_path)) == 4


def test_our_layout_wins_over_robustbench_layout(tmp_path, short_subset):
    write_tree(tmp_path / "imagenet" / "val")
    (tmp_path / "val").mkdir()  # empty: would fail if it were used
    assert imagenet.find_val_folder(tmp_path) == tmp_path / "imagenet" / "val"
    assert len(load(tmp_path)) == 4


def one_line_error(root: Path, match: str, train: bool = False) -> str:
    with pytest.raises(DataUnavailable, match=match) as info:
        load_split(SPEC, train=train, data_dir=root, download=True)  # download=True: still never downloads
    assert "\n" not in str(info.value)
    return str(info.value)


def test_training_split_is_refused():
    one_line_error(Path("/nonexistent"), r"does not train on ImageNet; evaluate .*--checkpoint", train=True)


def test_missing_val_folder_says_where_to_put_it(tmp_path):
    (tmp_path / "imagenet").mkdir()
    message = one_line_error(tmp_path, r"no validation folder under")
    assert f"{tmp_path}/imagenet/val/<wnid>/ILSVRC2012_val_XXXXXXXX.JPEG" in message and f"{tmp_path}/val" in message


def test_missing_classes_are_counted_and_named(tmp_path, monkeypatch):
    ids = imagenet.subset_ids()
    wnids = sorted({i.split("/")[0] for i in ids})[:8]
    first_of = {w: next(i for i in ids if i.startswith(w + "/")) for w in wnids}
    monkeypatch.setattr(imagenet, "subset_ids", lambda: list(first_of.values()))
    write_tree(tmp_path / "imagenet" / "val", [first_of[wnids[0]]])
    message = one_line_error(tmp_path, r"7 of the 8 classes of the evaluation subset have no folder")
    assert ", ".join(wnids[1:6]) + ", ..." in message and wnids[6] not in message and "one folder per class" in message


def test_missing_image_is_named(tmp_path, short_subset):
    paths = write_tree(tmp_path / "imagenet" / "val")
    paths[2].unlink()
    message = one_line_error(tmp_path, r"1 of the 4 images of the evaluation subset are missing")
    assert str(paths[2]) in message


@pytest.mark.parametrize("damage", ["not an image", "truncated"])
def test_unreadable_image_is_named(tmp_path, short_subset, damage):
    paths = write_tree(tmp_path / "imagenet" / "val")
    data = paths[1].read_bytes()
    paths[1].write_bytes(b"<html>404</html>" if damage == "not an image" else data[: len(data) // 2])
    test = load(tmp_path)  # existence is checked up front, decoding only per batch
    test.batch(torch.tensor([0, 2]))
    with pytest.raises(DataUnavailable, match="cannot read image") as info:
        test.batch(torch.tensor([0, 1]))
    assert str(paths[1]) in str(info.value) and "\n" not in str(info.value)


def test_the_cli_uses_robustbench_s_full_list(tmp_path):
    ids = imagenet.subset_ids()
    for wnid in {i.split("/")[0] for i in ids}:
        (tmp_path / "val" / wnid).mkdir(parents=True)
    write_tree(tmp_path / "val", ids[:3])
    one_line_error(tmp_path, r"4997 of the 5000 images of the evaluation subset are missing")


def test_bundled_lists_are_robustbench_s():
    ids = imagenet.subset_ids()
    labels = imagenet.class_labels()
    assert len(ids) == 5000 and len(set(ids)) == 5000
    assert ids[0] == "n09468604/ILSVRC2012_val_00015253.JPEG" and ids[-1] == "n13133613/ILSVRC2012_val_00025432.JPEG"
    assert len(labels) == 1000 and sorted(labels.values()) == list(range(1000))
    assert [labels[w] for w in sorted(labels)] == list(range(1000))  # the sorted-wnid index, as ImageFolder gives
    assert {i.split("/")[0] for i in ids} <= set(labels)
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in imagenet.DATA_FILES.iterdir()}
    assert digests == {"imagenet_test_image_ids.txt": "d4121626d07722a0", "imagenet_class_to_id_map.json": "b1c9c3a901b0910a"}


def test_bundled_lists_are_packaged():
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    section = pyproject.split("[tool.setuptools.package-data]\n", 1)[1].split("\n[", 1)[0]
    globs = re.findall(r'"(data_files/[^"]+)"', section)
    for path in imagenet.DATA_FILES.iterdir():
        assert any(fnmatch.fnmatch(f"data_files/{path.name}", g) for g in globs), path.name


def test_spec():
    assert (SPEC.in_channels, SPEC.num_classes, SPEC.input_size, SPEC.default_n_examples) == (3, 1000, 224, 5000)
    assert SPEC.mean == (0.485, 0.456, 0.406) and SPEC.std == (0.229, 0.224, 0.225)
    assert SPEC.default_eps == {"linf": 4 / 255, "l2": 3.0}
    assert DATASETS.get("cifar10").default_n_examples == 1000


def test_evaluate_a_torchvision_model_on_imagenet(tmp_path, short_subset, karp_home, capsys):
    """The whole path: --dataset imagenet, torchvision:resnet18 with ImageNet normalization, a record."""
    import torchvision

    from robustbench_karp.cli import main

    write_tree(tmp_path / "imagenet" / "val")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = torchvision.models.resnet18()
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    code = main(["evaluate", "--model", "torchvision:resnet18", "--dataset", "imagenet", "--data-dir", str(tmp_path),
                 "--checkpoint", str(tmp_path / "r18.pt"), "--attack", "fgsm", "--json"])
    record = json.loads(capsys.readouterr().out)
    assert code == 0 and record["config"]["n_examples"] == 4 and record["config"]["eps"] == pytest.approx(4 / 255)
    assert record["config"]["source"]["normalization"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    x, _ = load(tmp_path).batch(torch.arange(4))
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        predicted = net.eval()((x - mean) / std).argmax(1)
    labels = torch.tensor([imagenet.class_labels()[i.split("/")[0]] for i in IDS])
    assert record["clean_mask"] == "".join("1" if c else "0" for c in (predicted == labels).tolist())
