"""Faults that used to lose work: concurrent runs training the same network twice, a DDP rank stopping alone."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from torch import nn

from robustbench_karp.store import ResultsStore, locks, networks

# Runs `python -m robustbench_karp ARGS` with two probes: checkpoints.find_checkpoint notes each miss in the
# journal, and checkpoints.fit notes "train", then waits until both processes have missed once. Without a
# lock both then train; with it the second waits for the lock and finds the first one's checkpoint.
EVALUATE_DRIVER = """
import os, runpy, sys, time
from pathlib import Path

from robustbench_karp.training import checkpoints

journal = Path(os.environ["KARP_TEST_JOURNAL"])
real_find, real_fit = checkpoints.find_checkpoint, checkpoints.fit


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


checkpoints.find_checkpoint, checkpoints.fit = find_checkpoint, fit
runpy.run_module("robustbench_karp", run_name="__main__", alter_sys=True)
"""


def _start(cmd, env):
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _finish(run, timeout=3600):
    """(stdout, stderr) once run exits; past the timeout it is stopped (hung DDP workers too) and the test fails."""
    try:
        return run.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGTERM)  # torchrun passes it on to its workers (in sessions of their own)
        try:
            err = run.communicate(timeout=60)[1][-2000:]
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            err = "(killed)"
        pytest.fail(f"still running after {timeout} s (hung?): {err}")


@pytest.mark.slow
def test_concurrent_evaluations_train_the_checkpoint_once_and_both_records_land(tmp_path):
    home, journal, driver = tmp_path / "home", tmp_path / "journal", tmp_path / "driver.py"
    driver.write_text(EVALUATE_DRIVER)
    journal.touch()
    env = {**os.environ, "KARP_HOME": str(home), "KARP_TEST_JOURNAL": str(journal), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(driver), "evaluate", "--model", "smallcnn", "--dataset", "digits", "--attack", "fgsm",
            "--n-examples", "20", "--device", "cpu"]
    runs = [_start(args, env) for _ in range(2)]
    outputs = [_finish(run) for run in runs]
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
    real_load = networks._load_verified

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

    monkeypatch.setattr(networks, "_load_verified", load)
    path = networks.network_path("toy", {"seed": 0})
    results = {}

    def use(name):
        networks.clear_memo()
        results[name] = networks.obtain(path, {"seed": 0}, lambda: nn.Linear(2, 2), train, torch.device("cpu"))

    threads = [threading.Thread(target=use, args=(name,)) for name in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=3600)
    assert len(trained) == 1 and results["a"][1] == results["b"][1] == networks.recorded_sha256(path)
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
        first_holds.wait(timeout=1800)
        second_tried.set()
        with locks.file_lock(target):
            events.append("second holds")

    thread = threading.Thread(target=second)
    thread.start()
    with locks.file_lock(target):
        first_holds.set()
        second_tried.wait(timeout=1800)
        time.sleep(0.3)  # time for the second thread to (wrongly) get in
        events.append("first releases")
    thread.join(timeout=1800)
    assert events == ["first releases", "second holds"]
    assert not locks.lock_path(target).exists()  # both kinds remove their lock file on release


# Under torchrun: rank 1's catastrophic-overfitting guard alone says "collapsed" after epoch 1.
ONE_RANK_STOPS_DRIVER = """
import os, runpy

from robustbench_karp.training import loop as train

real_track = train._track


def track(state, metrics, *args, **kwargs):
    collapsed = real_track(state, metrics, *args, **kwargs)
    return collapsed or (os.environ["RANK"] == "1" and metrics["epoch"] == 1)


train._track = track
runpy.run_module("robustbench_karp", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_a_stop_decided_on_one_ddp_rank_stops_every_rank(tmp_path):
    """Without the all_reduced decision rank 0 would train epoch 2 alone and wait forever for rank 1."""
    driver = tmp_path / "driver.py"
    driver.write_text(ONE_RANK_STOPS_DRIVER)
    env = {**os.environ, "KARP_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(driver), "train",
           "--model", "smallcnn", "--dataset", "digits", "--defense", "fgsm-at", "--train-size", "64", "--epochs", "2",
           "--batch-size", "32", "--device", "cpu"]
    run = _start(cmd, env)
    _, err = _finish(run)
    assert run.returncode == 0, err[-3000:]
    (final,) = [p for p in (tmp_path / "home" / "checkpoints").glob("*.pt") if ".last" not in p.name]
    payload = torch.load(final, weights_only=True)
    assert payload["stopped_early"] and payload["epochs_completed"] == 1
    assert "another rank's guard collapsed" in err  # rank 0 stopped on rank 1's word
