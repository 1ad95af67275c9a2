"""The blob index: eviction order, totals and the build at start come from it, on a real store.

Blobs are stored through ``BlobStore`` (as fills and pushes store them), the budget is the one the
app builds, and every check is what an operator sees: which blobs are still stored, and the totals
``/metrics`` and the dashboard show.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

from proxy.app import BLOBS, BUDGET
from proxy.metrics import Metrics
from proxy.oci.digest import Digest
from proxy.storage.blob_index import INDEX_FILE
from proxy.storage.blobs import BlobStore
from proxy.storage.budget import Budget
from proxy.storage.meta import MetaStore
from support.bigstore import make_big_store

SIZE = 1000


def _store(root, budget: int = 10**9) -> tuple[BlobStore, MetaStore, Budget]:
    blobs = BlobStore(root)
    meta = MetaStore(root / "meta")
    keeper = Budget(blobs, meta, budget, Metrics())
    blobs.on_added = keeper.added
    return blobs, meta, keeper


def _put(blobs: BlobStore, label: str) -> Digest:
    data = label.encode().ljust(SIZE, b"-")
    digest = Digest("sha256", hashlib.sha256(data).hexdigest())
    blobs.put_bytes(data, digest)
    return digest


def _stored(blobs: BlobStore, *digests: Digest) -> set[Digest]:
    return {d for d in digests if blobs.size(d) is not None}


def test_eviction_takes_the_least_recently_pulled_first(tmp_path):
    blobs, meta, budget = _store(tmp_path)
    first, second, third, fourth = (_put(blobs, name) for name in ("first", "second", "third", "fourth"))
    blobs.flush_access_times()
    with blobs.reading(first):  # pulled again: now the most recent
        pass
    budget.max_cached_bytes = 3 * SIZE  # over: evicts down to 2,700 bytes, two blobs
    assert budget.evict() == 2 * SIZE
    assert _stored(blobs, first, second, third, fourth) == {first, fourth}
    assert budget.cached_bytes == 2 * SIZE
    assert meta.store_bytes("cached") == 2 * SIZE  # what the dashboard reads


def test_pushed_and_kept_blobs_are_not_evicted_and_not_counted(tmp_path):
    blobs, meta, budget = _store(tmp_path)
    data = b"pushed".ljust(SIZE, b"-")
    pushed = Digest("sha256", hashlib.sha256(data).hexdigest())
    meta.mark_pushed(str(pushed))  # as a push does, before the store sees it
    blobs.put_bytes(data, pushed)
    kept, cached = _put(blobs, "kept"), _put(blobs, "cached")
    meta.keep(str(kept), "list:a")
    budget.kept(SIZE, str(kept))
    assert (budget.cached_bytes, budget.pushed_bytes, budget.kept_bytes) == (SIZE, SIZE, SIZE)
    budget.max_cached_bytes = 1
    budget.evict()
    assert _stored(blobs, pushed, kept, cached) == {pushed, kept}
    assert (budget.cached_bytes, budget.pushed_bytes, budget.kept_bytes) == (0, SIZE, SIZE)


def test_totals_follow_adopt_and_remove_in_every_process_of_the_store(tmp_path):
    blobs, _, budget = _store(tmp_path)
    other_blobs, _, other_budget = _store(tmp_path)  # another worker process on the same root
    one = _put(blobs, "one")
    two = _put(other_blobs, "two")
    assert budget.cached_bytes == other_budget.cached_bytes == 2 * SIZE
    assert blobs.remove(one) == SIZE
    assert budget.cached_bytes == other_budget.cached_bytes == SIZE
    assert other_blobs.remove(two) == SIZE
    assert budget.cached_bytes == 0
    assert blobs.remove(two) == 0 and budget.cached_bytes == 0  # gone already: nothing counted twice


def test_a_missing_index_is_built_from_disk_with_classes_and_access_order(tmp_path):
    blobs, meta, _ = _store(tmp_path)
    data = b"pushed".ljust(SIZE, b"-")
    pushed = Digest("sha256", hashlib.sha256(data).hexdigest())
    meta.mark_pushed(str(pushed))
    blobs.put_bytes(data, pushed)
    old, new = _put(blobs, "old"), _put(blobs, "new")
    os.utime(blobs.path(old), (1_000_000, 1_000_000))  # the order a rebuild reads: last access on disk
    blobs.index.close()
    meta.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"{INDEX_FILE}{suffix}").unlink(missing_ok=True)

    blobs, meta, budget = _store(tmp_path)
    assert budget.cached_bytes == 0 and not blobs.index.built
    budget.scan()
    assert blobs.index.built and budget.counted.is_set()
    assert (budget.cached_bytes, budget.pushed_bytes) == (2 * SIZE, SIZE)
    budget.max_cached_bytes = 2 * SIZE - 1  # over by a byte: down to 1,799 bytes, one blob
    budget.evict()
    assert _stored(blobs, pushed, old, new) == {pushed, new}


async def test_requests_are_answered_while_a_big_store_is_indexed_and_evicted(make_wharf, tmp_path):
    root = tmp_path / "store"
    summary = await asyncio.to_thread(make_big_store, root, 6000, 1200, 600)
    total = summary["blob_bytes"] + summary["manifest_bytes"]
    wharf = await make_wharf(named_upstreams={"upstream.local": "http://127.0.0.1:9"},
                             storage={"root": str(root), "max_cache_bytes": total - 1})
    budget, blobs = wharf.app[BUDGET], wharf.app[BLOBS]
    answered_while_busy = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while not (budget.counted.is_set() and budget.wait_idle(0)) and loop.time() < deadline:
        busy = not budget.counted.is_set() or not budget.wait_idle(0)
        assert (await wharf.client.get("/healthz")).status == 200
        blob = summary["sample"]["blobs"][-1]  # among the newest: never evicted
        resp = await wharf.client.get(f"/v2/upstream.local/big/r0/blobs/{blob}")
        assert resp.status == 200 and len(await resp.read()) == 1024
        if busy and (not budget.counted.is_set() or not budget.wait_idle(0)):
            answered_while_busy += 1
        await asyncio.sleep(0.01)
    assert budget.counted.is_set() and budget.wait_idle(0), "indexing and eviction did not finish"
    assert answered_while_busy > 0, "nothing was answered while the store was indexed and evicted"
    assert budget.cached_bytes <= (total - 1) * 0.9
    remaining = blobs.index.count("cached")
    assert remaining < summary["blobs"] + summary["manifests"]
    oldest = Digest.parse(summary["sample"]["blobs"][0])
    assert blobs.size(oldest) is None, "the oldest blob was not the first to go"
