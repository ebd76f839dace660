"""Issue 31's daily use of `reproduce`, `train` and the checkpoint store: no lock file outlives its run, missing data
is one line naming --data-dir and `data download`, the cost of a retrain comes first, other weights are judged
statistically."""

from __future__ import annotations

import re
import threading
import time

import pytest

from robustbench_karp.store import locks


@pytest.mark.skipif(locks.fcntl is None, reason="flock: POSIX only")
def test_lock_files_are_deleted_on_release_and_never_let_two_holders_in(tmp_path):
    """Threads open their own descriptors (flock excludes them as it does processes) and take the lock over and over,
    each time just after the holder deleted the file some of them were waiting on."""
    target, holders, most, errors = tmp_path / "model.pt", [0], [0], []
    guard = threading.Lock()

    def worker():
        try:
            for _ in range(40):
                with locks.file_lock(target):
                    with guard:
                        holders[0] += 1
                        most[0] = max(most[0], holders[0])
                    time.sleep(0.0005)  # long enough for a second holder to show up, were one let in
                    with guard:
                        holders[0] -= 1
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and most[0] == 1
    assert list(tmp_path.iterdir()) == []  # no lock file left behind


def test_a_lock_released_by_an_exception_leaves_no_file(tmp_path):
    target = tmp_path / "sub" / "model.pt"
    with pytest.raises(RuntimeError), locks.file_lock(target):
        assert locks.lock_path(target).is_file()
        raise RuntimeError("training refused")
    assert not locks.lock_path(target).exists()


TORCHVISION_OFFLINE = ("Error downloading train-images-idx3-ubyte.gz:\nTried https://ossci-datasets.s3.amazonaws.com/mnist/, "
                       "got:\n<urlopen error [Errno -2] Name or service not known>\nTried http://yann.lecun.com/exdb/"
                       "mnist/, got:\n<urlopen error [Errno -2] Name or service not known>\n")  # torchvision 0.2x's text


@pytest.fixture
def offline_mnist(monkeypatch):
    """torchvision's MNIST download failing as it does offline, after making its raw folder; yields the call count."""
    import os

    import torchvision

    calls = []

    def no_network(self):
        calls.append(self.raw_folder)
        os.makedirs(self.raw_folder, exist_ok=True)  # what torchvision does before it fetches
        raise RuntimeError(TORCHVISION_OFFLINE)

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    return calls


def test_reproduce_without_data_says_so_once_in_one_line_and_leaves_no_folder(karp_home, offline_mnist, capsys):
    from pathlib import Path

    from robustbench_karp.cli import main

    site = Path(__file__).resolve().parents[1] / "leaderboard"
    entry = "287f5201f946d221"  # smallcnn / mnist / pgd-at: two records on the MNIST test split
    assert main(["reproduce", entry, "--site", str(site)]) == 1
    captured = capsys.readouterr()
    assert len(offline_mnist) == 1  # downloaded once for the entry, not once per record
    first, second = [line for line in captured.out.splitlines() if line.startswith("reproducing ")]
    assert "--data-dir" in first and "`karp-robust data download mnist --data-dir DIR`" in first
    assert "Error downloading train-images-idx3-ubyte.gz: <urlopen error [Errno -2] Name or service not known> " \
           "(from 2 mirrors)" in first
    assert second.endswith("NOT reproduced: no mnist data (see above)")
    assert "reproduced 0 of 2 records" in captured.out
    assert not (karp_home / "data").exists()  # the empty data/MNIST/raw it made is gone, and data/ with it


