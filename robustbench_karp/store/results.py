"""The results database: KARP_HOME/results.sqlite, one row per evaluation record.

    KARP_HOME/results.sqlite                                      one row per evaluation record
    KARP_HOME/pending/results/<id>-<created>.json                 records not yet committed to results.sqlite

Records are immutable: each evaluation appends one row in one transaction, so an interrupted run
writes nothing and two concurrent runs both land (SQLite's lock, WAL journal, generous timeout).
A finished record is never lost: it is written to the pending folder first and removed from there
once its row is committed; a locked database is retried with growing pauses for a few minutes, and
whatever is left pending (the append gave up, or the process was killed) is added by the next
ResultsStore that opens the database, exactly once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from robustbench_karp.store.files import atomic_write_text, karp_home
from robustbench_karp.store.records import migrate

T = TypeVar("T")

log = logging.getLogger(__name__)


def _pending_name(record: dict[str, Any]) -> str:
    """<id>-<created>.json, with characters a file name may not hold (':' on Windows) replaced."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{record['id']}-{record['created_utc']}") + ".json"


class StoreLocked(RuntimeError):
    """The results database stayed locked past the retries; the record waits in the pending folder."""


def _locked(e: sqlite3.OperationalError) -> bool:
    return "locked" in str(e) or "busy" in str(e)


class ResultsStore:
    """Append-only SQLite table of evaluation records (JSON), keyed by configuration id."""

    BUSY_TIMEOUT_SECONDS = 60.0  # SQLite's own wait for a lock, per attempt
    RETRY_SECONDS = 240.0  # then attempts with pauses doubling up to MAX_PAUSE_SECONDS, for about this long
    MAX_PAUSE_SECONDS = 15.0

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else karp_home() / "results.sqlite"
        self.pending_dir = self.path.parent / "pending" / self.path.stem
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Two processes opening a new database at once (torchrun ranks) can meet a lock that SQLite's own
        # busy wait does not cover (the switch to WAL): retried like an insert.
        self._retrying(self._create)
        self.flush_pending(retry=False)

    def _create(self) -> None:
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS records ("
                " row INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL,"
                " created_utc TEXT NOT NULL, record TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS records_id ON records(id)")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=self.BUSY_TIMEOUT_SECONDS)
        try:
            with db:  # one transaction: committed on success, rolled back on any exception
                yield db
        finally:
            db.close()

    def append(self, record: dict[str, Any]) -> None:
        """Add one record; it waits in the pending folder until committed (StoreLocked if the database stays locked)."""
        text = json.dumps(record, sort_keys=True)
        pending = self.pending_dir / _pending_name(record)
        atomic_write_text(pending, text)
        try:
            self._insert_retrying(record["id"], record["created_utc"], text)
        except sqlite3.OperationalError as e:
            if not _locked(e):
                raise
            raise StoreLocked(f"the results database {self.path} stayed locked; the record is kept in {pending} and the "
                              "next karp-robust run adds it") from e
        pending.unlink(missing_ok=True)

    def flush_pending(self, retry: bool = True) -> int:
        """Add the records left in the pending folder (each once); returns how many were added.

        retry=False (on open) tries each once and leaves the rest for later if the database is locked.
        """
        added = 0
        for pending in sorted(self.pending_dir.glob("*.json")) if self.pending_dir.is_dir() else []:
            try:
                text = pending.read_text()
                record = json.loads(text)
                key = (str(record["id"]), str(record["created_utc"]))
            except FileNotFoundError:  # its own process committed it meanwhile
                continue
            except (ValueError, KeyError, TypeError) as e:
                log.warning("pending record %s is unreadable (%s); left in place", pending, e)
                continue
            try:
                added += self._insert_retrying(*key, text) if retry else self._insert(*key, text)
            except sqlite3.OperationalError as e:
                if not _locked(e):
                    raise
                log.info("results database %s is locked; %s stays pending", self.path, pending.name)
                return added
            pending.unlink(missing_ok=True)
        return added

    def _insert(self, record_id: str, created_utc: str, text: str) -> bool:
        """Insert the row unless this very record is already there (a pending file of a committed record)."""
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO records (id, created_utc, record) SELECT ?, ?, ? WHERE NOT EXISTS"
                " (SELECT 1 FROM records WHERE id = ? AND created_utc = ? AND record = ?)",
                (record_id, created_utc, text, record_id, created_utc, text),
            )
            return cursor.rowcount == 1

    def _insert_retrying(self, record_id: str, created_utc: str, text: str) -> bool:
        return self._retrying(lambda: self._insert(record_id, created_utc, text))

    def _retrying(self, step: Callable[[], T]) -> T:
        """step(), retried while the database is locked, with pauses doubling, for about RETRY_SECONDS."""
        deadline, pause = time.monotonic() + self.RETRY_SECONDS, 0.05
        while True:
            try:
                return step()
            except sqlite3.OperationalError as e:
                if not _locked(e) or time.monotonic() + pause > deadline:
                    raise
                log.info("results database %s is locked; trying again in %.1f s", self.path, pause)
            time.sleep(pause)
            pause = min(2 * pause, self.MAX_PAUSE_SECONDS)

    def delete(self, ids: list[str]) -> int:
        """Remove every run of these record ids (and any still pending); remember them, so that the next
        leaderboard build drops them from a published site too. Returns how many rows went."""
        def remove() -> int:
            with self._connect() as db:
                marks = ",".join("?" * len(ids))
                return db.execute(f"DELETE FROM records WHERE id IN ({marks})", tuple(ids)).rowcount

        removed = self._retrying(remove)
        for pending in self.pending_dir.glob("*.json") if self.pending_dir.is_dir() else []:
            if any(pending.name.startswith(f"{i}-") for i in ids):
                pending.unlink(missing_ok=True)
        gone = sorted(set(deleted_ids(self.path)) | set(ids))
        atomic_write_text(_tombstones(self.path), json.dumps(gone, indent=0) + "\n")
        return removed

    def records(self) -> list[dict[str, Any]]:
        """Every record, oldest first, in this version's schema (store/records.py migrates older ones)."""
        rows = self._retrying(lambda: self._select("SELECT record FROM records ORDER BY row"))
        return [migrate(json.loads(r[0])) for r in rows]

    def latest(self) -> dict[str, dict[str, Any]]:
        """The newest record of each id."""
        return {r["id"]: r for r in self.records()}

    def get(self, record_id: str) -> dict[str, Any] | None:
        rows = self._retrying(lambda: self._select("SELECT record FROM records WHERE id = ? ORDER BY row DESC LIMIT 1",
                                                   (record_id,)))
        return migrate(json.loads(rows[0][0])) if rows else None

    def _select(self, query: str, args: tuple = ()) -> list[tuple]:
        with self._connect() as db:
            return db.execute(query, args).fetchall()


