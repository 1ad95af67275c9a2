"""The size budget for cached content: least-recently-pulled blobs go first.

Rules: pushed blobs are never evicted and do not count against the budget; a blob that is being
read is skipped; eviction runs down to 90% of the budget so it does not run on every fill.
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
        self.cached_bytes = 0
        self.pushed_bytes = 0
        metrics.store_budget.set(max_cached_bytes)

    def scan(self) -> None:
        """Count what is on disk (at start)."""
        cached = pushed = 0
        for digest, size, _ in self._blobs.iter_blobs():
            if self._meta.is_pushed(str(digest)):
                pushed += size
            else:
                cached += size
        self.cached_bytes, self.pushed_bytes = cached, pushed
        self._publish()

    def _publish(self) -> None:
        self._metrics.store_bytes.labels("cached").set(self.cached_bytes)
        self._metrics.store_bytes.labels("pushed").set(self.pushed_bytes)

    def added(self, digest: Digest, size: int) -> None:
        if self._meta.is_pushed(str(digest)):
            self.pushed_bytes += size
        else:
            self.cached_bytes += size
        self._publish()
        if self.cached_bytes > self.max_cached_bytes:
            self.evict()

    def evict(self) -> int:
        """Remove least-recently-pulled cached blobs until under the low-water mark."""
        target = int(self.max_cached_bytes * _LOW_WATER)
        candidates = sorted(((when, digest, size) for digest, size, when in self._blobs.iter_blobs()
                             if not self._meta.is_pushed(str(digest))), key=lambda item: item[0])
        freed = 0
        for _, digest, size in candidates:
            if self.cached_bytes - freed <= target:
                break
            if self._blobs.is_being_read(digest):
                continue
            removed = self._blobs.remove(digest)
            if removed:
                freed += removed
                self._metrics.evictions.inc()
                self._metrics.evicted_bytes.inc(removed)
        self.cached_bytes -= freed
        self._publish()
        if freed:
            log.info("evicted %d bytes to stay under the %d byte budget", freed, self.max_cached_bytes)
        return freed
