"""The size budget for cached content: least-recently-pulled blobs go first.

Rules: pushed blobs, and blobs a mirror list or an import keeps (``MetaStore.keep``), are never
evicted and do not count against the budget; a blob that is being
read is skipped; eviction runs down to 90% of the budget so it does not run on every fill.
The totals are the store's, kept in its metadata and shared by every worker process (each adds
what it stores); one process evicts at a time, and an eviction recounts the store from disk.

Listing, sorting and counting the store grow with the number of blobs (200,000 small blobs took
10 s), so none of it runs on the event loop: a commit that crosses the budget only starts an
eviction in a worker thread and returns (the store may exceed the budget until it is done), and
the count at start-up runs in a thread too (until it is done, the totals are those the metadata
kept from the last run). In a process, one eviction runs at a time; a request for another while it
runs makes it look again when it is done.

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
        self._state = threading.Lock()
        self._evicting = False  # an eviction thread of this process runs
        self._again = False     # asked for again while it ran
        self._idle = threading.Event()
        self._idle.set()
        self.counted = threading.Event()  # set once the store was counted (start-up count done)
        metrics.store_budget.set(max_cached_bytes)
        # read at scrape time: the store's totals, whichever worker changed them last
        metrics.store_bytes.labels("cached").set_function(lambda: self.cached_bytes)
        metrics.store_bytes.labels("pushed").set_function(lambda: self.pushed_bytes)
        metrics.store_bytes.labels("kept").set_function(lambda: self._meta.store_bytes("kept"))

    @property
    def cached_bytes(self) -> int:
        return self._meta.store_bytes("cached")

    @property
    def pushed_bytes(self) -> int:
        return self._meta.store_bytes("pushed")

    async def scan_off_loop(self) -> None:
        """``scan`` in a worker thread: its cost grows with the store."""
        await asyncio.to_thread(self.scan)

    def scan(self) -> None:
        """Count what is on disk (at start, and after gc moved content between pushed and cached)."""
        cached = pushed = kept = 0
        for digest, size, _ in self._blobs.iter_blobs():
            if self._meta.is_pushed(str(digest)):
                pushed += size
            elif self._meta.is_kept(str(digest)):
                kept += size
            else:
                cached += size
        self._meta.set_store_bytes("cached", cached)
        self._meta.set_store_bytes("pushed", pushed)
        self._meta.set_store_bytes("kept", kept)
        self.counted.set()

    def added(self, digest: Digest, size: int) -> None:
        if self._meta.is_pushed(str(digest)):
            self._meta.add_store_bytes("pushed", size)
        elif self._meta.is_kept(str(digest)):
            self._meta.add_store_bytes("kept", size)
        elif self._meta.add_store_bytes("cached", size) > self.max_cached_bytes:
            self.request_eviction()

    def kept(self, size: int) -> None:
        """A cached blob of ``size`` bytes is kept by a mirror from now on: it leaves the budget."""
        self._meta.add_store_bytes("cached", -size)
        self._meta.add_store_bytes("kept", size)

    def released(self, size: int) -> None:
        """A kept blob nobody keeps any more is cached content again (evictable)."""
        self._meta.add_store_bytes("kept", -size)
        if self._meta.add_store_bytes("cached", size) > self.max_cached_bytes:
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
        target = int(self.max_cached_bytes * _LOW_WATER)
        candidates = sorted(((when, digest, size) for digest, size, when in self._blobs.iter_blobs()
                             if not self._meta.is_pushed(str(digest)) and not self._meta.is_kept(str(digest))),
                            key=lambda item: item[0])
        cached = sum(size for _, _, size in candidates)  # the truth on disk, whatever the count said
        freed = 0
        evicted: deque[tuple[Digest, int, float]] = deque(maxlen=RECENT_EVICTIONS)
        for _, digest, size in candidates:
            if cached - freed <= target:
                break
            if self._meta.is_pushed(str(digest)) or self._meta.is_kept(str(digest)):  # pushed or kept since the listing
                cached -= size
                continue
            removed = self._blobs.remove(digest)  # 0 while somebody reads it
            if removed:
                freed += removed
                self._metrics.evictions.inc()
                self._metrics.evicted_bytes.inc(removed)
                evicted.append((digest, removed, time.time()))
        self._meta.set_store_bytes("cached", cached - freed)
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
