"""Dataset loading: the embedded digits, and torchvision's loaders on tiny files in the real on-disk formats."""

import pickle
import struct

import numpy as np
import pytest
import scipy.io
import torch
import torchvision

from robustbench_karp.data import DATASETS, DataUnavailable, load_split, subset_indices


def test_digits_split_is_fixed_and_documented():
    spec = DATASETS.get("digits")
    train, test = load_split(spec, train=True), load_split(spec, train=False)
    assert len(train) == 1438 and len(test) == 359
    assert train.images.shape[1:] == (1, 8, 8) and train.images.min() >= 0 and train.images.max() <= 1
    from sklearn.datasets import load_digits

    raw = load_digits()
    assert torch.allclose(test.images[0, 0], torch.from_numpy(raw.images[4] / 16.0).float())  # index % 5 == 4
    assert int(test.labels[1]) == int(raw.target[9])


def test_subset_is_the_first_n_points():
    assert subset_indices(100, 10).tolist() == list(range(10))
    assert torch.equal(subset_indices(100, None), torch.arange(100))
    with pytest.raises(ValueError, match="only 100"):
        subset_indices(100, 101)


def write_idx(path, array: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    magic = {1: 0x801, 3: 0x803}[array.ndim]
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape))
        f.write(array.astype(np.uint8).tobytes())


def tiny_images(n, shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_datasets_from_tiny_files(tmp_path, name, folder):
    raw = tmp_path / folder / "raw"
    train_x, test_x = tiny_images(6, (28, 28), 0), tiny_images(4, (28, 28), 1)
    write_idx(raw / "train-images-idx3-ubyte", train_x)
    write_idx(raw / "train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4, 5]))
    write_idx(raw / "t10k-images-idx3-ubyte", test_x)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([9, 8, 7, 6]))
    test = load_split(DATASETS.get(name), train=False, data_dir=tmp_path, download=False)
    assert test.labels.tolist() == [9, 8, 7, 6]
    x, y = test.batch(torch.arange(4))
    assert x.shape == (4, 1, 28, 28) and torch.allclose(x[2, 0], torch.from_numpy(test_x[2]).float() / 255)
    assert len(load_split(DATASETS.get(name), train=True, data_dir=tmp_path, download=False)) == 6


@pytest.fixture
def trust_tiny_files(monkeypatch):
    """The tiny files cannot match the canonical md5 sums; everything else is torchvision's code."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: __import__("os").path.isfile(path))
    monkeypatch.setattr(torchvision.datasets.svhn, "check_integrity", lambda path, md5=None: __import__("os").path.isfile(path))


def write_cifar(root, folder, files, label_key, meta_name, meta_key, classes):
    base = root / folder
    base.mkdir(parents=True)
    arrays = {}
    for i, fname in enumerate(files):
        data = tiny_images(3, (3 * 32 * 32,), i)
        arrays[fname] = data
        with open(base / fname, "wb") as f:
            pickle.dump({"data": data, label_key: [i % classes, (i + 1) % classes, 1]}, f)
    with open(base / meta_name, "wb") as f:
        pickle.dump({meta_key: [f"class{i}" for i in range(classes)]}, f)
    return arrays


def test_cifar10_from_tiny_files(tmp_path, trust_tiny_files):
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    arrays = write_cifar(tmp_path, "cifar-10-batches-py", files, "labels", "batches.meta", "label_names", 10)
    test = load_split(DATASETS.get("cifar10"), train=False, data_dir=tmp_path, download=False)
    train = load_split(DATASETS.get("cifar10"), train=True, data_dir=tmp_path, download=False)
    assert len(test) == 3 and len(train) == 15 and test.labels.tolist() == [5, 6, 1]
    x, _ = test.batch(torch.arange(3))
    expected = torch.from_numpy(arrays["test_batch"][1].reshape(3, 32, 32)).float() / 255  # CHW in the file
    assert x.shape == (3, 3, 32, 32) and torch.allclose(x[1], expected)


def test_cifar100_from_tiny_files(tmp_path, trust_tiny_files):
    write_cifar(tmp_path, "cifar-100-python", ["train", "test"], "fine_labels", "meta", "fine_label_names", 100)
    test = load_split(DATASETS.get("cifar100"), train=False, data_dir=tmp_path, download=False)
    assert len(test) == 3 and test.labels.tolist() == [1, 2, 1] and DATASETS.get("cifar100").num_classes == 100


def test_svhn_from_tiny_files(tmp_path, trust_tiny_files):
    root = tmp_path / "SVHN"
    root.mkdir()
    x = tiny_images(32 * 32 * 3, (4,), 3).reshape(32, 32, 3, 4)  # SVHN's .mat layout: (H, W, C, N)
    scipy.io.savemat(root / "test_32x32.mat", {"X": x, "y": np.array([[10], [1], [2], [3]])})  # 10 means digit 0
    test = load_split(DATASETS.get("svhn"), train=False, data_dir=tmp_path, download=False)
    assert test.labels.tolist() == [0, 1, 2, 3]
    img, _ = test.batch(torch.tensor([2]))
    assert torch.allclose(img[0], torch.from_numpy(x[:, :, :, 2]).permute(2, 0, 1).float() / 255)


def test_missing_data_offline_says_where_to_put_it(tmp_path):
    with pytest.raises(DataUnavailable, match=r"t10k-images-idx3-ubyte.*MNIST/raw"):
        load_split(DATASETS.get("mnist"), train=False, data_dir=tmp_path, download=False)


def test_failed_download_says_where_to_put_it(tmp_path, monkeypatch):
    def no_network(self, *args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: network unreachable")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    with pytest.raises(DataUnavailable, match=r"download failed .*network unreachable.*MNIST/raw"):
        load_split(DATASETS.get("mnist"), train=False, data_dir=tmp_path, download=True)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", no_network)
    with pytest.raises(DataUnavailable, match="cifar-10-batches-py"):
        load_split(DATASETS.get("cifar10"), train=True, data_dir=tmp_path, download=True)
