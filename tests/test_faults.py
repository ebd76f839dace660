"""Faults that used to lose work: concurrent runs training the same network twice, a DDP rank stopping alone."""

import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from torch import nn

from robustbench_karp import gan_cache, locks
from robustbench_karp.store import ResultsStore

# Runs `python -m robustbench_karp ARGS` with two probes: harness.find_checkpoint notes each miss in the
# journal, and harness.fit notes "train", then waits until both processes have missed once. Without a
# lock both then train; with it the second waits for the lock and finds the first one's checkpoint.
EVALUATE_DRIVER = """
import os, runpy, sys, time
from pathlib import Path

from robustbench_karp import harness

journal = Path(os.environ["KARP_TEST_JOURNAL"])
real_find, real_fit = harness.find_checkpoint, harness.fit


def note(word):
    with open(journal, "a") as f:
        f.write(f"{word} {os.getpid()}\\n")


def missers():
    return {line.split()[1] for line in journal.read_text().splitlines() if line.startswith("miss ")}


def find_checkpoint(*args, **kwargs):
    found = real_find(*args, **kwargs)
    if found is None:
        note("miss")
    return found


def fit(*args, **kwargs):
    note("train")
    deadline = time.monotonic() + 300
    while len(missers()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return real_fit(*args, **kwargs)


harness.find_checkpoint, harness.fit = find_checkpoint, fit
runpy.run_module("robustbench_karp", run_name="__main__", alter_sys=True)
"""


def test_concurrent_evaluations_train_the_checkpoint_once_and_both_records_land(tmp_path):
    home, journal, driver = tmp_path / "home", tmp_path / "journal", tmp_path / "driver.py"
    driver.write_text(EVALUATE_DRIVER)
    journal.touch()
    env = {**os.environ, "KARP_HOME": str(home), "KARP_TEST_JOURNAL": str(journal), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(driver), "evaluate", "--model", "smallcnn", "--dataset", "digits", "--attack", "fgsm",
            "--n-examples", "20", "--device", "cpu"]
    runs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, err) in zip(runs, outputs):
        assert run.returncode == 0, err[-3000:]
    words = [line.split()[0] for line in journal.read_text().splitlines()]
    assert words.count("train") == 1 and words.count("miss") >= 3  # both looked; the waiter looked again, after it
    finals = [p.name for p in (home / "checkpoints").glob("*.pt") if not p.name.endswith(".last.pt")]
    assert len(finals) == 1
    records = ResultsStore(home / "results.sqlite").records()
    assert len(records) == 2 and records[0]["id"] == records[1]["id"]


def test_concurrent_gan_cache_users_train_once_and_share_the_file(karp_home, monkeypatch):
    """Two threads (separate lock descriptors, as two processes) obtain one network: one trains, both get its file."""
    looked, trained = set(), []
    real_load = gan_cache._load_verified

    def load(path, build, warn=True):
        looked.add(threading.get_ident())
        return real_load(path, build, warn)

    def train(net):
        trained.append(threading.get_ident())
        deadline = time.monotonic() + 300
        while len(looked) < 2 and time.monotonic() < deadline:  # the other thread has looked for the file
            time.sleep(0.01)
        with torch.no_grad():
            net.weight.fill_(len(trained))

    monkeypatch.setattr(gan_cache, "_load_verified", load)
    path = gan_cache.network_path("toy", {"seed": 0})
    results = {}

    def use(name):
        gan_cache.clear_memo()
        results[name] = gan_cache.obtain(path, {"seed": 0}, lambda: nn.Linear(2, 2), train, torch.device("cpu"))

    threads = [threading.Thread(target=use, args=(name,)) for name in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert len(trained) == 1 and results["a"][1] == results["b"][1] == gan_cache.recorded_sha256(path)
    assert all(torch.equal(net.weight, torch.ones(2, 2)) for net, _ in results.values())


@pytest.mark.parametrize("flock", [True, False], ids=["flock", "exclusive-file"])
def test_file_lock_excludes_a_second_holder_until_released(tmp_path, monkeypatch, flock):
    if not flock:
        monkeypatch.setattr(locks, "fcntl", None)
        monkeypatch.setattr(locks, "POLL_SECONDS", 0.01)
    elif locks.fcntl is None:
        pytest.skip("no fcntl on this platform")
    target, events = tmp_path / "model.pt", []
    first_holds, second_tried = threading.Event(), threading.Event()

    def second():
        first_holds.wait(timeout=300)
        second_tried.set()
        with locks.file_lock(target):
            events.append("second holds")

    thread = threading.Thread(target=second)
    thread.start()
    with locks.file_lock(target):
        first_holds.set()
        second_tried.wait(timeout=300)
        time.sleep(0.3)  # time for the second thread to (wrongly) get in
        events.append("first releases")
    thread.join(timeout=300)
    assert events == ["first releases", "second holds"]
    assert locks.lock_path(target).exists() == flock  # the fallback removes its lock file on release
