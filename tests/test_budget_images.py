"""Eviction removes whole images, and an image the store no longer holds whole is not served as
complete while upstream cannot be asked (down, failing, offline).

The upstream is a fake registry that a test breaks (``Fault(status=503)`` on every path) once the
content is cached; what is asserted is what a client pulling through Wharf then gets.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from support.fake_upstream import ANY_PATH, Fault
from support.images import MANIFEST_ACCEPT, Image, canonical_json, make_image, make_layer, sha256_digest
from support.wharf_serve import wharf_env

from proxy.app import BLOBS, BUDGET, META
from proxy.http import keys
from proxy.oci.digest import Digest

REPO = "team/app"


def _image(seed: str, layers) -> Image:
    """An image of these layers (a layer may be another image's too)."""
    base = make_image(seed, (100,))
    manifest = canonical_json({"schemaVersion": 2, "mediaType": base.media_type, "config": base.config.descriptor(),
                               "layers": [layer.descriptor() for layer in layers]})
    return Image(manifest, sha256_digest(manifest), base.media_type, base.config, tuple(layers))


async def _pull(wharf, name: str, image: Image, tag: str) -> None:
    resp = await wharf.client.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 200 and await resp.read() == image.manifest
    for digest, data in image.blobs.items():
        resp = await wharf.client.get(f"/v2/{name}/blobs/{digest}")
        assert resp.status == 200 and await resp.read() == data


async def _indexed(wharf, *digests: str) -> None:
    """Wait until the cache index knows which tags reference each digest (its flush runs each second)."""
    index = wharf.app[keys.CACHE_INDEX]
    for _ in range(100):
        await index.flush()
        found = [await asyncio.to_thread(index.tags_referencing, digest) for digest in digests]
        if all(found):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the cache index never recorded the tags")


def _stored(wharf, digest: str) -> bool:
    return wharf.app[BLOBS].size(Digest.parse(digest)) is not None


async def _error(resp) -> tuple[int, str]:
    body = await resp.json()
    return resp.status, body["errors"][0]["code"]


async def test_eviction_takes_a_whole_image_and_leaves_the_others_whole(make_wharf, fake_upstream, tmp_path):
    fake = await fake_upstream()
    shared, _ = make_layer("evict-shared", 200_000)
    only_old, _ = make_layer("evict-old", 300_000)
    only_new, _ = make_layer("evict-new", 300_000)
    old, new = _image("evict-old", (only_old, shared)), _image("evict-new", (only_new, shared))
    fake.add_image(REPO, old, tag="v1")
    fake.add_image(REPO, new, tag="v2")
    extra = fake.add_blob(REPO, os.urandom(250_000))
    wharf = await make_wharf(fake.url, storage={"root": str(tmp_path / "s"), "max_cache_bytes": 1_000_000})
    name = f"{wharf.upstream_name(fake.url)}/{REPO}"
    await _pull(wharf, name, old, "v1")
    await _pull(wharf, name, new, "v2")
    resp = await wharf.client.get(f"/v2/{name}/blobs/{only_old.digest}")  # the old image's layer is pulled again:
    assert await resp.read() == only_old.data  # blob by blob, the new image's manifest and layer would go first
    await _indexed(wharf, old.digest, new.digest, shared.digest)

    await (await wharf.client.get(f"/v2/{name}/blobs/{extra}")).read()  # over the budget: an eviction
    assert await asyncio.to_thread(wharf.app[BUDGET].wait_idle, 10)

    assert not any(_stored(wharf, d) for d in (old.digest, old.config.digest, only_old.digest)), \
        "the old image was not evicted whole"
    assert all(_stored(wharf, d) for d in (new.digest, *new.blobs)), "the new image lost content"
    scope = f"{wharf.upstream_name(fake.url)}/{REPO}"
    assert wharf.app[META].tag(scope, "v1", fresh=True) is None, "the tag of the evicted image stays"
    assert wharf.app[META].tag(scope, "v2", fresh=True) is not None

    fake.fault(ANY_PATH, Fault(status=503))  # upstream is down
    await _pull(wharf, name, new, "v2")
    resp = await wharf.client.get(f"/v2/{name}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert await _error(resp) == (503, "UNAVAILABLE")  # what a tag never cached answers with upstream down


async def test_a_stale_tag_whose_blobs_are_gone_is_not_served_while_upstream_is_down(
        make_wharf, fake_upstream, tmp_path):
    fake = await fake_upstream()
    broken, whole = make_image("stale-broken", (5000, 6000)), make_image("stale-whole", (5000,))
    fake.add_image(REPO, broken, tag="broken")
    fake.add_image(REPO, whole, tag="whole")
    wharf = await make_wharf(fake.url, storage={"root": str(tmp_path / "s")}, upstream_options={"tag_ttl": 1, "circuit_cooldown": 0.5})
    name = f"{wharf.upstream_name(fake.url)}/{REPO}"
    await _pull(wharf, name, broken, "broken")
    await _pull(wharf, name, whole, "whole")
    # a layer left the store while its manifest and tag stayed (evicted before the cache index knew the tag)
    assert wharf.app[BLOBS].evict(Digest.parse(broken.layers[1].digest))
    fake.fault(ANY_PATH, Fault(status=503))
    await asyncio.sleep(1.1)  # past the tag's TTL: it would be revalidated, and upstream fails

    await _pull(wharf, name, whole, "whole")  # served stale: the store holds it whole
    for method in ("GET", "HEAD"):
        resp = await wharf.client.request(method, f"/v2/{name}/manifests/broken", headers={"Accept": MANIFEST_ACCEPT})
        assert resp.status == 503, f"{method}: an image missing a layer was served as complete ({resp.status})"
    resp = await wharf.client.get(f"/v2/{name}/manifests/broken", headers={"Accept": MANIFEST_ACCEPT})
    assert await _error(resp) == (503, "UNAVAILABLE")

    fake.clear_faults()  # upstream is back: the tag is answered and the missing layer fetched again
    await asyncio.sleep(0.6)  # past the open circuit's cooldown
    await _pull(wharf, name, broken, "broken")


async def _pulled_online(make_wharf, fake_upstream, tmp_path, tags: dict[str, tuple[int, ...]], prefix: str):
    """Images (layer sizes by tag) upstream, each pulled whole through a Wharf on ``tmp_path/store``:
    (the fake upstream, that Wharf, the repository name, the store's root, the images in order)."""
    fake = await fake_upstream()
    images = [make_image(f"{prefix}-{tag}", sizes) for tag, sizes in tags.items()]
    for tag, image in zip(tags, images):
        fake.add_image(REPO, image, tag=tag)
    root = tmp_path / "store"
    online = await make_wharf(named_upstreams={"registry.test": fake.url}, storage={"root": str(root)})
    name = f"registry.test/{REPO}"
    for tag, image in zip(tags, images):
        await _pull(online, name, image, tag)
    return fake, online, name, root, images


async def test_offline_a_manifest_whose_blobs_were_evicted_is_missing(make_wharf, fake_upstream, tmp_path):
    fake, online, name, root, (broken, whole) = await _pulled_online(
        make_wharf, fake_upstream, tmp_path, {"broken": (5000, 6000), "whole": (5000,)}, "offline")
    assert online.app[BLOBS].evict(Digest.parse(broken.layers[0].digest))
    await online.client.close()

    offline = await make_wharf(named_upstreams={"registry.test": fake.url}, storage={"root": str(root)},
                               offline=True)
    fake.reset_counts()
    await _pull(offline, name, whole, "whole")
    for reference in ("broken", broken.digest):
        resp = await offline.client.get(f"/v2/{name}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT})
        body = await resp.json()
        assert resp.status == 404 and body["errors"][0]["code"] == "MANIFEST_UNKNOWN", (reference, body)
        assert "not whole" in body["errors"][0]["message"] and "offline" in body["errors"][0]["message"]
    assert fake.count() == 0


def _settled(root) -> None:
    """Date the store's blob directories a minute back: an image mirrored a while ago, which no
    fill or removal has touched since (the verdict on it is then remembered)."""
    then = time.time() - 60
    for algorithm in ("sha256", "sha512"):
        path = root / "blobs" / algorithm
        if path.exists():
            os.utime(path, (then, then))


async def _offline_status(wharf, name: str, reference: str) -> tuple[int, str]:
    resp = await wharf.client.get(f"/v2/{name}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT})
    if resp.status == 200:
        await resp.read()
        return 200, ""
    body = await resp.json()
    return resp.status, body["errors"][0]["code"] + ": " + body["errors"][0]["message"]


_EVICT = """
import sys
from pathlib import Path
from proxy.oci.digest import Digest
from proxy.storage.blobs import BlobStore
assert BlobStore(Path(sys.argv[1])).evict(Digest.parse(sys.argv[2]))
"""


async def test_offline_an_image_served_whole_is_missing_once_a_blob_is_evicted(make_wharf, fake_upstream,
                                                                              tmp_path):
    """The verdict "whole" is remembered per manifest; an eviction afterwards, by this process or
    by another process of the store, makes the same manifest missing at once."""
    fake, online, name, root, (first, second) = await _pulled_online(
        make_wharf, fake_upstream, tmp_path, {"first": (5000, 6000), "second": (4000,)}, "remembered")
    await online.client.close()

    offline = await make_wharf(named_upstreams={"registry.test": fake.url}, storage={"root": str(root)},
                               offline=True)
    fake.reset_counts()
    _settled(root)
    for _ in range(2):  # whole: served, and the verdict remembered
        for image, tag in ((first, "first"), (second, "second")):
            await _pull(offline, name, image, tag)
            assert await _offline_status(offline, name, image.digest) == (200, "")

    # this process evicts a layer of the first image
    assert offline.app[BLOBS].evict(Digest.parse(first.layers[1].digest))
    for reference in ("first", first.digest):
        status, error = await _offline_status(offline, name, reference)
        assert status == 404 and error.startswith("MANIFEST_UNKNOWN") and "not whole" in error, (reference, error)
    await _pull(offline, name, second, "second")  # the other image stays whole

    # another process of the store evicts a layer of the second image, remembered whole just now
    _settled(root)
    await _pull(offline, name, second, "second")
    evicting = await asyncio.create_subprocess_exec(sys.executable, "-c", _EVICT, str(root),
                                                    second.layers[0].digest, env=wharf_env())
    assert await evicting.wait() == 0
    for reference in ("second", second.digest):
        status, error = await _offline_status(offline, name, reference)
        assert status == 404 and error.startswith("MANIFEST_UNKNOWN") and "not whole" in error, (reference, error)
    assert fake.count() == 0


async def test_a_stale_tag_served_whole_is_refused_once_a_blob_is_evicted(make_wharf, fake_upstream, tmp_path):
    """The stale path asks the same remembered verdict: an eviction after a stale answer makes the
    next one upstream's error."""
    fake = await fake_upstream()
    image = make_image("stale-remembered", (5000, 6000))
    fake.add_image(REPO, image, tag="v1")
    root = tmp_path / "s"
    wharf = await make_wharf(fake.url, storage={"root": str(root)},
                             upstream_options={"tag_ttl": 1, "circuit_cooldown": 0.5})
    name = f"{wharf.upstream_name(fake.url)}/{REPO}"
    await _pull(wharf, name, image, "v1")
    fake.fault(ANY_PATH, Fault(status=503))
    await asyncio.sleep(1.1)  # past the tag's TTL: it would be revalidated, and upstream fails
    _settled(root)
    for _ in range(2):
        await _pull(wharf, name, image, "v1")  # served stale: the store holds it whole

    assert wharf.app[BLOBS].evict(Digest.parse(image.layers[0].digest))
    resp = await wharf.client.get(f"/v2/{name}/manifests/v1", headers={"Accept": MANIFEST_ACCEPT})
    assert resp.status == 503, f"an image missing a layer was served stale as complete ({resp.status})"
    assert await _error(resp) == (503, "UNAVAILABLE")
