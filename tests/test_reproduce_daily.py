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
    assert re.search(r"^evaluating: fgsm on batch 1: \d+/30 points done", captured.err, re.M)