def test_data_download_offline_keeps_the_folders_that_were_there(tmp_path, offline_mnist, capsys):
    from robustbench_karp.cli import main

    (tmp_path / "mine").mkdir()
    (tmp_path / "MNIST").mkdir()  # there before: stays, though empty
    assert main(["data", "download", "mnist", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Name or service not known" in err[0] and "--data-dir DIR" in err[0]
    assert "data download" not in err[0]  # it does not advise running itself
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["MNIST", "mine"]


def test_reproduce_prints_evaluates_progress_line_off_a_terminal(karp_home, digits_checkpoint, capsys, monkeypatch):
    import json

    from robustbench_karp.cli import main

    assert main(["evaluate", "--model", "smallcnn", "--checkpoint", str(digits_checkpoint), "--n-examples", "30",
                 "--attack", "fgsm", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    monkeypatch.setenv("KARP_PROGRESS_INTERVAL", "0")  # every update: the 10 s of a real run, without the wait
    assert main(["reproduce", record["id"]]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().endswith("reproduced")
    assert re.search(r"^evaluating: .*\b\d+/30 points", captured.err, re.M)  # cli/progress.py's EvalProgress line


class _Rising:
    """A defense whose steps cost 200 ms more while eps ramps up (as crown-ibp's CROWN pass does), else standard's."""

    adversarial = False

    def __init__(self, inner):
        self.inner = inner

    def uses_ramp(self):
        return True

    def uses_memory(self):
        return False

    def loss(self, model, x, y, threat, gen, ramp=1.0):
        if ramp < 1:
            time.sleep(0.2)
        return self.inner.loss(model, x, y, threat, gen)


def test_the_estimate_times_each_eps_ramp_phase_and_sums_them(monkeypatch, digits):
    import torch

    from robustbench_karp.defenses.base import build_defense
    from robustbench_karp.training import estimate
    from robustbench_karp.training.config import make_train_config

    monkeypatch.setattr(estimate, "build_defense", lambda name, options: _Rising(build_defense("standard")))
    monkeypatch.setattr(estimate, "load_split", lambda *a, **kw: digits[0])  # the session's copy: no reload
    monkeypatch.setattr(estimate, "TIMED_SECONDS", 0.0)  # 3 timed steps a phase
    config = make_train_config("smallcnn", "digits", recipe_overrides={"epochs": 5, "eps_ramp_epochs": 2})
    got = estimate.measure_training(config, torch.device("cpu"))
    assert got.ramp_epochs == 2 and got.steps_per_epoch == -(-1295 // config.recipe["batch_size"])
    assert got.ramp_step - got.step > 0.15  # the ramp's steps were timed as they run, not at the end of the ramp
    by_hand = 2 * got.ramp_step * got.steps_per_epoch + 3 * got.step * got.steps_per_epoch + 5 * got.validation
    assert got.seconds() == pytest.approx(by_hand) and got.seconds(4) == pytest.approx(got.seconds() - got.seconds(0, 4))


def test_the_clock_recalibrates_on_the_first_batches_and_after_each_epoch(monkeypatch):
    from robustbench_karp.training import estimate

    now = [100.0]
    monkeypatch.setattr(estimate.time, "perf_counter", lambda: now[0])
    lines = []
    clock = estimate.TrainingClock(say=lines.append, tty=False, interval=10)
    clock.expect(estimate.TrainingEstimate(epochs=4, steps_per_epoch=100, ramp_epochs=1, ramp_step=0.2, step=0.1,
                                           validation=5.0, batches=6))  # epochs: 25 s, then 15 s each
    now[0] += 1
    clock.on_step(0, 25, 100, 1.0, 0.5)
    now[0] += 25 * 0.4  # twice the measured 0.2 s a batch
    clock.on_step(0, 50, 100, 1.0, 0.5)
    assert lines[-1] == "calibrated on batches 26-50: 0.4 s a batch (measured before the start: 0.2 s); about 2 min left"
    assert clock.left(0, 50) == pytest.approx(2 * (0.2 * 50 + 5 + 2 * 15 + 15))
    now[0] = 100 + 50.0  # epoch 1 took 50 s where 25 were estimated: the 45 s left of the estimate double
    clock.on_epoch({"epoch": 1})
    assert lines[-1] == "epoch 1 took 50 s (estimated 25 s): about 90 s left"
    shown = len(lines)
    now[0] += 3
    clock.on_step(1, 25, 100, 1.0, 0.5)  # 3 s after the last line: quiet
    now[0] += 8
    clock.on_step(1, 50, 100, 1.0, 0.5)
    assert len(lines) == shown + 1 and lines[-1].startswith("training: epoch 2 of 4, batch 50 of 100, 61 s, about ")


def _record(clean: int, robust: int, n: int = 60) -> dict:
    return {"clean_accuracy": clean / n, "robust_accuracy": robust / n, "clean_mask": "1" * clean + "0" * (n - clean),
            "config": {"n_examples": n}}


def test_agreement_is_a_two_proportion_z_test_at_95_percent():
    import math

    from robustbench_karp.reproduce import agreement

    # clean 50/60 vs 40/60: pooled 0.75, standard error sqrt(0.75 * 0.25 * 2/60) = 0.0791, 1.96 x = 0.155 < 0.167
    (clean, robust) = agreement(_record(50, 30), _record(40, 33))
    assert clean[0] == "clean" and clean[3] == pytest.approx(1.959964 * math.sqrt(0.75 * 0.25 * 2 / 60))
    assert clean[4] is False and robust[4] is True  # robust 30 vs 33 of 60: 0.05 apart, inside +-0.18
    assert all(row[4] for row in agreement(_record(45, 30), _record(50, 30)))  # 0.083 apart: inside +-0.148
    assert agreement(_record(60, 60), _record(60, 60))[0][3] == 0 and agreement(_record(60, 0), _record(60, 0))[1][4]


def test_other_weights_are_evaluated_and_judged_statistically(karp_home, digits_checkpoint, capsys):
    import json

    import torch

    from robustbench_karp.cli import main
    from robustbench_karp.sources import new_model
    from robustbench_karp.store import resolve_path

    assert main(["evaluate", "--model", "smallcnn", "--checkpoint", str(digits_checkpoint), "--n-examples", "60",
                 "--attack", "fgsm", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    stored = resolve_path(record["checkpoint"])
    weights = torch.load(digits_checkpoint, weights_only=True)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        nudged = {k: v + 1e-4 * torch.randn_like(v) if v.is_floating_point() else v for k, v in weights.items()}
        torch.save(nudged, stored)  # as retrained on another processor: other bits, the same model
        assert main(["reproduce", record["id"]]) == 0
        out = capsys.readouterr().out
        assert "note: the checkpoint's weights differ from the recorded ones (weights_sha256)" in out
        assert "MISMATCH" in out  # the exact check comes first, and fails
        assert out.strip().splitlines()[-1].startswith("statistically reproduced (other weights): clean and robust")
        torch.manual_seed(2)
        torch.save(new_model("smallcnn", "digits").state_dict(), stored)  # untrained: about 10% clean accuracy
    assert main(["reproduce", record["id"]]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.match(r"NOT reproduced: other weights, and clean 0\.\d+ vs 0\.\d+ \(difference -0\.\d+ beyond ", last)


def test_train_prints_its_estimate_first_and_corrects_it(karp_home, capsys, monkeypatch):
    from robustbench_karp.cli import main
    from robustbench_karp.training.config import make_train_config

    steps = -(-300 // make_train_config("smallcnn", "digits").recipe["batch_size"])
    monkeypatch.setenv("KARP_PROGRESS_INTERVAL", "0")
    assert main(["train", "--model", "smallcnn", "--dataset", "digits", "--epochs", "2", "--train-size", "300"]) == 0
    err = capsys.readouterr().err.splitlines()
    estimate = next(i for i, line in enumerate(err) if line.startswith("estimate: about "))
    assert re.match(rf"estimate: about \d+ s on cpu for 2 epochs \([\d.e-]+ s a batch x {steps} batches an epoch", err[estimate])
    first = next(i for i, line in enumerate(err) if line.startswith("epoch 1 took "))
    assert estimate < first and re.match(r"epoch 1 took \d+ s \(estimated \d+ s\): about \d+ s left$", err[first])
    assert any(line.startswith(f"training: epoch 1 of 2, batch {steps} of {steps}, ") for line in err)  # off a terminal


def test_evaluate_names_the_train_eps_a_published_row_used(karp_home, capsys):
    from robustbench_karp.cli import main

    args = ["evaluate", "--model", "certcnn", "--dataset", "mnist", "--defense", "ibp", "--eps", "0.1",
            "--no-download", "--n-examples", "10"]
    assert main(args) == 2  # no MNIST here: the hint comes first, then the one-line error
    hint, error = capsys.readouterr().err.strip().splitlines()
    assert hint.startswith("hint: rows of certcnn/mnist/ibp used checkpoints trained at another eps (at eps 0.1, "
                           "--train-eps 0.1)") and hint.endswith("the one trained at eps 0.3")
    assert error.startswith("karp-robust: error: mnist not found")
    assert main([*args, "--train-eps", "0.1"]) == 2
    assert not capsys.readouterr().err.startswith("hint")
