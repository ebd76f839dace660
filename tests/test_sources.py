"""Model sources behind --model: a user's module file, torchvision, and the errors of each (issue 12).

The module file is tests/byo/my_net.py; its network is trained here for a few seconds on real MNIST.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import quick_train

from robustbench_karp import evaluate
from robustbench_karp.cli import main
from robustbench_karp.data import DATASETS, load_split
from robustbench_karp.models import Normalize
from robustbench_karp.sources import ModelSource, import_factory, load_external, parse_model, parse_normalize
from robustbench_karp.store import ResultsStore

MY_NET = Path(__file__).resolve().parent / "byo" / "my_net.py"
MNIST_NORM = "0.1307,0.3081"


@pytest.fixture(scope="module")
def my_net_weights(mnist_dir, tmp_path_factory) -> Path:
    """my_net's build() trained one pass on 6000 MNIST images, saved as DataParallel does ('module.' keys)."""
    train = load_split(DATASETS.get("mnist"), train=True, data_dir=mnist_dir, download=False)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = import_factory(MY_NET, "build")()
    x, y = train.batch(torch.arange(6000))
    quick_train(torch.nn.Sequential(Normalize((0.1307,), (0.3081,)), net), x, y, epochs=1, batch_size=100)
    path = tmp_path_factory.mktemp("byo") / "w.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    return path


def byo_args(weights, mnist_dir, *extra):
    return ["evaluate", "--model", f"{MY_NET}:build", "--normalize", MNIST_NORM, "--dataset", "mnist",
            "--data-dir", str(mnist_dir), "--checkpoint", str(weights), "--n-examples", "100", "--eps", "0.1",
            "--attack", "pgd", "--attack-arg", "steps=10", *extra]


def test_parse_model_kinds_and_errors():
    assert parse_model("smallcnn") == ModelSource("registered", "smallcnn")
    assert parse_model("robustbench:Carmon2019Unlabeled") == ModelSource("robustbench", "Carmon2019Unlabeled")
    assert parse_model("torchvision:resnet50") == ModelSource("torchvision", "resnet50")
    assert parse_model("dir/my_net.py:build") == ModelSource("file", "build", Path("dir/my_net.py"))
    with pytest.raises(ValueError, match="name the function"):
        parse_model("dir/my_net.py")
    with pytest.raises(ValueError, match="not a Python function name"):
        parse_model("dir/my_net.py:os.system")
    with pytest.raises(KeyError, match="valid:"):
        parse_model("resnet19")


