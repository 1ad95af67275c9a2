"""Attacks on the cache's operations (``_catalog``, ``/api/cache/…``, purge, warm) and the dashboard
(``/cache``, ``/api/cache/stats``), as an anonymous network client, an ordinary user, or an
operator's purge would meet them.

Failing (flaws on main):
- a Wharf that serves upstream content to signed-in users only (``pull_through: authenticated``)
  still names its cached images to anonymous callers on the dashboard and ``/api/cache/stats``
  (``_catalog`` does not);
- a purge removes an index child (or layer) that another cached tag still references, when that
  tag's index row was written before the child arrived and its rechecks ran out;
- a purge re-publishes the invalidation stamp (a file write on the event loop) once per removed
  manifest *and* repository: quadratic in what it drops;
- ``GET /api/cache/repositories`` answers the whole store at once, with no paging;
- an index naming a cached multi-megabyte layer as a "child manifest" makes the index's flush read
  that layer whole into memory (one anonymous manifest pull per tag);
- a deeply nested JSON body to purge or warm (or any ``admin_api`` route) is a 500.

Passing pins (protections nobody tested): a browser session never works the cache's API (no CSRF
through it) and the /cache page changes nothing; a warm-up never reaches a host that is not a
configured upstream; hostile purge, warm and list input is a 4xx, never a 500; pulls of tags that
do not exist leave nothing in the index's memory; ``_catalog`` walked page by page names no
private repository; a purge keeps an index child another repository's tag points at.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from support.accounts import add_token, add_user, basic
from support.cache import listed, pull
from support.images import (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, MANIFEST_ACCEPT, canonical_json, make_image,
                            make_index, push_image)
from support.web import WebClient

from proxy.app import BLOBS
from proxy.http import keys
from proxy.oci.digest import Digest
from proxy.oci.media import MAX_MANIFEST_BYTES
from proxy.registry.invalidation import Invalidation
from proxy.storage.blobs import BlobStore
from proxy.storage import cache_index as cache_index_module


def _stored(wharf, digest: str) -> bool:
    return wharf.app[BLOBS].size(Digest.parse(digest)) is not None


async def _until(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _anonymous_get(wharf, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session:  # no Authorization, no cookie
        async with session.get(wharf.url + path) as resp:
            return resp.status, await resp.text()


def _user(wharf, name: str) -> dict[str, str]:
    add_user(wharf.database, name)
    _, secret = add_token(wharf.database, name)
    return {"Authorization": basic(name, secret)}


async def _get(wharf, name: str, reference: str, headers: dict | None = None) -> bytes:
    resp = await wharf.client.get(f"/v2/{name}/manifests/{reference}",
                                  headers={"Accept": MANIFEST_ACCEPT, **(headers or {})})
    assert resp.status == 200, await resp.text()
    return await resp.read()


async def _blob(wharf, name: str, digest: str, headers: dict | None = None) -> bytes:
    resp = await wharf.client.get(f"/v2/{name}/blobs/{digest}", headers=headers or {})
    assert resp.status == 200, await resp.text()
    return await resp.read()


# --- failing: flaws ------------------------------------------------------------------------------

async def test_a_closed_wharf_names_no_cached_image_to_anonymous_callers_on_the_dashboard(fake_upstream, make_wharf):
    """``pull_through: authenticated``: anonymous callers may not pull upstream content, so (as
    ``_catalog`` already does) the dashboard must not tell them which upstream images the site
    caches, pulls most, or is filling. FAILS: ``stats_api._may_pull`` (and ``_fill``, ``_eviction``)
    show every image cached without a client's credential to anyone, ignoring ``pull_through``."""
    fake = await fake_upstream()
    image = make_image("closed-dashboard", (2000,))
    fake.add_image("acme/internal-billing", image, tag="v7")
    wharf = await make_wharf(fake.url, auth=None, access={"pull_through": "authenticated"})
    name = f"{wharf.upstream_name(fake.url)}/acme/internal-billing"
    await pull(wharf, name, "v7", image, headers=wharf.admin_headers)  # a signed-in user's pull: public content
    await wharf.app[keys.CACHE_INDEX].flush()

    status, text = await _anonymous_get(wharf, f"/v2/{name}/manifests/v7")
    assert status == 401  # anonymous callers may not pull it ...
    status, text = await _anonymous_get(wharf, "/v2/_catalog")
    assert status == 200 and "internal-billing" not in text  # ... and _catalog does not name it
    admin = await wharf.client.get("/api/cache/stats", headers=wharf.admin_headers)
    assert "internal-billing" in await admin.text()  # the admin sees it

    status, text = await _anonymous_get(wharf, "/api/cache/stats")
    assert status == 200
    stats = json.loads(text)
    assert stats["totals"]["misses"] >= 1  # the figures are for everyone
    assert "internal-billing" not in text and image.digest not in text, \
        "an anonymous caller of a closed Wharf learns which upstream images it caches"
    status, page = await _anonymous_get(wharf, "/cache")
    assert status == 200
    assert "internal-billing" not in page, "the /cache page names a cached image to an anonymous visitor"


