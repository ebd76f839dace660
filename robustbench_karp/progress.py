"""Progress reporting without printing from the library.

Library code wraps long loops in `progress(iterable, total=..., desc=...)`. By default that is the
iterable itself; the CLI installs tqdm with `use(factory)`, so only the CLI draws progress bars.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
_factory: contextvars.ContextVar[Callable | None] = contextvars.ContextVar("karp_progress", default=None)


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterable[T]:
    factory = _factory.get()
    return iterable if factory is None else factory(iterable, total=total, desc=desc)


@contextlib.contextmanager
def use(factory: Callable) -> Iterator[None]:
    """Within the block, progress() wraps iterables with factory(iterable, total=, desc=)."""
    token = _factory.set(factory)
    try:
        yield
    finally:
        _factory.reset(token)
