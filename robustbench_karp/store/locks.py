"""A cross-process file lock, so that two runs needing the same checkpoint or GAN train it once.

    with file_lock(path):                  # holds <path>.lock; blocks while another process holds it
        if not path.exists():              # look again: the holder before us may have written it
            train_and_write(path)

POSIX: fcntl.flock on <path>.lock (released by the kernel when the holder exits, even on kill -9).
The holder deletes the lock file while it still holds the flock, so none outlives its run; a locker
that was waiting on the deleted file sees, once it gets the flock, that the file it locked is no longer
the one at the path (another inode, or none), and locks again: only the file at the path ever counts,
so two processes never hold the lock at once. A kill -9 leaves an unlocked file, which the next run
takes over and deletes. Elsewhere: an O_EXCL lock file, polled, and removed on release; one left
behind by a killed process must be deleted by hand, and the waiting process logs its path.
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
    f = _locked_file(lock)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # while the flock is held: a waiter on this file re-checks and locks afresh
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def _locked_file(lock: Path):
    """The open lock file, flocked, and still the file at its path once locked (a holder deletes it on release)."""
    waited = False
    while True:
        f = open(lock, "a")
        try:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    log.info("waiting for another process to finish %s (it holds %s)", lock.name[:-5], lock)
                    waited = True
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            if _same_file(f, lock):
                return f
        except BaseException:  # Ctrl-C while waiting: no descriptor left open
            f.close()
            raise
        f.close()  # the holder before us deleted it: lock whatever is at the path now


def _same_file(f, lock: Path) -> bool:
    try:
        here = os.stat(lock)
    except FileNotFoundError:
        return False
    mine = os.fstat(f.fileno())
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


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
