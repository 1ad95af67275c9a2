"""The size budget for cached content: least-recently-pulled blobs go first.

Rules: pushed blobs, and blobs a mirror list or an import keeps (``MetaStore.keep``), are never
evicted and do not count against the budget; a blob that is being read is skipped; eviction runs
down to 90% of the budget so it does not run on every fill.

The totals and the order come from the blob index (``proxy.storage.blob_index``), shared by every
process of the store: nothing here lists, counts or sorts the store. An eviction reads the oldest
cached blobs a batch (``BATCH``) at a time and checks each against the metadata before removing it
(pushed or kept since it was indexed: its row moves to that class). The totals are also written to
the metadata (``store-bytes:<kind>``) for the dashboard's readers.

Work that may wait on another process runs in a worker thread, never on the event loop: a commit
that crosses the budget only starts an eviction thread and returns (the store may exceed the budget
until it is done); at start, an index that is missing is built from disk in a thread (until it is
done, its totals are what was found so far). Eviction and the build are decided once per store: each
holds a flock on a file of the store's root, which works across the processes and replicas of a
shared volume. In a process, one eviction runs at a time; a request for another while it runs makes
it look again when it is done.

The last ``RECENT_EVICTIONS`` blobs evicted are kept, newest first, in the metadata document
``recent-evictions`` (for the cache dashboard): digest, size, when, and the repositories it was
confirmed in (``public``: confirmed without a client's credential).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque

from proxy.metrics import Metrics
from proxy.oci.digest import Digest
from proxy.storage.blob_index import BATCH, CACHED, CLASSES, KEPT, PUSHED
from proxy.storage.blobs import BlobStore
from proxy.storage.meta import MetaStore

log = logging.getLogger("wharf.budget")
_LOW_WATER = 0.9
RECENT_EVICTIONS = 50
_RECENT_DOCUMENT = "recent-evictions"


class Budget:
    def __init__(self, blobs: BlobStore, meta: MetaStore, max_cached_bytes: int, metrics: Metrics) -> None:
        self._blobs = blobs
        self._meta = meta
        self.max_cached_bytes = max_cached_bytes
        self._metrics = metrics
        self._lock_path = blobs.root / "budget.lock"
        self._build_lock_path = blobs.root / "blob-index.lock"
        self._index = blobs.index
        self._state = threading.Lock()
        self._evicting = False  # an eviction thread of this process runs
        self._again = False     # asked for again while it ran
        self._idle = threading.Event()
        self._idle.set()
        self.counted = threading.Event()  # set once the index is complete (built from disk, or found built)
        metrics.store_budget.set(max_cached_bytes)
        # read at scrape time: the store's totals, whichever worker changed them last
        metrics.store_bytes.labels("cached").set_function(lambda: self.cached_bytes)
        metrics.store_bytes.labels("pushed").set_function(lambda: self.pushed_bytes)
        metrics.store_bytes.labels("kept").set_function(lambda: self.kept_bytes)

    @property
    def cached_bytes(self) -> int:
        return self._index.total(CACHED)

    @property
    def pushed_bytes(self) -> int:
        return self._index.total(PUSHED)

    @property
    def kept_bytes(self) -> int:
        return self._index.total(KEPT)

    async def scan_off_loop(self) -> None:
        """``scan`` in a worker thread: a build's cost grows with the store."""
        await asyncio.to_thread(self.scan)

    def scan(self) -> None:
        """Make the index complete (build it from disk once per store when it is missing) and write
        its totals to the metadata (at start, and after gc moved content between pushed and cached)."""
        if not self._index.built:
            lock = self._blobs.lock(self._build_lock_path)  # another process builds: wait for it
            try:
                if not self._index.built:
                    self._build()
            finally:
                self._blobs.unlock(lock)
        self._publish_totals()
        self.counted.set()
        if self.cached_bytes > self.max_cached_bytes:
            self.request_eviction()

    def _build(self) -> None:
        """Index every blob on disk, classified by the metadata, a batch per transaction."""
        found = 0
        batch: list[tuple[str, int, float, str]] = []
        for digest, size, when in self._blobs.iter_blobs():
            batch.append((str(digest), size, when, self._class_of(str(digest))))
            if len(batch) >= BATCH:
                self._index.add_found(batch)
                found += len(batch)
                batch = []
        self._index.add_found(batch)
        self._index.mark_built()
        log.info("indexed %d blobs of the store", found + len(batch))

    def _class_of(self, digest: str) -> str:
        if self._meta.is_pushed(digest):
            return PUSHED
        return KEPT if self._meta.is_kept(digest) else CACHED

    def _publish_totals(self) -> None:
        totals = self._index.totals()
        for kind in CLASSES:
            self._meta.set_store_bytes(kind, totals.get(kind, 0))

    def added(self, digest: Digest, size: int) -> None:
        """A blob was stored: move its row to its class; cached content over budget starts an eviction."""
        klass = self._class_of(str(digest))
        if klass != CACHED:
            self._index.set_class(str(digest), klass)
        total = self._meta.add_store_bytes(klass, size)
        if klass == CACHED and max(total, self.cached_bytes) > self.max_cached_bytes:
            self.request_eviction()

    def kept(self, size: int, digest: str | None = None) -> None:
        """A cached blob of ``size`` bytes is kept by a mirror from now on: it leaves the budget."""
        if digest is not None:
            self._index.set_class(digest, KEPT)
        self._meta.add_store_bytes("cached", -size)
        self._meta.add_store_bytes("kept", size)

    def released(self, size: int, digest: str | None = None) -> None:
        """A kept blob nobody keeps any more is cached content again (evictable)."""
        if digest is not None:
            self._index.set_class(digest, CACHED)
        self._meta.add_store_bytes("kept", -size)
        if max(self._meta.add_store_bytes("cached", size), self.cached_bytes) > self.max_cached_bytes:
            self.request_eviction()

    def request_eviction(self) -> None:
        """Start an eviction in a worker thread and return at once; one runs per process at a time."""
        with self._state:
            if self._evicting:
                self._again = True
                return
            self._evicting, self._again = True, False
            self._idle.clear()
        threading.Thread(target=self._evict_in_background, name="wharf-evict", daemon=True).start()

    def _evict_in_background(self) -> None:
        try:
            while True:
                try:
                    self.evict(wait=True)
                except Exception:
                    log.exception("eviction failed")
                with self._state:
                    if not (self._again and self.cached_bytes > self.max_cached_bytes):
                        self._evicting = False
                        self._idle.set()
                        return
                    self._again = False
        except BaseException:
            with self._state:
                self._evicting = False
                self._idle.set()
            raise

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no eviction of this process runs (for shutdown and tests); False on timeout."""
        return self._idle.wait(timeout)

    def evict(self, wait: bool = False) -> int:
        """Remove least-recently-pulled cached blobs until under the low-water mark.

        Another process evicting already is enough: this one returns 0 at once, or, with ``wait``
        (the eviction thread), waits for it and then evicts only if the store is still over.
        """
        lock = self._blobs.lock(self._lock_path) if wait else self._blobs.try_lock(self._lock_path)
        if lock is None:
            return 0
        try:
            if wait and self.cached_bytes <= self.max_cached_bytes:
                return 0
            return self._evict()
        finally:
            self._blobs.unlock(lock)

    def _evict(self) -> int:
        """Remove the oldest cached blobs, a batch of the index at a time, until under the low-water mark."""
        self._blobs.flush_access_times()  # this process's recent pulls count before the order is read
        target = int(self.max_cached_bytes * _LOW_WATER)
        freed = 0
        evicted: deque[tuple[Digest, int, float]] = deque(maxlen=RECENT_EVICTIONS)
        after: tuple[float, str] | None = None
        while (cached := self.cached_bytes) > target and (batch := self._index.oldest(CACHED, after)):
            for key, size, when in batch:
                after = (when, key)
                if cached <= target:
                    break
                klass = self._class_of(key)
                if klass != CACHED:  # pushed or kept since it was indexed
                    self._index.set_class(key, klass)
                    cached -= size
                    continue
                digest = Digest.parse(key)
                removed = self._blobs.evict(digest)  # 0 while somebody reads it (the row stays)
                if removed:
                    cached -= removed
                    freed += removed
                    self._metrics.evictions.inc()
                    self._metrics.evicted_bytes.inc(removed)
                    evicted.append((digest, removed, time.time()))
        self._publish_totals()
        if evicted:
            self._note_evicted(evicted)
        if freed:
            log.info("evicted %d bytes to stay under the %d byte budget", freed, self.max_cached_bytes)
        return freed

    def _note_evicted(self, evicted: deque[tuple[Digest, int, float]]) -> None:
        """Put the blobs just evicted in front of the recent evictions (one evictor runs at a time)."""
        entries = []
        for digest, size, when in reversed(evicted):
            seen = self._meta.visibility(str(digest))
            entries.append({"digest": str(digest), "size": size, "at": when,
                            "repositories": sorted(seen.repos), "public": seen.public})
        earlier = self._meta.document(_RECENT_DOCUMENT, fresh=True) or []
        self._meta.set_document(_RECENT_DOCUMENT, (entries + list(earlier))[:RECENT_EVICTIONS])

    def recent_evictions(self) -> list[dict]:
        """The last blobs evicted, newest first (reads the metadata: call it off the event loop)."""
        return list(self._meta.document(_RECENT_DOCUMENT, fresh=True) or [])