async def test_purge_keeps_an_index_child_another_cached_tag_references_after_its_rechecks_ran_out(
        fake_upstream, make_wharf, monkeypatch):
    """team/multi:v1 is a two-platform index pulled by an amd64 client (its arm64 child not stored:
    the index row is incomplete, looked at again for ``_RECHECKS`` flushes, i.e. 30 s, then left).
    Later an arm64-only repository (as arm64v8/alpine beside library/alpine) caches that child.
    Purging the arm64 repository must keep the child and its blobs: team/multi:v1 still
    references them. FAILS: ``CacheControl._still_needed`` trusts the index's content rows, and
    team/multi's row never learnt of the child (``cache_index._note_incomplete`` gave up), so the
    purge removes content a cached tag references (on an offline upstream: that tag is broken).
    ``_RECHECKS`` is lowered to 2 only to stand for the 30 seconds."""
    monkeypatch.setattr(cache_index_module, "_RECHECKS", 2)
    fake = await fake_upstream()
    index = make_index("recheck-child", (3000, 4000))
    amd64, arm64 = index.image_for("amd64"), index.image_for("arm64")
    fake.add_image("team/multi", index, tag="v1")
    fake.add_image("arm64v8/app", arm64, tag="v1")
    wharf = await make_wharf(fake.url)
    cache_index = wharf.app[keys.CACHE_INDEX]
    host = wharf.upstream_name(fake.url)
    multi, arm_repo = f"{host}/team/multi", f"{host}/arm64v8/app"

    assert await _get(wharf, multi, "v1") == index.manifest  # an amd64 node pulls its platform only
    assert await _get(wharf, multi, amd64.digest) == amd64.manifest
    for digest, data in amd64.blobs.items():
        assert await _blob(wharf, multi, digest) == data

    async def rechecks_over():
        row = (await listed(wharf)).get(multi)
        return row is not None and (multi, "v1") not in cache_index._recheck
    await _until(rechecks_over, "team/multi:v1 indexed and no longer rechecked")

    await pull(wharf, arm_repo, "v1", arm64)  # an arm64 node, later, through the per-arch repository
    await cache_index.flush()
    assert _stored(wharf, arm64.digest) and all(_stored(wharf, d) for d in arm64.blobs)

    report = await (await wharf.client.post("/api/cache/purge", json={"ref": f"{arm_repo}:v1"})).json()
    assert [t["name"] for t in report["tags"]] == [arm_repo]
    assert f"{multi}" in await listed(wharf)  # team/multi:v1 is still cached ...
    assert _stored(wharf, arm64.digest), \
        "the purge removed an index child that the cached team/multi:v1 still references"
    assert all(_stored(wharf, d) for d in arm64.blobs), "the purge removed blobs team/multi:v1 still needs"
    fake.reset_counts()  # ... and an arm64 node pulling it asks upstream nothing
    assert await _get(wharf, multi, "v1") == index.manifest
    assert await _get(wharf, multi, arm64.digest) == arm64.manifest
    for digest, data in arm64.blobs.items():
        assert await _blob(wharf, multi, digest) == data
    assert not [r.path for r in fake.requests if "/manifests/" in r.path or "/blobs/" in r.path]


