"""Room on the store's filesystem, and the rule for refusing new content when there is none.

Rules: new content (a fill, an upload, a manifest) is refused with ``StoreFull`` (507) before
its first byte is written when the filesystem would keep less than ``reserve`` bytes free (the
metadata needs room too), or has no free inodes; a write that meets ENOSPC or EDQUOT anyway
answers the same error, and its writer removes its partial file. The store counts as full from
either moment until the filesystem again has the reserve and the room the refused write needed;
``/readyz`` and ``wharf_store_full`` say so. Reading what is stored never depends on it.
Metadata writes (SQLite) that find the disk full answer ``StoreFull`` too (``FullAwareCache``).
"""

from __future__ import annotations

import errno
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import diskcache

from proxy.errors import StoreFull
from proxy.metrics import Metrics

_NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_room(exc: BaseException) -> bool:
    """An OSError that says the filesystem (or the quota) is full."""
    return isinstance(exc, OSError) and exc.errno in _NO_ROOM


class StoreSpace:
    def __init__(self, root: Path, reserve: int, metrics: Metrics | None = None) -> None:
        self.root = Path(root)
        self.reserve = reserve
        self._needed: int | None = None  # bytes a refused or failed write needed; None: not full
        self._metrics = metrics
        if metrics is not None:
            metrics.store_free_bytes.set_function(self.free_bytes)
            metrics.store_full.set_function(lambda: 1 if self.problem() else 0)

    def _stat(self) -> os.statvfs_result:
        return os.statvfs(self.root)

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer may still use on the store's filesystem."""
        stat = self._stat()
        return stat.f_bavail * stat.f_frsize

    def ensure_room(self, size: int = 0) -> None:
        """Refuse new content of ``size`` bytes (0: unknown) unless the reserve stays free."""
        stat = self._stat()
        free = stat.f_bavail * stat.f_frsize
        if free - size <= self.reserve or stat.f_favail == 0 and stat.f_files > 0:
            raise self._full(size, f"{free} bytes free, {self.reserve} kept in reserve")

    def ran_out(self, size: int = 0) -> StoreFull:
        """The error for a write that met ENOSPC/EDQUOT; the store counts as full from now."""
        return self._full(size, "the filesystem answered that it is full")

    def _full(self, size: int, why: str) -> StoreFull:
        self._needed = max(self._needed or 0, size, 1)
        if self._metrics is not None:
            self._metrics.store_full_refusals.inc()
        return StoreFull(f"the registry's storage is full ({why}): it cannot store new content; "
                         f"stored content is still served")

    def problem(self) -> str | None:
        """Why the store cannot take new content now (for /readyz), or None when it can."""
        stat = self._stat()
        free = stat.f_bavail * stat.f_frsize
        if stat.f_favail == 0 and stat.f_files > 0:
            return "storage is full: no free inodes"
        if free <= self.reserve:
            return f"storage is full: {free} bytes free, {self.reserve} kept in reserve"
        if self._needed is not None:
            if free - self._needed > self.reserve:
                self._needed = None  # room again
            else:
                return f"storage is full: {free} bytes free, a write needed {self._needed}"
        return None


def is_sqlite_full(exc: BaseException) -> bool:
    """SQLite's "database or disk is full"."""
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)


@contextmanager
def _full_is_store_full() -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        if not is_sqlite_full(exc):
            raise
        raise StoreFull("the registry's storage is full (its metadata cannot be written): it cannot store "
                        "new content; stored content is still served") from None


class FullAwareCache(diskcache.Cache):
    """diskcache whose writes answer ``StoreFull`` (a domain error) when SQLite finds the disk full."""

    def set(self, *args, **kwargs):
        with _full_is_store_full():
            return super().set(*args, **kwargs)

    def incr(self, *args, **kwargs):
        with _full_is_store_full():
            return super().incr(*args, **kwargs)

    def delete(self, *args, **kwargs):
        with _full_is_store_full():
            return super().delete(*args, **kwargs)

    @contextmanager
    def transact(self, retry: bool = False) -> Iterator[None]:
        with _full_is_store_full(), super().transact(retry):
            yield
