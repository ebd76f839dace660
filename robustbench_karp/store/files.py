"""Files under KARP_HOME: where things live, atomic writes, and stable hashes.

    atomic_write_text(karp_home() / "cache" / "x.json", text)   # temp file, fsync, rename
    config_hash({"model": "smallcnn", ...})                      # 16 hex digits of canonical JSON

Files are written atomically: a temporary file in the same directory, fsync, then rename, so a
reader never sees half a file and an interrupted write leaves the old one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any


def karp_home() -> Path:
    return Path(os.environ.get("KARP_HOME") or Path.home() / ".cache" / "karp-robust")


def portable_path(path: Path) -> str:
    """A path for records: relative to KARP_HOME when inside the store (so a store can move), else the file's
    name alone. Records never hold absolute paths: they are published, and a home directory is nobody's business."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(karp_home().resolve()))
    except ValueError:
        return path.name


def resolve_path(text: str) -> Path:
    """The inverse of portable_path: a path inside the current KARP_HOME. Records are data, published and
    shared: a path in one that is absolute or climbs out of the store is never followed, only its name."""
    path = Path(text)
    if path.is_absolute() or ".." in path.parts:
        path = Path(path.name)
    return karp_home() / path


def keep_copy(path: Path, kind: str) -> Path:
    """A content-addressed copy of a user's file in the store: KARP_HOME/<kind>/<sha256>/<its name>.

    A record names the copy, so moving or editing the original never breaks `reproduce`, and a copy is
    found by its sha256 alone (stored_copy): no path written in a record is ever followed.
    """
    path = Path(path)
    copy = karp_home() / kind / file_sha256(path) / path.name
    if not copy.is_file():
        data = path.read_bytes()
        atomic_write_bytes(copy, lambda f: f.write(data))
    return copy


def stored_copy(kind: str, sha256: str, name: str) -> Path | None:
    """The store's copy of a file (keep_copy) by its sha256 and name, if it is there and unchanged."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256 or "") or Path(name).name != name or name in ("", ".", ".."):
        return None  # never a path built from anything but a hash and a plain file name
    copy = karp_home() / kind / sha256 / name
    return copy if copy.is_file() and file_sha256(copy) == sha256 else None


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


def current_umask() -> int:
    """The process umask. os.umask can only be read by setting it, so it is set back at once
    (to a common mask meanwhile, should another thread create a file in between)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, write) -> None:
    """write(fileobj) into a temporary file next to path, then rename it over path.

    The file gets the mode open() would give it (0644 under umask 022), not mkstemp's 0600: a
    published site must be readable by a web server running as another user. Directories are
    made as mkdir makes them (0755 under umask 022).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX; Windows files have no such modes
            os.fchmod(fd, 0o666 & ~current_umask())
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