async def test_a_purge_does_work_on_the_event_loop_linear_in_what_it_drops(fake_upstream, make_wharf, monkeypatch):
    """A purge of N tags in N repositories that removes N manifests. FAILS:
    ``CacheControl.purge`` calls ``Invalidation.tag_changed(scope, digest)`` for every removed
    manifest times every purged repository, on the event loop, and each call rewrites the
    invalidation stamp file (``Invalidation._publish``: a create, a rename and a stat). N = 12
    gives 156 stamp writes; ``wharf cache purge --upstream`` of a real store (thousands of
    repositories and manifests) blocks every client for millions of file operations."""
    fake = await fake_upstream()
    count = 12
    images = [make_image(f"quadratic-{i}", (100,)) for i in range(count)]
    for i, image in enumerate(images):
        fake.add_image(f"team/app{i}", image, tag="v1")
    wharf = await make_wharf(fake.url)
    host = wharf.upstream_name(fake.url)
    for i, image in enumerate(images):
        await pull(wharf, f"{host}/team/app{i}", "v1", image)
    await wharf.app[keys.CACHE_INDEX].flush()

    publishes = []
    original = Invalidation._publish

    def counted(self) -> None:
        publishes.append(1)
        original(self)

    monkeypatch.setattr(Invalidation, "_publish", counted)
    resp = await wharf.client.post("/api/cache/purge", json={"upstream": host})
    report = await resp.json()
    assert resp.status == 200 and len(report["tags"]) == count and report["removed"] == 3 * count
    assert not any(_stored(wharf, image.digest) for image in images)
    assert len(publishes) <= 2 * count + 1, \
        f"{len(publishes)} stamp-file writes on the event loop to purge {count} tags (grows as N²)"


async def test_the_cached_repositories_listing_is_paged(fake_upstream, make_wharf):
    """``GET /api/cache/repositories`` pages as the rest of /api/ does (``page``/``per_page``,
    at most 100, a ``Link`` header). FAILS: ``cache_api.cached_repositories`` answers every
    repository and every tag of the store in one answer: ``CacheIndex.repositories_blocking``
    builds the whole list (one SUM query per repository) and ``web.json_response`` serialises it
    on the event loop, so a big store's listing grows memory and stalls every client."""
    fake = await fake_upstream()
    images = [make_image(f"paged-{i}", (100,)) for i in range(3)]
    for i, image in enumerate(images):
        fake.add_image(f"team/app{i}", image, tag="v1")
    wharf = await make_wharf(fake.url)
    host = wharf.upstream_name(fake.url)
    for i, image in enumerate(images):
        await pull(wharf, f"{host}/team/app{i}", "v1", image, blobs=False)
    assert len(await listed(wharf)) == 3

    resp = await wharf.client.get("/api/cache/repositories", params={"per_page": "2"})
    assert resp.status == 200
    first = (await resp.json())["repositories"]
    assert len(first) == 2, f"per_page=2 answered {len(first)} repositories"
    assert 'rel="next"' in resp.headers.get("Link", ""), "no Link to the next page"
    resp = await wharf.client.get("/api/cache/repositories", params={"per_page": "2", "page": "2"})
    assert [r["name"] for r in (await resp.json())["repositories"]] == [f"{host}/team/app2"]


