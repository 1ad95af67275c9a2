"""The blob index: one SQLite row per stored blob, so the budget and gc never list the store.

Rules:
- a row is (digest, size, last access, class); class is ``cached`` (evictable), ``pushed`` or
  ``kept`` (never evicted); rows are ordered by (class, last access) for eviction and by
  (class, digest) for gc, and every query reads at most one batch (``BATCH``);
- the totals per class are sums kept by triggers in the same transaction as the row's change, so
  every process of the store (workers, replicas on a shared volume, the CLI) reads the same totals;
- the index lives in the store root (``blob-index.sqlite``, WAL) and is written by the blob
  store's hooks: adopt adds, remove deletes, the access flush moves last access;
- the event loop's connection never checkpoints the WAL (a checkpoint writes and syncs up to the
  whole WAL: it would hold the loop): other threads' commits do (SQLite's autocheckpoint), and
  ``checkpoint`` runs one from a worker thread every second;
- when the file is absent (a store from before the index, or it was deleted) it is built once from
  disk in a background thread; ``built`` says when that finished. Until then its rows and totals
  are what was found so far plus what changed meanwhile.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, Iterator

from proxy.storage.space import is_sqlite_full

CACHED, PUSHED, KEPT = "cached", "pushed", "kept"
CLASSES = (CACHED, PUSHED, KEPT)
BATCH = 1000
INDEX_FILE = "blob-index.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY, size INTEGER NOT NULL, accessed REAL NOT NULL, class TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_access ON blobs (class, accessed, digest);
CREATE INDEX IF NOT EXISTS blobs_by_digest ON blobs (class, digest);
CREATE TABLE IF NOT EXISTS totals (class TEXT PRIMARY KEY, bytes INTEGER NOT NULL, blobs INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES ('cached', 0, 0), ('pushed', 0, 0), ('kept', 0, 0);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS blobs_added AFTER INSERT ON blobs BEGIN
    UPDATE totals SET bytes = bytes + NEW.size, blobs = blobs + 1 WHERE class = NEW.class;
END;
CREATE TRIGGER IF NOT EXISTS blobs_removed AFTER DELETE ON blobs BEGIN
    UPDATE totals SET bytes = bytes - OLD.size, blobs = blobs - 1 WHERE class = OLD.class;
END;
CREATE TRIGGER IF NOT EXISTS blobs_changed AFTER UPDATE OF size, class ON blobs BEGIN
    UPDATE totals SET bytes = bytes - OLD.size, blobs = blobs - 1 WHERE class = OLD.class;
    UPDATE totals SET bytes = bytes + NEW.size, blobs = blobs + 1 WHERE class = NEW.class;
END;
"""