def read_records(path: Path | None = None) -> list[dict[str, Any]]:
    """Every record of a results database, oldest first, without creating or changing anything: the database is
    opened read-only, and records still waiting in its pending folder are read, not committed. [] with no store."""
    path = Path(path) if path is not None else karp_home() / "results.sqlite"
    rows: list[tuple[str, str, str]] = []
    if path.is_file():
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=ResultsStore.BUSY_TIMEOUT_SECONDS)
        try:
            rows = db.execute("SELECT id, created_utc, record FROM records ORDER BY row").fetchall()
        finally:
            db.close()
    seen = {(i, created) for i, created, _ in rows}
    pending = path.parent / "pending" / path.stem
    for file in sorted(pending.glob("*.json")) if pending.is_dir() else []:
        try:
            record = json.loads(file.read_text())
            key = (str(record["id"]), str(record["created_utc"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if key not in seen:
            seen.add(key)
            rows.append((*key, json.dumps(record)))
    return [migrate(json.loads(text)) for _, _, text in rows]


def _tombstones(path: Path) -> Path:
    return Path(path).with_name(Path(path).stem + ".deleted.json")


def deleted_ids(path: Path | None = None) -> list[str]:
    """The record ids `records delete` removed from this store (a build drops them from a published site too)."""
    try:
        ids = json.loads(_tombstones(Path(path) if path else karp_home() / "results.sqlite").read_text())
    except (OSError, ValueError):
        return []
    return [str(i) for i in ids] if isinstance(ids, list) else []

