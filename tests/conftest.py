"""Shared fixtures: an isolated KARP_HOME, real MNIST from KARP_TEST_DATA, small trained models.

MNIST tests read the data directory from KARP_TEST_DATA (default ../shared/data next to the
repository). Outside CI they skip with a reason when it is missing; .ci/run sets
KARP_REQUIRE_TEST_DATA=1, which turns a missing directory into a failure instead.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from robustbench_karp.data import DATASETS, load_split
from robustbench_karp.sources import new_model

REPO = Path(__file__).resolve().parents[1]
# Training on demand refuses past an estimated 10 minutes; a slow CI machine must not trip it. The
# tests of the limit set it themselves.
os.environ.setdefault("KARP_TRAIN_LIMIT_SECONDS", "1e9")
# The suite never touches the user's store (~/.cache/karp-robust): it gets its own KARP_HOME, removed at exit.
os.environ["KARP_HOME"] = tempfile.mkdtemp(prefix="karp-tests-")
atexit.register(shutil.rmtree, os.environ["KARP_HOME"], True)


@pytest.fixture
def karp_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "karp-home"
    monkeypatch.setenv("KARP_HOME", str(home))
    monkeypatch.delenv("KARP_DATA_DIR", raising=False)
    return home


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def mnist_data_dir() -> tuple[Path, list[str]]:
    """(the MNIST data directory, the raw files missing from it)."""
    path = Path(os.environ.get("KARP_TEST_DATA", REPO.parent / "shared" / "data")).resolve()
    return path, [name for name in MNIST_FILES if not (path / "MNIST" / "raw" / name).is_file()]


def mnist_missing_message(path: Path, missing: list[str]) -> str:
    where = "from KARP_TEST_DATA" if "KARP_TEST_DATA" in os.environ else "KARP_TEST_DATA unset: default ../shared/data"
    return (f"real MNIST not found: {', '.join(missing)} missing from {path / 'MNIST' / 'raw'} ({where}); "
            f"get them with `karp-robust data download mnist --data-dir {path}`")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    path, missing = mnist_data_dir()
    if missing:
        if os.environ.get("KARP_REQUIRE_TEST_DATA"):
            pytest.fail(f"KARP_REQUIRE_TEST_DATA is set but {mnist_missing_message(path, missing)}")
        pytest.skip(mnist_missing_message(path, missing))
    return path


def quick_train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float = 2e-3,
                batch_size: int = 64, seed: int = 0) -> torch.nn.Module:
    """A plain Adam/cross-entropy loop, independent of the project's training loop."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch_size):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits():
    spec = DATASETS.get("digits")
    return load_split(spec, train=True), load_split(spec, train=False)


@pytest.fixture(scope="session")
def digits_model(digits):
    """smallcnn trained on the digits for a few seconds: about 97% test accuracy."""
    train, _ = digits
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = new_model("smallcnn", "digits")
    x, y = train.batch(torch.arange(len(train)))
    return quick_train(model, x, y, epochs=8)


@pytest.fixture(scope="session")
def mnist_model(mnist_dir):
    """smallcnn trained by the suite on the first 12000 real MNIST training images (one pass, ~97%)."""
    train = load_split(DATASETS.get("mnist"), train=True, data_dir=mnist_dir, download=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = new_model("smallcnn", "mnist")
    x, y = train.batch(torch.arange(12000))
    return quick_train(model, x, y, epochs=1, lr=1e-3, batch_size=100)


@pytest.fixture(scope="session")
def mnist_test(mnist_dir):
    return load_split(DATASETS.get("mnist"), train=False, data_dir=mnist_dir, download=False)


# --- small models shared by the attack and defense tests ------------------------------------------------------------

def seeded_mlp(seed: int, hidden: int) -> nn.Module:
    """(B, 1, 8, 8) -> (B, 10) logits; weights drawn from a torch.Generator (the global RNG is left as it was)."""
    with torch.random.fork_rng():  # nn.Linear's own init draws from the global RNG
        model = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model[1], model[3]):
            bound = 1 / math.sqrt(layer.in_features)
            layer.weight.copy_((2 * torch.rand(layer.weight.shape, generator=gen) - 1) * bound)
            layer.bias.copy_((2 * torch.rand(layer.bias.shape, generator=gen) - 1) * bound)
    return model


class Quantize(nn.Module):
    """A non-differentiable purifier: pixels rounded to `levels` grey levels (input gradient zero almost everywhere)."""

    def __init__(self, levels: int):
        super().__init__()
        self.levels = levels

    def forward(self, x):
        return torch.round(x * self.levels) / self.levels


class Purified(nn.Module):
    """The purifier protocol of bpda-pgd and transfer-pgd: forward is classifier(preprocess(x))."""

    def __init__(self, preprocess: nn.Module, classifier: nn.Module):
        super().__init__()
        self.preprocess, self.classifier = preprocess, classifier

    def forward(self, x):
        return self.classifier(self.preprocess(x))


class Noisy(nn.Module):
    """A randomized model: Gaussian input noise on every call, from its own seeded generator (never the global RNG,
    so its draws do not depend on what ran before it in the process)."""

    def __init__(self, inner: nn.Module, sigma: float = 0.05, seed: int = 1):
        super().__init__()
        self.inner, self.sigma, self.gen = inner, sigma, torch.Generator().manual_seed(seed)

    def forward(self, x):
        return self.inner(x + self.sigma * torch.randn(x.shape, generator=self.gen))


class Softmaxed(nn.Module):
    """A classifier that returns probabilities instead of logits: the sanity checks must say so."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(x).softmax(1)


@pytest.fixture(scope="session")
def digits_mlp(digits):
    """An undefended MLP trained on the digits in about a second: ~96% on the first 100 test images (eval mode)."""
    train, _ = digits
    x, y = train.batch(torch.arange(len(train)))
    return quick_train(seeded_mlp(0, hidden=64), x, y, epochs=10, lr=5e-3, batch_size=128).eval()


@pytest.fixture(scope="module")
def module_karp_home(tmp_path_factory):
    """A temporary KARP_HOME for a whole test module (generators trained by attacks never land in ~/.cache)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KARP_HOME", str(tmp_path_factory.mktemp("karp-home")))
        yield


@pytest.fixture(scope="module")
def digits_checkpoint(digits_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "smallcnn-digits.pt"
    torch.save(digits_model.state_dict(), path)
    return path


def rederivable(raw: dict) -> dict:
    """A synthetic legacy record (tests/golden) as one `leaderboard build` publishes: an EvalConfig-era config and
    the id that is its hash (the masks are already there)."""
    from robustbench_karp.evaluation.evalconfig import SCHEMA
    from robustbench_karp.store import config_hash
    from robustbench_karp.store.records import migrate

    record = migrate(raw)
    record["config"] = {**record["config"], "schema": SCHEMA, "batch_size": 500}
    record["id"] = config_hash(record["config"])
    return record
