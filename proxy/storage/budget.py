"""The size budget for cached content: least-recently-pulled blobs go first.

Rules: pushed blobs are never evicted and do not count against the budget; a blob that is being
read is skipped; eviction runs down to 90% of the budget so it does not run on every fill.
The totals are the store's, kept in its metadata and shared by every worker process (each adds
what it stores); one process evicts at a time, and an eviction recounts the store from disk.
"""

from __future__ import annotations

import logging

from proxy.metrics import Metrics
from proxy.oci.digest import Digest
from proxy.storage.blobs import BlobStore
from proxy.storage.meta import MetaStore

log = logging.getLogger("wharf.budget")
_LOW_WATER = 0.9


class Budget:
    def __init__(self, blobs: BlobStore, meta: MetaStore, max_cached_bytes: int, metrics: Metrics) -> None:
        self._blobs = blobs
        self._meta = meta
        self.max_cached_bytes = max_cached_bytes
        self._metrics = metrics
        self._lock_path = blobs.root / "budget.lock"
        metrics.store_budget.set(max_cached_bytes)
        # read at scrape time: the store's totals, whichever worker changed them last
        metrics.store_bytes.labels("cached").set_function(lambda: self.cached_bytes)
        metrics.store_bytes.labels("pushed").set_function(lambda: self.pushed_bytes)

    @property
    def cached_bytes(self) -> int:
        return self._meta.store_bytes("cached")

    @property
    def pushed_bytes(self) -> int:
        return self._meta.store_bytes("pushed")

    def scan(self) -> None:
        """Count what is on disk (at start, and after gc moved content between pushed and cached)."""
        cached = pushed = 0
        for digest, size, _ in self._blobs.iter_blobs():
            if self._meta.is_pushed(str(digest)):
                pushed += size
            else:
                cached += size
        self._meta.set_store_bytes("cached", cached)
        self._meta.set_store_bytes("pushed", pushed)

    def added(self, digest: Digest, size: int) -> None:
        if self._meta.is_pushed(str(digest)):
            self._meta.add_store_bytes("pushed", size)
        elif self._meta.add_store_bytes("cached", size) > self.max_cached_bytes:
            self.evict()

    def evict(self) -> int:
        """Remove least-recently-pulled cached blobs until under the low-water mark.

        Another process evicting already is enough: this one returns 0 at once.
        """
        lock = self._blobs.try_lock(self._lock_path)
        if lock is None:
            return 0
        try:
            return self._evict()
        finally:
            self._blobs.unlock(lock)

    def _evict(self) -> int:
        target = int(self.max_cached_bytes * _LOW_WATER)
        candidates = sorted(((when, digest, size) for digest, size, when in self._blobs.iter_blobs()
                             if not self._meta.is_pushed(str(digest))), key=lambda item: item[0])
        cached = sum(size for _, _, size in candidates)  # the truth on disk, whatever the count said
        freed = 0
        for _, digest, size in candidates:
            if cached - freed <= target:
                break
            if self._blobs.is_being_read(digest):
                continue
            removed = self._blobs.remove(digest)
            if removed:
                freed += removed
                self._metrics.evictions.inc()
                self._metrics.evicted_bytes.inc(removed)
        self._meta.set_store_bytes("cached", cached - freed)
        if freed:
            log.info("evicted %d bytes to stay under the %d byte budget", freed, self.max_cached_bytes)
        return freed