async def test_an_index_naming_a_cached_layer_as_a_child_makes_the_index_read_no_layer_whole(
        fake_upstream, make_wharf, monkeypatch):
    """Anyone may push to a public registry an index whose ``manifests[]`` name the digests of big
    layers everyone pulls (a CUDA base's), and pull it through Wharf by tag. FAILS:
    ``cache_index.image_content`` reads every child it finds in the store with
    ``BlobStore.read_bytes`` (the whole file into memory) before trying to parse it as a manifest,
    whatever its size or the descriptor's: one anonymous manifest pull per tag makes the index's
    flush read a multi-gigabyte layer into memory (a purge's ``_content_of`` too), and the
    attacker's index is listed as the largest cached image."""
    fake = await fake_upstream()
    big = make_image("big-base", (MAX_MANIFEST_BYTES + 1024 * 1024,))
    fake.add_image("library/base", big, tag="v1")
    layer = big.layers[0]
    trap = canonical_json({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": [
        {"mediaType": DOCKER_MANIFEST, "digest": layer.digest, "size": 600,
         "platform": {"os": "linux", "architecture": "amd64"}}]})
    for i in range(3):
        fake.add_manifest("mallory/trap", trap, DOCKER_MANIFEST_LIST, tag=f"t{i}")
    wharf = await make_wharf(fake.url, auth=None)
    host = wharf.upstream_name(fake.url)
    await pull(wharf, f"{host}/library/base", "v1", big)
    await wharf.app[keys.CACHE_INDEX].flush()

    reads: list[int] = []
    original = BlobStore.read_bytes

    def measured(self, digest):
        body = original(self, digest)
        reads.append(len(body or b""))
        return body

    monkeypatch.setattr(BlobStore, "read_bytes", measured)
    async with aiohttp.ClientSession() as session:  # an anonymous client, manifests only
        for i in range(3):
            async with session.get(f"{wharf.url}/v2/{host}/mallory/trap/manifests/t{i}",
                                   headers={"Accept": MANIFEST_ACCEPT}) as resp:
                assert resp.status == 200 and await resp.read() == trap
    await wharf.app[keys.CACHE_INDEX].flush()
    assert reads, "the index read nothing"
    big_reads = [size for size in reads if size > MAX_MANIFEST_BYTES]
    assert not big_reads, f"the cache index read {len(big_reads)} layer(s) of {big_reads[0]} bytes whole into memory"


async def test_a_deeply_nested_json_body_is_422_not_500(fake_upstream, make_wharf):
    """``[[[[…`` (10,000 deep) to purge and warm, and (any signed-in user) to the token route that
    shares the same body parser. FAILS: ``admin_api._body`` catches ValueError and
    UnicodeDecodeError but not the RecursionError ``json.loads`` raises on deep nesting, so the
    answer is a 500 (``api._json_object`` and ``oci.media`` already catch it)."""
    fake = await fake_upstream()
    wharf = await make_wharf(fake.url, auth=None)
    bob = _user(wharf, "bob")
    deep = b"[" * 10_000
    for path, headers in (("/api/cache/purge", wharf.admin_headers), ("/api/cache/warm", wharf.admin_headers),
                          ("/api/user/tokens", bob)):
        resp = await wharf.client.post(path, data=deep, headers={**headers, "Content-Type": "application/json"})
        assert resp.status == 422, (path, resp.status, (await resp.text())[:200])
        assert "JSON" in (await resp.json())["message"]


# --- passing pins --------------------------------------------------------------------------------