def test_parse_normalize_counts_channels():
    assert parse_normalize("none", 3) is None and parse_normalize(None, 1) is None
    assert parse_normalize("0.1307,0.3081", 1) == ((0.1307,), (0.3081,))
    assert parse_normalize("1,2,3,4,5,6", 3) == ((1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
    with pytest.raises(ValueError, match="3 mean\\(s\\) then 3 std\\(s\\).*got 2"):
        parse_normalize("0.5,0.5", 3)
    with pytest.raises(ValueError, match="std must be > 0"):
        parse_normalize("0.5,0", 1)


def test_bring_your_own_model_record_leaderboard_and_exact_reproduce(karp_home, my_net_weights, mnist_dir, capsys,
                                                                    tmp_path):
    assert main(byo_args(my_net_weights, mnist_dir, "--json")) == 0
    record = json.loads(capsys.readouterr().out)
    source = record["config"]["source"]
    assert record["config"]["model"] == "my_net.py:build"  # no machine path in the identity
    assert source == {"kind": "file", "file": "my_net.py", "factory": "build",
                      "sha256": __import__("hashlib").sha256(MY_NET.read_bytes()).hexdigest(),
                      "normalization": {"mean": [0.1307], "std": [0.3081]}}
    assert record["clean_accuracy"] >= 0.9 and record["robust_accuracy"] < record["clean_accuracy"]

    # The same weights as a plain state_dict without 'module.' give the same record id.
    plain = tmp_path / "plain.pt"
    state = torch.load(my_net_weights, weights_only=True)["state_dict"]
    torch.save({k.removeprefix("module."): v for k, v in state.items()}, plain)
    assert main(byo_args(plain, mnist_dir, "--json")) == 0
    assert json.loads(capsys.readouterr().out)["id"] == record["id"]

    # Without the normalization the model sees other inputs: another config, another number.
    assert main(byo_args(my_net_weights, mnist_dir, "--json")[:3] + byo_args(my_net_weights, mnist_dir, "--json")[5:]) == 0
    other = json.loads(capsys.readouterr().out)
    assert other["id"] != record["id"] and other["config"]["source"]["normalization"] is None

    site = tmp_path / "site"
    assert main(["leaderboard", "build", "--out", str(site)]) == 0
    entries = [json.loads(p.read_text()) for p in (site / "entries").glob("*.json")]
    assert any(record["id"] in (e.get("record_ids") or []) for e in entries)
    capsys.readouterr()
    assert main(["reproduce", record["id"], "--data-dir", str(mnist_dir)]) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and out.strip().endswith("reproduced")


def test_reproduce_uses_the_stores_copy_and_refuses_a_changed_model_file(karp_home, my_net_weights, mnist_dir, capsys,
                                                                         tmp_path):
    copy = tmp_path / "net.py"
    copy.write_text(MY_NET.read_text())
    args = byo_args(my_net_weights, mnist_dir, "--json")
    args[2] = f"{copy}:build"
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    copy.write_text(MY_NET.read_text() + "\n# edited\n")  # the user's file changes; the store kept its own copy
    assert main(["reproduce", record["id"], "--data-dir", str(mnist_dir)]) == 0
    assert capsys.readouterr().out.strip().endswith("reproduced")
    assert main(["reproduce", record["id"], "--data-dir", str(mnist_dir), "--model-file", str(copy)]) == 2
    assert "has changed since the record was made" in capsys.readouterr().err
    for kept in (karp_home / "models").rglob("net.py"):
        kept.unlink()  # without the store's copy, nothing is imported unless the user names the file
    assert main(["reproduce", record["id"], "--data-dir", str(mnist_dir)]) == 2
    assert "--model-file" in capsys.readouterr().err


@pytest.mark.parametrize("model,extra,message", [
    (f"{MY_NET}:missing", [], "has no function 'missing'"),
    (f"{MY_NET}:not_a_module", [], "returned a dict, not a torch.nn.Module"),
    (f"{MY_NET}:build", ["--normalize", "0.5,0.5,0.5,0.2,0.2,0.2"], "1 mean(s) then 1 std(s)"),
    (f"{MY_NET}:build_three_channels", [], "fails on a mnist input of shape (1, 1, 28, 28)"),
    ("nowhere/net.py:build", [], "does not exist"),
    (str(MY_NET), [], "name the function"),
    ("smallcnn", ["--normalize", MNIST_NORM], "--normalize applies to model files"),
    ("torchvision:resnet9000", [], "unknown torchvision classifier"),
])
def test_bad_model_sources_exit_2_writing_nothing(karp_home, mnist_dir, capsys, model, extra, message):
    code = main(["evaluate", "--model", model, "--dataset", "mnist", "--data-dir", str(mnist_dir),
                 "--n-examples", "10", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert ResultsStore().records() == []


def test_loading_errors_name_the_keys(karp_home, my_net_weights, mnist_dir, capsys, tmp_path):
    state = {k.removeprefix("module."): v for k, v in torch.load(my_net_weights, weights_only=True)["state_dict"].items()}
    bad = dict(state)
    bad.pop("5.bias")
    bad["extra.weight"] = torch.zeros(1)
    bad["0.weight"] = torch.zeros(16, 1, 3, 3)
    path = tmp_path / "bad.pt"
    torch.save(bad, path)
    code = main(byo_args(path, mnist_dir))
    err = capsys.readouterr().err
    assert code == 2
    assert "1 missing: 5.bias" in err and "1 unexpected: extra.weight" in err
    assert "0.weight (16, 1, 3, 3) vs (16, 1, 5, 5)" in err

    page = tmp_path / "page.pt"
    page.write_text("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>")
    assert main(byo_args(page, mnist_dir)) == 2
    err = capsys.readouterr().err
    assert "is an HTML page" in err and "weights_only=False" not in err

    pickled = tmp_path / "object.pt"
    torch.save({"state_dict": state, "opt": torch.optim.SGD}, pickled)  # a class: weights_only refuses it
    assert main(byo_args(pickled, mnist_dir)) == 2
    err = capsys.readouterr().err
    assert "loads checkpoints as data only" in err and "weights_only=False" not in err


def test_torchvision_model_normalizes_with_imagenet_statistics(tmp_path):
    import torchvision

    spec = DATASETS.get("cifar10")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        reference = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path / "r18.pt"
    torch.save(reference.state_dict(), path)
    loaded = load_external(parse_model("torchvision:resnet18"), spec, norm="linf", normalize=None, checkpoint=path,
                           robustbench_dir=None)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(loaded.classifier.eval()(x), reference((x - mean) / std), atol=1e-5)
    assert loaded.source == {"kind": "torchvision", "name": "resnet18",
                             "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}


def test_python_evaluation_becomes_a_reproducible_record(karp_home, my_net_weights, mnist_dir, capsys):
    state = torch.load(my_net_weights, weights_only=True)["state_dict"]
    model = import_factory(MY_NET, "build_normalized")()
    model[1].load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    common = dict(dataset="mnist", data_dir=mnist_dir, n_examples=100, eps=0.1, attacks=[("pgd", {"steps": 10})])
    plain = evaluate(model, **common)
    assert plain.record is None and "record" not in repr(plain) and "True" not in repr(plain)

    result = evaluate(model, **common, store=True, source=f"{MY_NET}:build_normalized")
    record = result.record
    assert (result.clean_accuracy, result.robust_accuracy) == (plain.clean_accuracy, plain.robust_accuracy)
    assert ResultsStore().get(record["id"])["robust_mask"] == record["robust_mask"]
    assert record["config"]["model"] == "my_net.py:build_normalized" and record["config"]["source"]["kind"] == "file"
    assert main(["reproduce", record["id"], "--data-dir", str(mnist_dir)]) == 0
    assert capsys.readouterr().out.strip().endswith("reproduced")

    model.train()  # a stored evaluation hands the model back as it came: in train mode, on its device
    anonymous = evaluate(model, **common, store=True, model_name="my-net").record
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    assert anonymous["config"]["source"] == {"kind": "python", "name": "my-net", "normalization": None}
    assert main(["reproduce", anonymous["id"], "--data-dir", str(mnist_dir)]) == 2
    assert "nothing here can rebuild it" in capsys.readouterr().err

    x, y = load_split(DATASETS.get("mnist"), train=False, data_dir=mnist_dir, download=False).batch(torch.arange(4))
    with pytest.raises(ValueError, match="pass dataset= instead of x, y"):
        evaluate(model, x, y, store=True, model_name="m")
    with pytest.raises(ValueError, match="does not build this model's architecture"):
        evaluate(model, **common, store=True, source=f"{MY_NET}:build")
    with pytest.raises(ValueError, match="apply to an evaluation that is not stored"):  # never silently dropped
        evaluate(model, **common, store=True, model_name="m", return_adversarial=True)


def test_targeted_dlr_attacks_need_four_classes():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
        x = torch.rand(4, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)  # every point starts correct, so the attack does run
    for attack in ("apgd-t", "autoattack"):
        with pytest.raises(ValueError, match="at least 4 classes.*this one has 3"):
            evaluate(model, x, y, attacks=[attack], eps=0.1, device="cpu")


# --- RobustBench zoo models through the CLI --------------------------------------------------------

@pytest.fixture
def tiny_cifar10(tmp_path, monkeypatch) -> Path:
    """Four CIFAR-10 test images in the real pickle format (torchvision reads them; md5 checks skipped)."""
    import pickle

    import numpy as np
    import torchvision

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    base = tmp_path / "data" / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (4, 3 * 32 * 32), dtype=np.uint8), "labels": [3, 1, 4, 1]}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return tmp_path / "data"


def robustbench_download(tmp_path, model_id="Wong2020Fast") -> Path:
    """A checkpoint as RobustBench ships Wong2020Fast: {"state_dict": {"module.<key>"}}, with its mu/sigma buffers."""
    from robustbench_karp import zoo

    entry = zoo.lookup(model_id, "cifar10", "linf")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        state = zoo.build_backbone(entry).state_dict()
    state = {"module." + k: v for k, v in state.items()}
    state["module.mu"] = torch.tensor(entry.mean).view(1, 3, 1, 1)
    state["module.sigma"] = torch.tensor(entry.std).view(1, 3, 1, 1)
    path = tmp_path / f"{model_id}.pt"
    torch.save({"state_dict": state}, path)
    return path


def zoo_args(data, *extra):
    return ["evaluate", "--model", "robustbench:Wong2020Fast", "--dataset", "cifar10", "--data-dir", str(data),
            "--n-examples", "4", "--attack", "fgsm", "--json", *extra]


def test_robustbench_checkpoint_and_plain_state_dict_give_one_record_id(karp_home, tiny_cifar10, tmp_path, capsys):
    from robustbench_karp import zoo

    download = robustbench_download(tmp_path)
    assert main(zoo_args(tiny_cifar10, "--checkpoint", str(download))) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["config"]["model"] == "robustbench:Wong2020Fast"
    assert record["config"]["source"] == {"kind": "robustbench", "id": "Wong2020Fast", "threat": "Linf",
                                          "family": "preact_resnet",
                                          "normalization": {"mean": [0.4914, 0.4822, 0.4465],
                                                            "std": [0.2471, 0.2435, 0.2616]}}

    # The same weights as a plain state_dict (no 'module.', no mu/sigma), found in RobustBench's own layout.
    entry = zoo.lookup("Wong2020Fast", "cifar10", "linf")
    plain = zoo.convert_state_dict(entry, torch.load(download, weights_only=True))
    rb_dir = tmp_path / "rb"
    target = zoo.checkpoint_location(rb_dir, entry)
    assert target == rb_dir / "cifar10" / "Linf" / "Wong2020Fast.pt"
    target.parent.mkdir(parents=True)
    torch.save(plain, target)
    assert main(zoo_args(tiny_cifar10, "--robustbench-dir", str(rb_dir))) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["id"] == record["id"] and again["checkpoint_sha256"] != record["checkpoint_sha256"]
    assert again["robust_mask"] == record["robust_mask"]

    # The zoo model's logits are its backbone's on normalized input: the Normalize in front is the zoo's.
    from robustbench_karp import load_model

    model = load_model("robustbench:Wong2020Fast", dataset="cifar10", norm="linf", checkpoint=download, device="cpu")
    assert not model.training
    backbone = zoo.build_backbone(entry).eval()
    backbone.load_state_dict(plain)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(entry.mean).view(1, 3, 1, 1), torch.tensor(entry.std).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), backbone((x - mean) / std), atol=1e-5)


@pytest.mark.parametrize("model,extra,message", [
    ("robustbench:Carmon2019Unlabeledd", [], "did you mean Carmon2019Unlabeled"),
    ("robustbench:Carmon2019Unlabeled", ["--norm", "l2"], "is a cifar10 Linf model, not L2; use --norm linf"),
    ("robustbench:Wong2020Fast", [], "no weights for Wong2020Fast: put RobustBench's Wong2020Fast.pt at"),
    ("robustbench:Wong2020Fast", ["--normalize", "none"], "--normalize does not apply to RobustBench models"),
    ("robustbench:Wong2020Fast", ["--defense", "trades"], "comes with its own weights"),
])
def test_bad_zoo_requests_exit_2_writing_nothing(karp_home, tiny_cifar10, capsys, model, extra, message):
    code = main(["evaluate", "--model", model, "--dataset", "cifar10", "--data-dir", str(tiny_cifar10), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert ResultsStore().records() == []


def test_a_zoo_checkpoint_with_other_normalization_is_refused(karp_home, tiny_cifar10, tmp_path, capsys):
    download = robustbench_download(tmp_path)
    payload = torch.load(download, weights_only=True)
    payload["state_dict"]["module.mu"] = torch.zeros(1, 3, 1, 1)
    torch.save(payload, download)
    assert main(zoo_args(tiny_cifar10, "--checkpoint", str(download))) == 2
    assert "differs from the table's mean" in capsys.readouterr().err


def test_every_package_and_data_file_is_packaged():
    """A normal (non-editable) install ships the zoo table and every subpackage, not only what editable installs see."""
    import tomllib

    repo = MY_NET.parents[2]
    config = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(repo).parts) for p in (repo / "robustbench_karp").rglob("__init__.py")}
    assert on_disk <= set(config["packages"])
    assert "table.json" in config["package-data"]["robustbench_karp.zoo"]
