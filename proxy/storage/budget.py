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

Eviction removes whole images where it can: an image is as recent as its newest blob or its tag's
last pull (a pull by tag may read no blob: the node has them); a cached blob that the tags of
upstream images reference (the cache index's content rows) goes with every other blob and manifest
of those images that no other tag references, and their tag records are deleted (then ``on_tags_dropped``: the
answers remembered for them are dropped). A tag that is gone is fetched anew, or, with upstream
down, answers what a tag never cached answers; no tag is left naming an image missing some of its
blobs. Content the index does not know (pulled by digest only) is evicted blob by blob.

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
from typing import Callable, Iterable

from proxy.metrics import Metrics
from proxy.oci.digest import Digest
from proxy.storage.blob_index import BATCH, CACHED, CLASSES, KEPT, PUSHED
from proxy.storage.blobs import BlobStore
from proxy.storage.cache_index import CacheIndex
from proxy.storage.meta import MetaStore

log = logging.getLogger("wharf.budget")
_LOW_WATER = 0.9
RECENT_EVICTIONS = 50
_RECENT_DOCUMENT = "recent-evictions"


class Budget:
    def __init__(self, blobs: BlobStore, meta: MetaStore, max_cached_bytes: int, metrics: Metrics,
                 images: CacheIndex | None = None,
                 on_tags_dropped: Callable[[list[tuple[str, str]]], None] | None = None) -> None:
        self._blobs = blobs
        self._meta = meta
        self._images = images                     # which tags reference a blob: whole images go
        self._on_tags_dropped = on_tags_dropped   # called on the loop with the (scope, tag)s eviction deleted
        self._loop: asyncio.AbstractEventLoop | None = None  # the app's, learned at start
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
        # the store's totals as last read (``refresh_totals``): a scrape on the event loop reads memory,
        # never SQLite, which an eviction or the build may be writing at that moment
        self._seen_totals: dict[str, int] = self._index.totals()
        for kind in CLASSES:
            metrics.store_bytes.labels(kind).set_function(lambda kind=kind: self._seen_totals.get(kind, 0))

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
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.scan)

    def refresh_totals(self) -> dict[str, int]:
        """Read the store's totals for the metrics (whichever worker changed them last; blocking:
        every change of this process calls it, and a worker thread every second)."""
        self._seen_totals = totals = self._index.totals()
        return totals

    def tick(self) -> None:
        """Every second, in a worker thread: the totals for the metrics, and a checkpoint of the
        index's WAL (the event loop's commits never run one)."""
        self.refresh_totals()
        self._index.checkpoint()

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
                self.refresh_totals()
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
        totals = self.refresh_totals()
        for kind in CLASSES:
            self._meta.set_store_bytes(kind, totals.get(kind, 0))

    def added(self, digest: Digest, size: int) -> None:
        """A blob was stored: move its row to its class; cached content over budget starts an eviction."""
        klass = self._class_of(str(digest))
        if klass != CACHED:
            self._index.set_class(str(digest), klass)
        total = self._meta.add_store_bytes(klass, size)
        if klass == CACHED and max(total, self.refresh_totals().get(CACHED, 0)) > self.max_cached_bytes:
            self.request_eviction()
        elif klass != CACHED:
            self.refresh_totals()

    def kept(self, size: int, digest: str | None = None) -> None:
        """A cached blob of ``size`` bytes is kept by a mirror from now on: it leaves the budget."""
        if digest is not None:
            self._index.set_class(digest, KEPT)
        self._meta.add_store_bytes("cached", -size)
        self._meta.add_store_bytes("kept", size)
        self.refresh_totals()

    def released(self, size: int, digest: str | None = None) -> None:
        """A kept blob nobody keeps any more is cached content again (evictable)."""
        if digest is not None:
            self._index.set_class(digest, CACHED)
        self._meta.add_store_bytes("kept", -size)
        if max(self._meta.add_store_bytes("cached", size), self.refresh_totals().get(CACHED, 0)) > self.max_cached_bytes:
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
        """One eviction thread's life; its database connections end with it (each holds a page
        cache and a memory map of the file it read: left to the garbage collector, every run's
        would stay)."""
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
        finally:
            self._meta.release_thread()
            self._blobs.index.release_thread()

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
        """Remove the oldest cached blobs, a batch of the index at a time, until under the low-water
        mark; each with the rest of the images it belongs to (``_image_of``)."""
        self._blobs.flush_access_times()  # this process's recent pulls count before the order is read
        target = int(self.max_cached_bytes * _LOW_WATER)
        freed = 0
        evicted: deque[tuple[Digest, int, float]] = deque(maxlen=RECENT_EVICTIONS)
        after: tuple[float, str] | None = None
        while (cached := self.cached_bytes) > target and (batch := self._index.oldest(CACHED, after)):
            gone: set[str] = set()  # removed with an image earlier in this page: skipped
            dropped: list[tuple[str, str]] = []  # tags deleted in this page: one hook call for them
            for key, size, when in batch:
                after = (when, key)
                if cached <= target:
                    break
                if key in gone:
                    continue
                klass = self._class_of(key)
                if klass != CACHED:  # pushed or kept since it was indexed
                    self._index.set_class(key, klass)
                    cached -= size
                    continue
                tags, others = self._image_of(key)
                pulled = max((tag[3] or 0.0 for tag in tags), default=0.0)
                if pulled > when:  # an image it belongs to was pulled since (by tag: its blobs may not be read)
                    self._index.touch([(key, pulled)])
                    continue
                removed = self._blobs.evict(Digest.parse(key))  # 0 while somebody reads it (the row stays)
                if not removed:
                    continue
                for digest, size_freed in [(key, removed), *self._evict_each(others)]:
                    gone.add(digest)
                    cached -= size_freed
                    freed += size_freed
                    self._metrics.evictions.inc()
                    self._metrics.evicted_bytes.inc(size_freed)
                    evicted.append((Digest.parse(digest), size_freed, time.time()))
                dropped += self._drop_tags(tags)
            if dropped and self._on_tags_dropped is not None:
                self._call_on_loop(self._on_tags_dropped, dropped)
            self.refresh_totals()  # the metrics follow page by page
        self._publish_totals()
        if evicted:
            self._note_evicted(evicted)
        if freed:
            log.info("evicted %d bytes to stay under the %d byte budget", freed, self.max_cached_bytes)
        return freed

    def _image_of(self, key: str) -> tuple[list[tuple[str, str, str, float | None]], list[str]]:
        """The tags whose images hold ``key`` (scope, tag, digest it names, last pull), and the other
        cached digests of those images that no other tag references: what goes with ``key``."""
        if self._images is None:
            return [], []
        tags = self._images.tags_referencing(key)
        leaving = {(scope, tag) for scope, tag, _, _ in tags}
        others = [digest for digest in self._images.content_blocking(leaving)
                  if digest != key and not self._images.referenced_by_others(digest, leaving)]
        return tags, others

    def _evict_each(self, digests: Iterable[str]) -> Iterable[tuple[str, int]]:
        """Evict each cached digest still stored (never pushed or kept, nor one being read)."""
        for digest in digests:
            row = self._index.row(digest)
            if row is None or row[2] != CACHED or self._class_of(digest) != CACHED:
                continue
            removed = self._blobs.evict(Digest.parse(digest))
            if removed:
                yield digest, removed

    def _drop_tags(self, tags: list[tuple[str, str, str, float | None]]) -> list[tuple[str, str]]:
        """Delete the tag records of images eviction took apart (unless the tag moved meanwhile), and
        their cache index rows; returns the (scope, tag)s deleted (for ``on_tags_dropped``)."""
        if not tags:
            return []
        dropped, unindexed = [], []
        for scope, tag, digest, _ in tags:
            record = self._meta.tag(scope, tag, fresh=True)
            if record is None or record.digest == digest:
                unindexed.append((scope, tag))
            if record is not None and record.digest == digest:
                self._meta.delete_tag(scope, tag)
                dropped.append((scope, tag))
        self._images.forget(unindexed)
        return dropped

    def _call_on_loop(self, hook: Callable, *args) -> None:
        """Run ``hook`` on the app's loop (the caches it drops from are the loop's); no loop: here."""
        loop = self._loop
        if loop is None or loop.is_closed():
            hook(*args)
            return
        try:
            loop.call_soon_threadsafe(hook, *args)
        except RuntimeError:  # closed meanwhile (shutdown)
            hook(*args)

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