async def test_a_browser_session_never_works_the_cache_api_and_the_cache_page_changes_nothing(
        fake_upstream, make_wharf):
    """A signed-in admin's browser visits a hostile page: a cross-site form POST (text/plain or
    urlencoded, the admin's cookie attached) to purge or warm is 401 (the API takes no session
    cookie, so there is no CSRF through it); /cache has no purge or warm form and POSTs to it do
    nothing. The image stays cached."""
    fake = await fake_upstream()
    image = make_image("session-purge", (500,))
    fake.add_image("team/app", image, tag="v1")
    wharf = await make_wharf(fake.url, auth=None)
    host = wharf.upstream_name(fake.url)
    name = f"{host}/team/app"
    await pull(wharf, name, "v1", image)
    await wharf.app[keys.CACHE_INDEX].flush()
    browser = WebClient(wharf.url)
    try:
        await browser.signin(*wharf.admin)
        for path, body in (("/api/cache/purge", json.dumps({"upstream": host})),
                           ("/api/cache/warm", json.dumps({"images": [f"{name}:v1"]}))):
            for content_type in ("text/plain", "application/json", "application/x-www-form-urlencoded"):
                async with browser.session.post(wharf.url + path, data=body, headers={
                        "Content-Type": content_type, "Origin": "https://evil.example"}) as resp:
                    assert resp.status == 401, (path, content_type, resp.status)
        status, page, _ = await browser.get("/cache")
        assert status == 200 and 'action="/api/cache' not in page and 'action="/cache' not in page
        csrf = await browser.session_csrf()
        for path in ("/cache", "/cache/purge", "/cache/warm"):
            status, _, _ = await browser.post(path, {"csrf": csrf, "upstream": host, "ref": f"{name}:v1"})
            assert status in (404, 405), (path, status)
    finally:
        await browser.close()
    resp = await wharf.client.get("/api/cache/repositories", headers=wharf.admin_headers)
    assert name in [r["name"] for r in (await resp.json())["repositories"]]
    assert _stored(wharf, image.digest) and all(_stored(wharf, d) for d in image.blobs)


async def test_a_warm_up_reaches_only_configured_upstreams(fake_upstream, make_wharf):
    """Warm names as a client names an image; it can never make Wharf fetch from another host
    (a metadata service, an internal registry): names of unconfigured hosts, URLs, ``..`` and
    ``?ns=``-like tricks are 422 and the bystander server hears nothing."""
    fake = await fake_upstream()
    bystander = await fake_upstream()
    bystander.add_image("team/app", make_image("ssrf", (100,)), tag="v1")
    wharf = await make_wharf(fake.url)
    other = wharf.upstream_name(bystander.url)
    host = wharf.upstream_name(fake.url)
    hostile = [f"{other}/team/app:v1", f"{bystander.url}/team/app:v1", f"//{other}/team/app:v1",
               "169.254.169.254/latest/meta-data:v1", f"{host}/../{other}/team/app:v1",
               f"{host}/team/app:v1?ns={other}", f"{host}@{other}/team/app:v1", f"{host}/team/app:v1#{other}",
               f"{host}\\..\\{other}/team/app:v1", f"{host}/%2e%2e/team:v1"]
    for ref in hostile:
        resp = await wharf.client.post("/api/cache/warm", json={"images": [ref]})
        answer = await resp.json()
        assert resp.status == 422 and answer["message"], (ref, resp.status, answer)
    assert bystander.requests == []