class BlobIndex:
    """Rows of the stored blobs and their totals per class (any thread; every call is one short
    transaction)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self._db() as db:
            db.executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections are not shared between threads)."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db, self._local.on_loop = db, False
            with self._lock:
                self._connections.append(db)
        if not self._local.on_loop and _on_event_loop():  # a thread may start its loop after its first call
            db.execute("PRAGMA wal_autocheckpoint=0")
            self._local.on_loop = True
        return db

    def checkpoint(self) -> None:
        """Copy what the WAL holds into the database where no reader needs it (blocking: a worker thread)."""
        self._db().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def release_thread(self) -> None:
        """Close the calling thread's connection (a thread that is about to end)."""
        db = getattr(self._local, "db", None)
        if db is None:
            return
        with self._lock:
            if db in self._connections:
                self._connections.remove(db)
        db.close()
        del self._local.db

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for db in connections:
            db.close()
        self._local = threading.local()

    # changes ---------------------------------------------------------------------------------
    def add(self, digest: str, size: int, accessed: float, klass: str = CACHED) -> None:
        """A blob was stored (again): its row, with this access; an existing row keeps its class."""
        self._db().execute(
            "INSERT INTO blobs VALUES (?, ?, ?, ?) ON CONFLICT (digest) DO UPDATE SET "
            "size = excluded.size, accessed = max(accessed, excluded.accessed)",
            (digest, size, accessed, klass))

    def add_found(self, rows: Iterable[tuple[str, int, float, str]]) -> None:
        """Rows found on disk by a build: a row written meanwhile by a hook wins."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)", rows)

    def remove(self, digest: str) -> None:
        self._db().execute("DELETE FROM blobs WHERE digest = ?", (digest,))

    def set_class(self, digest: str, klass: str) -> None:
        """Move a blob between cached, pushed and kept (its bytes move between the totals)."""
        self._db().execute("UPDATE blobs SET class = ? WHERE digest = ? AND class != ?", (klass, digest, klass))

    def set_classes(self, digests: Iterable[str], klass: str) -> None:
        """``set_class`` for many blobs in one transaction."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("UPDATE blobs SET class = ? WHERE digest = ? AND class != ?",
                           ((klass, digest, klass) for digest in digests))

    def touch(self, accesses: Iterable[tuple[str, float]]) -> None:
        """Record last accesses (the flush of what the blob store remembered), in one transaction;
        on a full disk they are dropped (the LRU order is best effort, never a failure)."""
        db = self._db()
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.executemany("UPDATE blobs SET accessed = max(accessed, ?) WHERE digest = ?",
                               ((when, digest) for digest, when in accesses))
        except sqlite3.OperationalError as exc:
            if not is_sqlite_full(exc):
                raise

    # reads -----------------------------------------------------------------------------------
    def totals(self) -> dict[str, int]:
        """Bytes stored per class."""
        return {klass: int(size) for klass, size in self._db().execute("SELECT class, bytes FROM totals")}

    def total(self, klass: str) -> int:
        row = self._db().execute("SELECT bytes FROM totals WHERE class = ?", (klass,)).fetchone()
        return int(row[0]) if row else 0

    def count(self, klass: str) -> int:
        row = self._db().execute("SELECT blobs FROM totals WHERE class = ?", (klass,)).fetchone()
        return int(row[0]) if row else 0

    def row(self, digest: str) -> tuple[int, float, str] | None:
        """(size, last access, class) of one blob, or None when it is not indexed."""
        return self._db().execute("SELECT size, accessed, class FROM blobs WHERE digest = ?", (digest,)).fetchone()

    def oldest(self, klass: str = CACHED, after: tuple[float, str] | None = None,
               limit: int = BATCH) -> list[tuple[str, int, float]]:
        """Up to ``limit`` (digest, size, last access) of ``klass``, least recently accessed first,
        after the (last access, digest) position ``after``."""
        if after is None:
            query, args = ("SELECT digest, size, accessed FROM blobs WHERE class = ? "
                           "ORDER BY accessed, digest LIMIT ?"), (klass, limit)
        else:
            query, args = ("SELECT digest, size, accessed FROM blobs WHERE class = ? AND (accessed, digest) > (?, ?) "
                           "ORDER BY accessed, digest LIMIT ?"), (klass, after[0], after[1], limit)
        return self._db().execute(query, args).fetchall()

    def by_digest(self, klass: str | None = None, after: str = "", limit: int = BATCH) -> list[tuple[str, int]]:
        """Up to ``limit`` (digest, size) in digest order after ``after`` (of ``klass``, or of any class)."""
        if klass is None:
            return self._db().execute("SELECT digest, size FROM blobs WHERE digest > ? ORDER BY digest LIMIT ?",
                                      (after, limit)).fetchall()
        return self._db().execute("SELECT digest, size FROM blobs WHERE class = ? AND digest > ? "
                                  "ORDER BY digest LIMIT ?", (klass, after, limit)).fetchall()

    def batches(self, klass: str | None = None) -> Iterator[list[tuple[str, int]]]:
        """Every row as batches of (digest, size) in digest order (each batch is one short query)."""
        after = ""
        while batch := self.by_digest(klass, after):
            yield batch
            after = batch[-1][0]

    # the build -------------------------------------------------------------------------------
    @property
    def built(self) -> bool:
        return self._db().execute("SELECT 1 FROM state WHERE key = 'built'").fetchone() is not None

    def mark_built(self) -> None:
        self._db().execute("INSERT OR REPLACE INTO state VALUES ('built', datetime('now'))")


def _on_event_loop() -> bool:
    """Whether this thread runs an event loop (its calls must stay short)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
