"""A cross-process file lock, so that two runs needing the same checkpoint or GAN train it once.

    with file_lock(path):                  # holds <path>.lock; blocks while another process holds it
        if not path.exists():              # look again: the holder before us may have written it
            train_and_write(path)

POSIX: fcntl.flock on <path>.lock (released by the kernel when the holder exits, even on kill -9;
the lock file itself stays, since deleting a flock file races with the next locker). Elsewhere:
an O_EXCL lock file, polled, and removed on release; one left behind by a killed process must be
deleted by hand, and the waiting process logs its path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)
POLL_SECONDS = 0.2


def lock_path(path: Path) -> Path:
    return Path(f"{path}.lock")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock of path (the file <path>.lock) for the body; blocks until it is free."""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        with _exclusive_file(lock):
            yield
        return
    with open(lock, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish %s (it holds %s)", Path(path).name, lock)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _exclusive_file(lock: Path) -> Iterator[None]:
    """The fallback: whoever creates the lock file (O_CREAT | O_EXCL) holds the lock until it deletes it."""
    waiting = False
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if not waiting:
                log.info("waiting for %s to disappear (delete it if no karp-robust process is running)", lock)
                waiting = True
            time.sleep(POLL_SECONDS)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")  # who holds it, for whoever finds it left behind
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