async def test_hostile_purge_warm_and_list_input_is_a_clear_4xx_never_a_500(fake_upstream, make_wharf):
    fake = await fake_upstream()
    image = make_image("hostile-input", (100,))
    fake.add_image("team/app", image, tag="v1")
    wharf = await make_wharf(fake.url)
    host = wharf.upstream_name(fake.url)
    await pull(wharf, f"{host}/team/app", "v1", image)
    purges = [{"ref": f"{host}/../etc/passwd:v1"}, {"ref": f"{host}/team/app:.."}, {"ref": f"{host}/tëam/app:v1"},
              {"ref": f"{host}/team/app:v1\u0000"}, {"ref": f"{host}/team/app:v\u2028"},
              {"ref": f"{host}/team/app@sha512:" + "a" * 128}, {"ref": f"{host}/team/app@md5:" + "a" * 32},
              {"ref": f"{host}/team/app@sha256:" + "A" * 64}, {"ref": f"{host}/team/app:v1@sha256:" + "a" * 64},
              {"ref": "@"}, {"ref": ":"}, {"ref": "/"}, {"ref": f"{host}/" + "a" * 30_000 + ":v1"},
              {"ref": ["a"]}, {"ref": {"a": 1}}, {"repo": f"{host}/team/app", "older_than": -1},
              {"repo": f"{host}/team/app", "older_than": "1" * 400 + "w", "dry_run": True},
              {"repo": f"{host}/team/app", "older_than": "nan"}, {"repo": f"{host}/team/app", "older_than": [1]},
              {"upstream": f"{host}\u0000"}, {"upstream": "../" + host}, {"dry_run": True, "ref": None}]
    for body in purges:
        resp = await wharf.client.post("/api/cache/purge", json=body)
        answer = await resp.json()
        assert resp.status in (200, 422), (body, resp.status, answer)
        if resp.status == 422:
            assert answer["message"] and "Traceback" not in answer["message"], body
        else:
            assert answer["tags"] == [] or answer.get("dry_run"), (body, answer)
    for raw in (b'{"upstream": "%s", "older_than": 1e400}' % host.encode(),
                b'{"upstream": "%s", "older_than": NaN}' % host.encode(), b'{"ref": "\\ud800:v1"}',
                b"\xff\xfe", b'{"ref": "' + b"x" * 70_000 + b'"}'):
        resp = await wharf.client.post("/api/cache/purge", data=raw, headers={"Content-Type": "application/json"})
        assert resp.status in (200, 413, 422), (raw[:40], resp.status, await resp.text())
    warms = [{"images": [f"{host}/team/app@sha256:" + "a" * 64]}, {"images": [f"{host}/team/app:.."]},
             {"images": [f"{host}/team/app:v1"], "platforms": ["../../etc"]},
             {"images": [f"{host}/team/app:v1"], "platforms": [""]},
             {"images": [f"{host}/team/app:v1"], "platforms": "linux/amd64"},
             {"images": [f"{host}/t{i}:v1" for i in range(1001)]}, {"images": [5]}, {"images": []},
             {"images": "x"}, {"images": [f"{host}/tëam/app:v1"]}, {"images": ["local/app:v1"]}]
    for body in warms:
        resp = await wharf.client.post("/api/cache/warm", json=body)
        answer = await resp.json()
        assert resp.status in (413, 422) and answer["message"], (body, resp.status, answer)
    for params in ({"repo": "../.."}, {"repo": f"{host}/tëam"}, {"upstream": "\u0000"}, {"repo": "x" * 4000},
                   {"repo": f"{host}/team/app:v1"}, {"upstream": host, "repo": f"{host}/team/app"}):
        resp = await wharf.client.get("/api/cache/repositories", params=params)
        assert resp.status in (200, 422), (params, resp.status, await resp.text())
        assert "message" in await resp.json() or resp.status == 200
    assert _stored(wharf, image.digest)  # nothing above dropped the cached image


async def test_pulls_of_tags_that_do_not_exist_leave_nothing_in_the_index(fake_upstream, make_wharf):
    """An anonymous client asking for many made-up tags (GET and HEAD, repeated) must not grow the
    index's memory (pull counts, marks, rechecks) nor its rows."""
    fake = await fake_upstream()
    image = make_image("no-such-tags", (100,))
    fake.add_image("team/app", image, tag="v1")
    wharf = await make_wharf(fake.url, auth=None)
    index = wharf.app[keys.CACHE_INDEX]
    name = f"{wharf.upstream_name(fake.url)}/team/app"
    async with aiohttp.ClientSession() as session:
        for round_ in range(2):
            for i in range(150):
                method = "HEAD" if i % 2 else "GET"
                async with session.request(method, f"{wharf.url}/v2/{name}/manifests/made-up-{i}",
                                           headers={"Accept": MANIFEST_ACCEPT}) as resp:
                    assert resp.status == 404
                assert not index._pulls, (round_, i)  # nothing counted: a made-up tag is no pull
    assert not index._recheck
    await index.flush()
    assert not list(index.pending()) and not index._recheck
    assert await listed_as_admin(wharf) == {}


async def listed_as_admin(wharf) -> dict:
    resp = await wharf.client.get("/api/cache/repositories", headers=wharf.admin_headers)
    assert resp.status == 200
    return {r["name"]: r for r in (await resp.json())["repositories"]}


