"""The cache budget's store-wide work runs off the event loop: eviction and the start-up build.

A slow store is stood in for by a blob listing (or, for eviction, the blob index's query of the
oldest blobs) that blocks until the test lets it go (with a time limit, so the test ends either
way). Run on the event loop, nothing else is answered until the time limit passes, and the tests
fail on what they assert: that the fill's answer and ``/healthz`` came while the call was still
held, and that it ran in another thread. Eviction never lists the store at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading

from proxy.app import BLOBS, BUDGET
from proxy.storage.blob_index import BlobIndex
from proxy.storage.blobs import BlobStore

REPO = "team/app"
_HOLD_LIMIT = 5.0


class HeldListing:
    """Replaces ``BlobStore.iter_blobs``: each listing waits for ``release()`` (or the time limit)."""

    def __init__(self, original) -> None:
        self._original = original
        self._release = threading.Event()
        self.threads: list[threading.Thread] = []
        self.released_in_time: list[bool] = []
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()
        self.started = threading.Event()

    def __call__(self, store, *args, **kwargs):
        with self._lock:
            self.threads.append(threading.current_thread())
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.started.set()
        try:
            self.released_in_time.append(self._release.wait(_HOLD_LIMIT))
            yield from self._original(store, *args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1

    def release(self) -> None:
        self._release.set()


class HeldQuery(HeldListing):
    """Replaces ``BlobIndex.oldest``: each query waits for ``release()`` (or the time limit)."""

    def __init__(self, original) -> None:
        super().__init__(lambda index, *args, **kwargs: iter(original(index, *args, **kwargs)))

    def __call__(self, index, *args, **kwargs):
        return list(super().__call__(index, *args, **kwargs))


async def _eventually(condition, seconds: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_an_eviction_runs_in_a_worker_thread_and_the_fill_does_not_wait_for_it(
        make_wharf, fake_upstream, monkeypatch, tmp_path):
    fake = await fake_upstream()
    old, new, newer = (fake.add_blob(REPO, os.urandom(60_000)) for _ in range(3))
    wharf = await make_wharf(fake.url, storage={"root": str(tmp_path / "store"), "max_cache_bytes": 100_000})
    name = f"{wharf.upstream_name(fake.url)}/{REPO}"
    blobs = wharf.app[BLOBS]
    assert await _eventually(wharf.app[BUDGET].counted.is_set)  # the count at start is done
    await (await wharf.client.get(f"/v2/{name}/blobs/{old}")).read()

    listing = HeldListing(BlobStore.iter_blobs)
    monkeypatch.setattr(BlobStore, "iter_blobs", lambda store: listing(store))
    held = HeldQuery(BlobIndex.oldest)
    monkeypatch.setattr(BlobIndex, "oldest", lambda index, *args, **kwargs: held(index, *args, **kwargs))
    resp = await wharf.client.get(f"/v2/{name}/blobs/{new}")  # 120 kB > 100 kB: an eviction starts
    assert resp.status == 200 and len(await resp.read()) == 60_000
    assert (await wharf.client.get("/healthz")).status == 200
    await (await wharf.client.get(f"/v2/{name}/blobs/{newer}")).read()  # over again: no second eviction now
    resp = await wharf.client.get(f"/v2/{name}/blobs/{old}")
    assert resp.status == 200 and len(await resp.read()) == 60_000, "cached content is served meanwhile"
    assert held.started.is_set() and held.running == 1, "the eviction is still reading the index"
    held.release()
    assert await _eventually(lambda: wharf.app[BUDGET].wait_idle(0))

    assert held.released_in_time and all(held.released_in_time), \
        "the listing held the event loop: nothing was answered until its time limit"
    assert threading.current_thread() not in held.threads, "the store was listed on the event loop's thread"
    assert held.most_at_once == 1, "two evictions ran at once in one process"
    assert not listing.started.is_set(), "the eviction listed the store"
    stored = sum(f.stat().st_size for f in (blobs.blob_dir / "sha256").iterdir())
    assert stored <= 90_000, f"{stored} bytes are stored after the eviction"


async def test_the_index_is_built_at_start_off_the_loop(make_wharf, fake_upstream, tmp_path, monkeypatch):
    root = tmp_path / "store"
    data = os.urandom(50_000)
    blob = root / "blobs" / "sha256" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)  # on disk, not yet in the blob index (there is none)
    held = HeldListing(BlobStore.iter_blobs)
    monkeypatch.setattr(BlobStore, "iter_blobs", lambda store: held(store))
    fake = await fake_upstream()
    wharf = await make_wharf(fake.url, storage={"root": str(root)})
    assert (await wharf.client.get("/healthz")).status == 200
    assert (await wharf.client.get("/readyz")).status == 200
    held.release()
    budget = wharf.app[BUDGET]
    assert await _eventually(lambda: budget.cached_bytes == 50_000), budget.cached_bytes
    assert held.released_in_time == [True], "the build at start held the event loop until its time limit"
    assert threading.current_thread() not in held.threads
    text = await (await wharf.client.get("/metrics")).text()
    assert 'wharf_store_bytes{kind="cached"} 50000.0' in text


async def test_a_metrics_scrape_during_an_eviction_reads_no_sqlite_on_the_event_loop(
        make_wharf, fake_upstream, monkeypatch, tmp_path):
    """The store's totals in ``/metrics`` come from memory, refreshed by the eviction page by page
    (and every second): the scrape never waits on the blob index an eviction is writing."""
    fake = await fake_upstream()
    old, new = (fake.add_blob(REPO, os.urandom(60_000)) for _ in range(2))
    wharf = await make_wharf(fake.url, storage={"root": str(tmp_path / "store"), "max_cache_bytes": 100_000})
    name = f"{wharf.upstream_name(fake.url)}/{REPO}"
    budget = wharf.app[BUDGET]
    assert await _eventually(budget.counted.is_set)
    await (await wharf.client.get(f"/v2/{name}/blobs/{old}")).read()
    readers: list[threading.Thread] = []
    for method in ("totals", "total"):
        original = getattr(BlobIndex, method)

        def recorded(index, *args, _original=original, **kwargs):
            readers.append(threading.current_thread())
            return _original(index, *args, **kwargs)

        monkeypatch.setattr(BlobIndex, method, recorded)
    held = HeldQuery(BlobIndex.oldest)
    monkeypatch.setattr(BlobIndex, "oldest", lambda index, *args, **kwargs: held(index, *args, **kwargs))
    await (await wharf.client.get(f"/v2/{name}/blobs/{new}")).read()  # over the budget: an eviction starts
    assert await _eventually(held.started.is_set)
    readers.clear()
    text = await (await wharf.client.get("/metrics")).text()  # while the eviction holds its query
    assert 'wharf_store_bytes{kind="cached"} 120000.0' in text
    assert threading.current_thread() not in readers, "the scrape read the blob index on the event loop"
    held.release()
    assert await _eventually(lambda: budget.wait_idle(0))
    text = await (await wharf.client.get("/metrics")).text()
    assert 'wharf_store_bytes{kind="cached"} 60000.0' in text, "the metrics missed the eviction"
    db = wharf.app[BLOBS].index._db()  # this thread runs the event loop: its commits never checkpoint
    assert db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
