"""Issue 31's daily use of `reproduce`, `train` and the checkpoint store: no lock file outlives its run, missing data
is one line naming --data-dir and `data download`, the cost of a retrain comes first, other weights are judged
statistically."""

from __future__ import annotations

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
