"""Content a mirror list keeps is never evicted by the cache budget, nor collected by gc, and becomes
evictable again once no list keeps it (``MirrorRecords.release`` / ``forget_image``)."""

from __future__ import annotations

import asyncio
import re

from support.images import MANIFEST_ACCEPT, Image, make_image, push_image

from proxy.app import BLOBS, BUDGET, META, UPLOADS
from proxy.http import keys
from proxy.mirror.records import IMPORT_HOLDER, MirroredImage
from proxy.oci.digest import Digest
from proxy.registry.gc import collect

LAYER = 30_000
BUDGET_BYTES = 100_000  # three cached images fit, four do not


def _content(image: Image) -> dict[str, bytes]:
    return {image.digest: image.manifest, **image.blobs}


async def _start(make_wharf, registry_upstream, repo_name, tmp_path):
    kept = make_image("keep-kept", (LAYER,))
    cached = [make_image(f"keep-cached{i}", (LAYER,)) for i in range(6)]
    await push_image(registry_upstream, repo_name, kept, tag="kept")
    for i, image in enumerate(cached):
        await push_image(registry_upstream, repo_name, image, tag=f"c{i}")
    wharf = await make_wharf(registry_upstream, storage={"root": str(tmp_path / "store"),
                                                         "max_cache_bytes": BUDGET_BYTES})
    deadline = asyncio.get_running_loop().time() + 10
    while not wharf.app[BUDGET].counted.is_set() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)  # the count at start is done: it would reset the totals otherwise
    name = f"{wharf.upstream_name(registry_upstream)}/{repo_name}"
    await _pull(wharf, name, kept, "kept")
    mirrored = MirroredImage(name=name, upstream=wharf.upstream_name(registry_upstream), repo=repo_name,
                             tags={"kept": kept.digest}, manifests={kept.digest: kept.media_type},
                             blobs={d: len(b) for d, b in kept.blobs.items()})
    wharf.app[keys.MIRROR_RECORDS].adopt(mirrored, "testlist")
    await asyncio.sleep(0.01)  # the kept image is the least recently pulled: first to go if it could
    return wharf, name, kept, cached, mirrored


async def _pull(wharf, name: str, image: Image, tag: str) -> None:
    resp = await wharf.client.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200 and await resp.read() == image.manifest
    for digest, data in image.blobs.items():
        resp = await wharf.client.get(f"/v2/{name}/blobs/{digest}")
        assert resp.status == 200 and await resp.read() == data


def _stored(wharf, image: Image) -> bool:
    return all(wharf.app[BLOBS].size(Digest.parse(d)) is not None for d in _content(image))


def _gone(wharf, image: Image) -> bool:
    return wharf.app[BLOBS].size(Digest.parse(image.layers[0].digest)) is None


async def _evictions_done(wharf) -> None:
    assert await asyncio.to_thread(wharf.app[BUDGET].wait_idle, 10)


async def _store_bytes(wharf, kind: str) -> float:
    text = await (await wharf.client.get("/metrics")).text()
    match = re.search(rf'^wharf_store_bytes{{kind="{kind}"}} (\S+)$', text, re.M)
    assert match, text
    return float(match.group(1))


async def test_kept_content_is_never_evicted_and_cached_content_is(make_wharf, registry_upstream, repo_name,
                                                                    tmp_path):
    wharf, name, kept, cached, _ = await _start(make_wharf, registry_upstream, repo_name, tmp_path)
    kept_bytes = sum(len(b) for b in _content(kept).values())
    assert await _store_bytes(wharf, "kept") == kept_bytes
    for i, image in enumerate(cached[:4]):
        await _pull(wharf, name, image, f"c{i}")
        await asyncio.sleep(0.01)
    await _evictions_done(wharf)
    assert _gone(wharf, cached[0]) and _gone(wharf, cached[1])  # the least recently pulled cached ones
    assert _stored(wharf, cached[3])
    assert _stored(wharf, kept)
    await _pull(wharf, name, kept, "kept")  # and still served
    assert await _store_bytes(wharf, "kept") == kept_bytes
    assert await _store_bytes(wharf, "cached") <= BUDGET_BYTES
    text = await (await wharf.client.get("/metrics")).text()
    assert re.search(r"^wharf_evictions_total [1-9]", text, re.M)


async def test_gc_leaves_kept_content_alone_even_where_a_local_push_linked_it(make_wharf, registry_upstream,
                                                                              repo_name, tmp_path):
    wharf, name, kept, _, _ = await _start(make_wharf, registry_upstream, repo_name, tmp_path)
    local = f"local/{repo_name.split('/')[-1]}"
    await push_image(wharf.url, local, kept, tag="copy")  # links the kept blobs into a local repository
    resp = await wharf.client.delete(f"/v2/{local}/manifests/{kept.digest}")
    assert resp.status == 202
    report = await collect(wharf.app[BLOBS], wharf.app[META], wharf.app[UPLOADS], 0.0)
    assert report.removed == 0
    await wharf.app[BUDGET].scan_off_loop()
    assert _stored(wharf, kept)
    await _pull(wharf, name, kept, "kept")
    assert await _store_bytes(wharf, "kept") == sum(len(b) for b in _content(kept).values())


async def test_released_content_is_evictable_again(make_wharf, registry_upstream, repo_name, tmp_path):
    wharf, name, kept, cached, mirrored = await _start(make_wharf, registry_upstream, repo_name, tmp_path)
    records, meta = wharf.app[keys.MIRROR_RECORDS], wharf.app[META]
    records.adopt(mirrored, IMPORT_HOLDER)  # an import keeps it too
    records.forget_image("testlist", name)
    assert records.images("testlist") == {}
    assert all(meta.keepers(d) == [IMPORT_HOLDER] for d in _content(kept))
    for i, image in enumerate(cached[:4]):
        await _pull(wharf, name, image, f"c{i}")
    await _evictions_done(wharf)
    assert _stored(wharf, kept)  # still kept by the import
    records.release(IMPORT_HOLDER, set(_content(kept)))
    assert not any(meta.is_kept(d) for d in _content(kept))
    assert await _store_bytes(wharf, "kept") == 0
    for i, image in enumerate(cached[4:], 4):
        await _pull(wharf, name, image, f"c{i}")
        await asyncio.sleep(0.01)
    await _evictions_done(wharf)
    assert _gone(wharf, kept)  # the least recently pulled: evicted like any cached content
    assert _stored(wharf, cached[5])