async def test_catalog_walked_page_by_page_names_no_private_repository(fake_upstream, make_wharf):
    """Anonymous callers and an ordinary user walk ``_catalog`` with ``n=1`` and ``n=2`` (and with
    ``last`` set to a private name): no page names the repository cached with alice's own
    upstream credential nor a private local package, and the pages join to the full list."""
    fake = await fake_upstream()
    fake.require_bearer(users={"alice": "alice-pw"}, private={"org/secret"})
    images = {repo: make_image(f"walk-{repo}", (100,)) for repo in ("team/a", "team/b", "org/secret", "team/c")}
    for repo, image in images.items():
        fake.add_image(repo, image, tag="v1")
    wharf = await make_wharf(fake.url, auth=None)
    host = wharf.upstream_name(fake.url)
    alice = {"Authorization": basic("alice", "alice-pw")}
    for repo, image in images.items():
        await pull(wharf, f"{host}/{repo}", "v1", image, headers=alice if repo == "org/secret" else None)
    await push_image(wharf.url, "zz/private", make_image("walk-local", (50,)), tag="v1")
    await wharf.app[keys.CACHE_INDEX].flush()
    bob = _user(wharf, "bob")

    async def walk(headers: dict, n: int, last: str | None = None) -> list[str]:
        names: list[str] = []
        query = f"n={n}" + (f"&last={last}" if last else "")
        async with aiohttp.ClientSession() as session:
            for _ in range(20):
                async with session.get(f"{wharf.url}/v2/_catalog?{query}", headers=headers) as resp:
                    assert resp.status == 200
                    page = (await resp.json())["repositories"]
                    assert len(page) <= n
                    names += page
                    link = resp.headers.get("Link")
                if not link:
                    return names
                query = link.split("?", 1)[1].split(">", 1)[0]
        raise AssertionError("the catalog never ended")

    for headers in ({}, bob):
        for n in (1, 2):
            names = await walk(headers, n)
            assert names == sorted(names) and len(names) == len(set(names))
            assert f"{host}/org/secret" not in names and "zz/private" not in names, (headers, n, names)
            assert {f"{host}/team/a", f"{host}/team/b", f"{host}/team/c"} <= set(names)
        after = await walk(headers, 5, f"{host}/org/secret")
        assert f"{host}/org/secret" not in after and "zz/private" not in after


async def test_a_purge_keeps_an_index_child_another_repositorys_tag_points_at(fake_upstream, make_wharf):
    """team/multi:v1 (an index over amd64 and arm64, pulled whole) and arm64v8/app:v1 (the arm64
    child itself, pulled whole). Purging team/multi:v1 removes the index and the amd64 image; the
    arm64 child and its blobs stay, and pulling arm64v8/app:v1 asks upstream nothing."""
    fake = await fake_upstream()
    index = make_index("child-kept", (1500, 2500))
    amd64, arm64 = index.image_for("amd64"), index.image_for("arm64")
    fake.add_image("team/multi", index, tag="v1")
    fake.add_image("arm64v8/app", arm64, tag="v1")
    wharf = await make_wharf(fake.url)
    host = wharf.upstream_name(fake.url)
    await pull(wharf, f"{host}/team/multi", "v1", index)
    await pull(wharf, f"{host}/arm64v8/app", "v1", arm64)
    await wharf.app[keys.CACHE_INDEX].flush()

    report = await (await wharf.client.post("/api/cache/purge", json={"ref": f"{host}/team/multi:v1"})).json()
    assert [t["name"] for t in report["tags"]] == [f"{host}/team/multi"]
    assert not _stored(wharf, index.digest) and not _stored(wharf, amd64.digest)
    assert not any(_stored(wharf, d) for d in amd64.blobs if d not in arm64.blobs)
    assert _stored(wharf, arm64.digest) and all(_stored(wharf, d) for d in arm64.blobs)
    fake.reset_counts()
    await pull(wharf, f"{host}/arm64v8/app", "v1", arm64)
    assert not [r.path for r in fake.requests if "/manifests/" in r.path or "/blobs/" in r.path]
