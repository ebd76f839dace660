"""The store under KARP_HOME (default ~/.cache/karp-robust): checkpoints, data and the results database.

    KARP_HOME/checkpoints/<model>-<dataset>-<defense>-<hash>.pt   one per training configuration
    KARP_HOME/results.sqlite                                      one row per evaluation record
    KARP_HOME/data/                                               default data directory

Records are immutable: each evaluation appends one row in one transaction, so an interrupted run
writes nothing and two concurrent runs both land (SQLite's lock, WAL journal, generous timeout).
Files are written atomically: a temporary file in the same directory, fsync, then rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


def karp_home() -> Path:
    return Path(os.environ.get("KARP_HOME") or Path.home() / ".cache" / "karp-robust")


def portable_path(path: Path) -> str:
    """A path for records: relative to KARP_HOME when inside the store (so a store can move), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(karp_home().resolve()))
    except ValueError:
        return str(path)


def resolve_path(text: str) -> Path:
    """The inverse of portable_path under the current KARP_HOME."""
    path = Path(text)
    return path if path.is_absolute() else karp_home() / path


def config_hash(config: dict[str, Any], length: int = 16) -> str:
    """Stable id: sha256 of the canonical JSON of a configuration."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, write) -> None:
    """write(fileobj) into a temporary file next to path, then rename it over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save, atomically. payload holds only tensors and plain types (weights_only-loadable)."""
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, not loadable without code, or of another model."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True: a checkpoint is data, never code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle refused by weights_only, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({type(e).__name__}: {first[:200]})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a state dict")
    return payload


class ResultsStore:
    """Append-only SQLite table of evaluation records (JSON), keyed by configuration id."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else karp_home() / "results.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
        db = sqlite3.connect(self.path, timeout=60)
        try:
            with db:  # one transaction: committed on success, rolled back on any exception
                yield db
        finally:
            db.close()

    def append(self, record: dict[str, Any]) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO records (id, created_utc, record) VALUES (?, ?, ?)",
                (record["id"], record["created_utc"], json.dumps(record, sort_keys=True)),
            )

    def records(self) -> list[dict[str, Any]]:
        """Every record, oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT record FROM records ORDER BY row").fetchall()
        return [json.loads(r[0]) for r in rows]

    def latest(self) -> dict[str, dict[str, Any]]:
        """The newest record of each id."""
        return {r["id"]: r for r in self.records()}

    def get(self, record_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT record FROM records WHERE id = ? ORDER BY row DESC LIMIT 1", (record_id,)).fetchone()
        return json.loads(row[0]) if row else None
